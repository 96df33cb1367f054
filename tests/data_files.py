"""Small data sets in the real formats (Fashion-MNIST's IDX files, CIFAR-100's Python 2 pickles, an
ImageNet ImageFolder tree of JPEGs), written from real Fashion-MNIST images, and their fixtures
(registered for every test by conftest.py)."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from acdc_bench.data import DATASETS, read_idx

FASHION_ROOT = Path(DATASETS["fashion-mnist"].default_root)
HAVE_FASHION = (FASHION_ROOT / "train-images-idx3-ubyte.gz").is_file()


def write_idx(path: Path, array: torch.Tensor) -> None:
    """Write a uint8 tensor as an IDX file (gzip when the name ends in .gz)."""
    header = struct.pack(">HBB", 0, 0x08, array.dim()) + struct.pack(
        f">{array.dim()}I", *array.shape)
    raw = header + array.to(torch.uint8).contiguous().numpy().tobytes()
    path.write_bytes(gzip.compress(raw, compresslevel=1) if path.suffix == ".gz" else raw)


@pytest.fixture(scope="session")
def sample_images() -> tuple[torch.Tensor, torch.Tensor]:
    """128 real Fashion-MNIST training images (N, 28, 28) uint8 with labels.

    Without the installed data, smooth synthetic images (random low-frequency
    patterns) stand in.
    """
    if HAVE_FASHION:
        images = read_idx(FASHION_ROOT / "train-images-idx3-ubyte.gz", 3)[:128].clone()
        labels = read_idx(FASHION_ROOT / "train-labels-idx1-ubyte.gz", 1)[:128].clone()
        return images, labels.long()
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(128, 1, 4, 4, generator=generator)
    images = F.interpolate(coarse, size=(28, 28), mode="bicubic", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)[:, 0]
    return images, torch.arange(128) % 10


def rgb(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 28, 28) grey uint8 -> (N, 3, size, size) uint8 by resizing and tiling."""
    resized = F.interpolate(images[:, None].float(), size=(size, size), mode="bilinear",
                            align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1)


@pytest.fixture
def small_fashion_root(tmp_path, sample_images) -> Path:
    """IDX files with 101 training and 30 test examples (gzip and plain names mixed)."""
    images, labels = sample_images
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images[:101])
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels[:101])
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images[101:128])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[101:128])
    return tmp_path


class Py2Str(bytes):
    """A Python 2 ``str``: the real CIFAR pickles were written by Python 2."""


class Py2Pickler(pickle._Pickler):
    """Pickles :class:`Py2Str` with the BINSTRING opcodes of Python 2, so that
    ``pickle.load(encoding='bytes')`` gives ``b'data'`` keys (as documented on
    the CIFAR page) and ``encoding='latin1'`` gives ``'data'`` (as torchvision
    reads them), exactly like the real files."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + bytes(obj))
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + bytes(obj))
        self.memoize(obj)

    dispatch[Py2Str] = save_py2_str


def write_py2_pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(obj)


def write_cifar100(root: Path, pixels: np.ndarray, labels: torch.Tensor, splits: dict[str, slice]) -> Path:
    """``root/cifar-100-python/{train,test,meta}`` in the real pickle format; ``pixels`` are rows of
    R, G, B planes (3072 values), ``splits`` which rows go into ``train`` and ``test``."""
    folder = root / "cifar-100-python"
    folder.mkdir()
    for split, rows in splits.items():
        n = len(pixels[rows])
        write_py2_pickle(folder / split, {
            Py2Str(b"data"): np.ascontiguousarray(pixels[rows]),
            Py2Str(b"fine_labels"): labels[rows].tolist(),
            Py2Str(b"coarse_labels"): (labels[rows] // 5).tolist(),
            Py2Str(b"filenames"): [Py2Str(b"img_%d.png" % i) for i in range(n)],
            Py2Str(b"batch_label"): Py2Str(split.encode()),
        })
    write_py2_pickle(folder / "meta", {
        Py2Str(b"fine_label_names"): [Py2Str(b"class_%d" % i) for i in range(100)],
        Py2Str(b"coarse_label_names"): [Py2Str(b"super_%d" % i) for i in range(20)],
    })
    return root


@pytest.fixture
def cifar_root(tmp_path, sample_images) -> Path:
    images, labels = sample_images
    pixels = rgb(images, 32).reshape(len(images), 3072).numpy()  # R, G, B planes per row
    return write_cifar100(tmp_path, pixels, labels, {"train": slice(0, 96), "test": slice(96, 128)})


@pytest.fixture
def imagenet_root(tmp_path, sample_images) -> Path:
    """train/ with 3 JPEGs per class and val/ with 2, two classes, 96x96 RGB."""
    images = rgb(sample_images[0][:10], 96).permute(0, 2, 3, 1).numpy()
    counter = iter(range(10))
    for split, per_class in (("train", 3), ("val", 2)):
        for wnid in ("n01440764", "n01443537"):
            folder = tmp_path / split / wnid
            folder.mkdir(parents=True)
            for j in range(per_class):
                i = next(counter)
                Image.fromarray(images[i]).save(folder / f"{wnid}_{i}.JPEG", quality=90)
    return tmp_path
