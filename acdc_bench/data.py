"""Datasets and deterministic, rank-sharded batch iteration.

:func:`load_data` returns a :class:`Data` whose training order depends on
``(seed, epoch)`` only, never on global RNG state, so a resumed run sees exactly
the batches an uninterrupted run would have seen.  With ``world_size > 1`` every
rank draws the same permutation of the epoch, pads it by wrapping around to a
multiple of ``world_size`` (like ``DistributedSampler``) and takes its strided
share, so shards are disjoint up to the padding and all ranks run the same
number of steps.

``batch_size`` is always the *global* batch; each rank gets
``batch_size // world_size`` examples per step.

Supported datasets (see :data:`DATASETS`):

* ``fashion-mnist``: the four IDX files, parsed here and held in memory
  (normalised, no augmentation; batches are slices, no ``DataLoader``).
* ``cifar100``: torchvision's ``cifar-100-python`` pickles; random crop
  (pad 4) + horizontal flip for training.
* ``imagenet``: an ``ImageFolder`` tree with ``train/`` and ``val/``;
  RandomResizedCrop(224) + flip for training, Resize(256) + CenterCrop(224) for
  evaluation.

Data roots are resolved from the ``root`` argument, else the environment
variable ``ACDC_BENCH_DATA`` (``$ACDC_BENCH_DATA/<dataset>``, then
``$ACDC_BENCH_DATA``), else the dataset's default location (Fashion-MNIST: the
Debian package's folder), else the per-user cache (:func:`user_cache`).
Fashion-MNIST and CIFAR-100 can be downloaded (:func:`download_dataset`) into
that cache, from the official URLs or from the base URL in ``ACDC_BENCH_MIRROR``;
every file is checked against its published MD5 before it is moved into place
(Fashion-MNIST's on the decompressed IDX content, so a mirror may recompress).
Fashion-MNIST is downloaded by default when no root is given and it is found
nowhere; CIFAR-100 when asked (``download=True``).  Missing or malformed data
raise :class:`DataError`, which says where it looked, what layout it expects and
how to fix it.
"""

from __future__ import annotations

import abc
import functools
import gzip
import hashlib
import math
import os
import struct
import sys
import tarfile
import tempfile
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from filelock import FileLock  # a dependency of torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchvision import datasets, transforms
from tqdm import tqdm

from acdc_bench.core.io import user_cache_root

__all__ = ["DataError", "DatasetSpec", "DATASETS", "Data", "TensorData", "LoaderData",
           "load_data", "read_idx", "epoch_seed", "download_dataset", "user_cache", "DATA_ROOT_ENV",
           "MIRROR_ENV"]

DATA_ROOT_ENV = "ACDC_BENCH_DATA"
#: A base URL serving the data sets' files under their official names (a mirror).
MIRROR_ENV = "ACDC_BENCH_MIRROR"

Batch = tuple[torch.Tensor, torch.Tensor]


class DataError(ValueError):
    """A dataset is missing or malformed; the message says how to fix it."""


# ------------------------------------------------------------------ determinism


def epoch_seed(*parts: int | str) -> int:
    """A 63-bit seed derived from ``parts`` (e.g. ``seed, epoch``) by hashing.

    Unlike ``seed * k + epoch``, nearby seeds and epochs do not map to related
    or colliding seeds.
    """
    canonical = tuple(part if isinstance(part, str) else int(part) for part in parts)
    digest = hashlib.blake2b(repr(canonical).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _shard_of_permutation(num_examples: int, seed: int, epoch: int, rank: int,
                          world_size: int) -> torch.Tensor:
    """This rank's example indices for ``epoch``, in visiting order (CPU int64).

    All ranks compute the same permutation from ``(seed, epoch)``, pad it by
    wrapping to a multiple of ``world_size`` and take every ``world_size``-th
    entry starting at ``rank``.
    """
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch, "order"))
    order = torch.randperm(num_examples, generator=generator)
    padded_size = math.ceil(num_examples / world_size) * world_size
    if padded_size > num_examples:
        repeats = math.ceil(padded_size / num_examples)
        order = order.repeat(repeats)[:padded_size]
    return order[rank::world_size]


# ------------------------------------------------------------------------- Data


class Data(abc.ABC):
    """One dataset prepared for one rank of a (possibly distributed) run.

    Attributes:
        name: the registry name of the dataset.
        num_classes: the number of classes found in the data.
        input_shape: (channels, height, width) of one model input.
        train_size: training examples per epoch over all ranks (the dataset size
            after ``train_subset``; wrap-around padding of the last ``world_size
            - 1`` examples is not counted).
        test_size: examples in the test/validation set.
        batch_size: the global batch size.
        local_batch_size: examples per step on this rank.
        rank, world_size: this process's place in the data-parallel group.
        device: where the batches are delivered.
    """

    def __init__(self, *, name: str, num_classes: int, input_shape: tuple[int, int, int],
                 train_size: int, test_size: int, batch_size: int, seed: int,
                 rank: int, world_size: int, device: torch.device) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, "
                             f"world_size={world_size}")
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(f"the global batch_size ({batch_size}) must be a positive "
                             f"multiple of world_size ({world_size})")
        if train_size < 1:
            raise DataError(f"{name}: the training set is empty")
        self.name = name
        self.num_classes = num_classes
        self.input_shape = input_shape
        self.train_size = train_size
        self.test_size = test_size
        self.batch_size = batch_size
        self.local_batch_size = batch_size // world_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch, equal on every rank (last batch may be short)."""
        per_rank = math.ceil(self.train_size / self.world_size)
        return math.ceil(per_rank / self.local_batch_size)

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's training-example indices for ``epoch``, in visiting order."""
        return _shard_of_permutation(self.train_size, self.seed, epoch, self.rank,
                                     self.world_size)

    def test_indices(self, shard: bool = False) -> torch.Tensor:
        """Test-example indices in order: all of them, or this rank's strided share."""
        indices = torch.arange(self.test_size)
        return indices[self.rank::self.world_size] if shard else indices

    @abc.abstractmethod
    def train_batches(self, epoch: int) -> Iterator[Batch]:
        """Yield this rank's ``(inputs, targets)`` batches of ``epoch`` on ``device``.

        The order depends only on ``(seed, epoch, rank, world_size)``.
        """

    @abc.abstractmethod
    def test_batches(self, shard: bool = False) -> Iterator[Batch]:
        """Yield ``(inputs, targets)`` test batches in dataset order, without padding.

        By default every rank sees the whole test set.  With ``shard=True`` each
        rank sees a disjoint strided share (sizes may differ by one example across
        ranks); sum correct/total counts over ranks afterwards, and do not run
        per-batch collectives (e.g. a DDP-wrapped forward) over it.
        """


class TensorData(Data):
    """A dataset held in memory as tensors; batches are slices of a permutation.

    The tensors are moved to ``device`` once, so iterating costs one
    ``index_select`` per batch.
    """

    def __init__(self, train_inputs: torch.Tensor, train_targets: torch.Tensor,
                 test_inputs: torch.Tensor, test_targets: torch.Tensor, *, name: str,
                 num_classes: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, device: torch.device = torch.device("cpu")) -> None:
        super().__init__(name=name, num_classes=num_classes,
                         input_shape=tuple(train_inputs.shape[1:]),
                         train_size=len(train_inputs), test_size=len(test_inputs),
                         batch_size=batch_size, seed=seed, rank=rank,
                         world_size=world_size, device=device)
        self.train_inputs = train_inputs.to(self.device)
        self.train_targets = train_targets.to(self.device)
        self.test_inputs = test_inputs.to(self.device)
        self.test_targets = test_targets.to(self.device)

    def _slices(self, inputs: torch.Tensor, targets: torch.Tensor,
                indices: torch.Tensor) -> Iterator[Batch]:
        indices = indices.to(self.device)
        for start in range(0, len(indices), self.local_batch_size):
            batch = indices[start:start + self.local_batch_size]
            yield inputs.index_select(0, batch), targets.index_select(0, batch)

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        return self._slices(self.train_inputs, self.train_targets, self.epoch_indices(epoch))

    def test_batches(self, shard: bool = False) -> Iterator[Batch]:
        return self._slices(self.test_inputs, self.test_targets, self.test_indices(shard))


class _SettableOrderSampler(Sampler[int]):
    """Yields whatever index order was last assigned to ``indices``."""

    def __init__(self, indices: Sequence[int] = ()) -> None:
        self.indices: list[int] = list(indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class LoaderData(Data):
    """A map-style dataset read (and augmented) through ``DataLoader`` workers.

    Pinned memory is used when ``device`` is CUDA.  Workers are persistent only
    on CUDA with ``num_workers > 0``; on CPU they are re-created every epoch so
    that the workers' augmentation seeds, drawn from a generator seeded with
    ``(seed, epoch, rank)``, make a resumed epoch identical to the original.
    Persistent workers draw their seeds once, in the first epoch iterated, so
    after a resume their augmentation (not the order) differs from the original
    run's.  With ``num_workers == 0`` augmentation draws from torch's global RNG.
    """

    def __init__(self, train_set: Dataset, test_set: Dataset, *, name: str,
                 num_classes: int, input_shape: tuple[int, int, int], batch_size: int,
                 seed: int, num_workers: int = 0, rank: int = 0, world_size: int = 1,
                 device: torch.device = torch.device("cpu")) -> None:
        super().__init__(name=name, num_classes=num_classes, input_shape=input_shape,
                         train_size=len(train_set), test_size=len(test_set),
                         batch_size=batch_size, seed=seed, rank=rank,
                         world_size=world_size, device=device)
        self.num_workers = num_workers
        self._pin = self.device.type == "cuda"
        persistent = num_workers > 0 and self.device.type == "cuda"
        self._train_sampler = _SettableOrderSampler()
        self._test_sampler = _SettableOrderSampler()
        self._worker_seeds = torch.Generator()
        common = dict(batch_size=self.local_batch_size, num_workers=num_workers,
                      pin_memory=self._pin, persistent_workers=persistent, drop_last=False)
        self._train_loader = DataLoader(train_set, sampler=self._train_sampler,
                                        generator=self._worker_seeds, **common)
        self._test_loader = DataLoader(test_set, sampler=self._test_sampler, **common)

    def _to_device(self, loader: DataLoader) -> Iterator[Batch]:
        for inputs, targets in loader:
            yield (inputs.to(self.device, non_blocking=self._pin),
                   targets.to(self.device, non_blocking=self._pin))

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        # A generator function: the order and worker seeds are set when iteration
        # starts, right before the loader's iterator captures them.
        self._train_sampler.indices = self.epoch_indices(epoch).tolist()
        self._worker_seeds.manual_seed(epoch_seed(self.seed, epoch, self.rank, "workers"))
        yield from self._to_device(self._train_loader)

    def test_batches(self, shard: bool = False) -> Iterator[Batch]:
        self._test_sampler.indices = self.test_indices(shard).tolist()
        yield from self._to_device(self._test_loader)


# -------------------------------------------------------------------- registry


@dataclass(frozen=True)
class DatasetSpec:
    """A supported dataset.

    Attributes:
        name: registry name.
        num_classes: classes in the full dataset.
        train_size: training examples of the full dataset (planning knows a run's steps from it).
        input_shape: (channels, height, width) of one model input.
        layout: the expected on-disk layout, for error messages.
        default_root: where to look when no root or environment variable is given.
        is_present: whether a directory holds this dataset's layout.
        fetch: downloads the missing files into a folder (checked, moved into place
            only once verified), or ``None`` where the dataset cannot be downloaded.
        downloads_by_default: whether ``download=None`` downloads it into the per-user
            cache when no root is given and it is found nowhere.
        fix_hint: extra advice (how to install or download) for error messages.
        loader: builds the :class:`Data` (internal signature).
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    train_size: int
    layout: str
    default_root: str | None
    is_present: Callable[[Path], bool]
    fetch: Callable[[Path], None] | None
    downloads_by_default: bool
    fix_hint: str
    loader: Callable[..., Data]


def _error(spec: DatasetSpec, problem: str, searched: Sequence[Path]) -> DataError:
    where = "\n".join(f"  - {p}" for p in searched) or "  (no location given)"
    return DataError(
        f"{spec.name}: {problem}\nSearched:\n{where}\nExpected layout:\n{spec.layout}\n"
        f"Fix: pass --data-root (root=...) pointing at that layout, or set "
        f"{DATA_ROOT_ENV} to a folder holding it or holding it in a subfolder "
        f"named '{spec.name}'; "
        f"{spec.fix_hint}")


# -------------------------------------------------------------------- downloads

#: Seconds a download waits for the server (to connect, and between two reads).
DOWNLOAD_TIMEOUT = 60
#: Tries per URL: a corrupt, partial or failed download is fetched once more.
DOWNLOAD_TRIES = 2


def user_cache(dataset: str) -> Path:
    """Where ``dataset`` is downloaded when no root is given: ``$ACDC_BENCH_DATA/<dataset>``
    when the variable is set, else ``${XDG_CACHE_HOME:-~/.cache}/acdc-bench/<dataset>``."""
    env_root = os.environ.get(DATA_ROOT_ENV)
    if env_root:
        return Path(env_root) / dataset
    return user_cache_root() / dataset


def _urls(official: Sequence[str], name: str) -> list[str]:
    """``name`` under ``$ACDC_BENCH_MIRROR`` when set, else under each official base URL."""
    mirror = os.environ.get(MIRROR_ENV)
    bases = [mirror] if mirror else official
    return [base.rstrip("/") + "/" + name for base in bases]


def _md5(chunks) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _chunks(file, size: int = 1 << 20) -> Iterator[bytes]:
    return iter(lambda: file.read(size), b"")


def _file_md5_problem(path: Path, expected: str) -> str | None:
    with open(path, "rb") as file:
        actual = _md5(_chunks(file))
    return None if actual == expected else f"MD5 {actual}, expected {expected}"


def _gzip_content_md5_problem(path: Path, expected: str) -> str | None:
    """What is wrong with a ``.gz`` file whose decompressed content should have MD5 ``expected``."""
    try:
        with gzip.open(path, "rb") as file:
            actual = _md5(_chunks(file))
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError; a cut stream an EOFError
        return f"not a complete gzip file ({exc})"
    return None if actual == expected else (f"the decompressed content has MD5 {actual}, "
                                            f"expected {expected}")


def _download(url: str, path: Path, label: str) -> None:
    """``url`` into ``path``, with a progress bar named ``label`` on stderr; a short body is an error."""
    request = urllib.request.Request(url, headers={"User-Agent": "acdc-bench"})
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT) as response, open(path, "wb") as out:
        total = response.length  # Content-Length, or None
        received = 0
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                  file=sys.stderr, leave=False) as bar:
            for chunk in _chunks(response, 1 << 16):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise OSError(f"the connection closed after {received} of {total} bytes")


def _fetch_verified(urls: Sequence[str], dest: Path, problem: Callable[[Path], str | None]) -> None:
    """Download ``dest`` from the first of ``urls`` that gives a file ``problem`` finds nothing wrong with.

    Each download goes to a temporary file beside ``dest``, moved into place only once checked, so
    ``dest`` never holds an unchecked file. A failed or wrong download is fetched again once
    (:data:`DOWNLOAD_TRIES`), then the next URL is tried; a :class:`DataError` lists every failure.
    """
    failures = []
    for url in urls:
        for attempt in range(1, DOWNLOAD_TRIES + 1):
            part = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:12]}.part")  # mode from the umask
            try:
                _download(url, part, dest.name)
                issue = problem(part)
            except (OSError, ValueError) as exc:  # URLError, HTTPError and timeouts are OSErrors
                issue = f"download failed: {exc}"
            else:
                if issue is None:
                    os.replace(part, dest)
                    return
            finally:
                part.unlink(missing_ok=True)
            failures.append(f"{url} (try {attempt} of {DOWNLOAD_TRIES}): {issue}")
            again = "fetching it again" if attempt < DOWNLOAD_TRIES else "giving up on this URL"
            print(f"{url}: {issue}; {again}", file=sys.stderr)
    listed = "\n".join(f"  - {failure}" for failure in failures)
    raise DataError(f"cannot download {dest.name} (nothing unchecked was kept):\n{listed}\n"
                    f"Fix: check the network (or its proxy), or set {MIRROR_ENV} to a base URL serving "
                    f"{dest.name}, or place the data yourself in {dest.parent} (or set {DATA_ROOT_ENV}).")


def download_dataset(dataset: str, root: str | os.PathLike | None = None) -> Path:
    """Download ``dataset`` into ``root`` (default: :func:`user_cache`) unless it is there; returns the folder.

    Fashion-MNIST comes from the official mirrors (torchvision's, then the dataset's GitHub) and
    CIFAR-100 from its Toronto page, or both from the base URL in ``$ACDC_BENCH_MIRROR``. Every file
    is checked against its published MD5 before it is moved into place; concurrent callers (the
    ranks of a run, the workers of ``reproduce``) wait for one download. Raises :class:`DataError`
    when the download fails twice from every URL.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of: {', '.join(sorted(DATASETS))}")
    spec = DATASETS[dataset]
    if spec.fetch is None:
        raise DataError(f"{dataset} cannot be downloaded automatically: {spec.fix_hint}")
    folder = Path(root) if root is not None else user_cache(dataset)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".download.lock")):
        if not spec.is_present(folder):
            spec.fetch(folder)
    return folder


# ------------------------------------------------------------------ IDX parsing


_IDX_DTYPES = {0x08: torch.uint8}
_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
#: The official base URLs of the four ``.gz`` files: torchvision's FashionMNIST mirrors, then the
#: data folder of zalandoresearch/fashion-mnist on GitHub.
FASHION_MNIST_MIRRORS = (*datasets.FashionMNIST.mirrors,
                         "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/")
#: MD5 of each file's decompressed IDX content (the published raw-file sums; the ``.gz`` sums of
#: torchvision's FashionMNIST.resources hold only for the official compression, and a mirror such
#: as Debian's package recompresses).
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}


def read_idx(path: str | os.PathLike, expected_ndim: int) -> torch.Tensor:
    """Read an IDX file (gzip-compressed if its name ends in ``.gz``) of unsigned bytes.

    Raises ``ValueError`` naming the file if it is truncated, not gzip when it
    should be, or its magic number is not ``0x0000 08 <expected_ndim>``. The decoded tensor
    is kept per process, keyed by the file's path, size and modification time, so the runs a
    ``reproduce`` worker trains one after another decompress the data once; do not modify
    it in place (the loaders copy it).
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise ValueError(f"cannot read IDX file {path}: {exc}") from exc
    return _read_idx(str(path.resolve()), stat.st_size, stat.st_mtime_ns, expected_ndim)


@functools.lru_cache(maxsize=8)
def _read_idx(name: str, size: int, mtime_ns: int, expected_ndim: int) -> torch.Tensor:
    path = Path(name)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ValueError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4:
        raise ValueError(f"malformed IDX file {path}: only {len(raw)} bytes")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code not in _IDX_DTYPES or ndim != expected_ndim:
        raise ValueError(f"malformed IDX file {path}: magic number 0x{raw[:4].hex()}, "
                         f"expected 0x000008{expected_ndim:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"malformed IDX file {path}: header truncated")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) != header + math.prod(shape):
        raise ValueError(f"malformed IDX file {path}: {len(raw) - header} data bytes, "
                         f"header shape {shape} needs {math.prod(shape)}")
    data = torch.frombuffer(bytearray(raw[header:]), dtype=_IDX_DTYPES[dtype_code])
    return data.reshape(shape)


def _fashion_file(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def _fashion_present(root: Path) -> bool:
    return all(_fashion_file(root, stem) for stem in _FASHION_FILES.values())


def _fetch_fashion_mnist(root: Path) -> None:
    missing = [stem for stem in _FASHION_FILES.values() if _fashion_file(root, stem) is None]
    print(f"fashion-mnist: not found; downloading {len(missing)} file(s) into {root} from "
          f"{_urls(FASHION_MNIST_MIRRORS, '')[0]}, each checked against the MD5 of its published content",
          file=sys.stderr)
    for stem in missing:
        _fetch_verified(_urls(FASHION_MNIST_MIRRORS, stem + ".gz"), root / (stem + ".gz"),
                        functools.partial(_gzip_content_md5_problem, expected=FASHION_MNIST_MD5[stem]))


def _load_fashion_mnist(spec: DatasetSpec, root: Path, searched: list[Path], *,
                        train_subset: int | None, download: bool, **common) -> Data:
    arrays = {}
    try:
        for key, stem in _FASHION_FILES.items():
            arrays[key] = read_idx(_fashion_file(root, stem), 3 if "images" in key else 1)
    except ValueError as exc:
        raise _error(spec, str(exc), searched) from exc

    def split(images_key: str, labels_key: str, limit: int | None) -> tuple[torch.Tensor, ...]:
        images, labels = arrays[images_key], arrays[labels_key]
        if images.shape[1:] != (28, 28) or len(images) != len(labels):
            raise _error(spec, f"{images_key} has shape {tuple(images.shape)} and "
                         f"{labels_key} {tuple(labels.shape)}; expected (N, 28, 28) "
                         "images with N labels", searched)
        if len(labels) and int(labels.max()) >= spec.num_classes:
            raise _error(spec, f"{labels_key} holds label {int(labels.max())}, expected "
                         f"0..{spec.num_classes - 1}", searched)
        if limit is not None:
            keep = stratified_subset(labels, limit)
            images, labels = images[keep], labels[keep]
        inputs = (images.unsqueeze(1).float().div_(255.0)
                  .sub_(FASHION_MNIST_MEAN).div_(FASHION_MNIST_STD))
        return inputs, labels.long()

    train = split("train_images", "train_labels", train_subset)
    test = split("test_images", "test_labels", None)
    common.pop("num_workers")
    return TensorData(*train, *test, name=spec.name, num_classes=spec.num_classes, **common)


# --------------------------------------------------------------------- CIFAR-100

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


#: The archive (torchvision's CIFAR100: the Toronto page) and its published MD5.
CIFAR100_URL = datasets.CIFAR100.url
CIFAR100_ARCHIVE_MD5 = datasets.CIFAR100.tgz_md5


def _cifar_present(root: Path) -> bool:
    folder = root / "cifar-100-python"
    return all((folder / name).is_file() for name in ("train", "test", "meta"))


def _fetch_cifar100(root: Path) -> None:
    final = root / "cifar-100-python"
    if final.exists():
        raise DataError(f"cifar100: {final} exists but lacks train, test or meta: delete it and run again")
    base, name = CIFAR100_URL.rsplit("/", 1)
    urls = _urls([base], name)
    print(f"cifar100: not found; downloading {name} (169 MB) into {root} from {urls[0]}, "
          f"checked against its published MD5 before extraction", file=sys.stderr)
    archive = root / name
    _fetch_verified(urls, archive, functools.partial(_file_md5_problem, expected=CIFAR100_ARCHIVE_MD5))
    try:
        with tempfile.TemporaryDirectory(dir=root, prefix=".extract.") as scratch, \
                tarfile.open(archive, "r:gz") as tar:
            # the "data" filter (Python 3.12, backported) refuses paths outside the folder
            tar.extractall(scratch, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
            if not _cifar_present(Path(scratch)):
                raise DataError(f"cifar100: {urls[0]} holds no cifar-100-python/{{train,test,meta}}")
            os.replace(Path(scratch) / "cifar-100-python", final)
    finally:
        archive.unlink(missing_ok=True)


class _CIFAR100WithoutMD5(datasets.CIFAR100):
    """torchvision's CIFAR100 checking that the files exist, not their MD5 sums.

    Hashing 180 MB on every start is slow, and malformed files still fail to
    unpickle.  Downloads (:func:`download_dataset`) check the archive's MD5.
    """

    train_list = [["train", None]]
    test_list = [["test", None]]
    meta = {**datasets.CIFAR100.meta, "md5": None}


def _load_cifar100(spec: DatasetSpec, root: Path, searched: list[Path], *,
                   train_subset: int | None, download: bool, **common) -> Data:
    normalize = transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD)
    train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4),
                                   transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), normalize])
    test_tf = transforms.Compose([transforms.ToTensor(), normalize])
    try:
        train_set = _CIFAR100WithoutMD5(str(root), train=True, transform=train_tf)
        test_set = _CIFAR100WithoutMD5(str(root), train=False, transform=test_tf)
    except Exception as exc:  # torchvision raises RuntimeError, pickle/numpy many kinds
        raise _error(spec, f"cannot load {root / 'cifar-100-python'}: "
                     f"{type(exc).__name__}: {exc}", searched) from exc
    return _loader_data(spec, train_set, test_set, len(train_set.classes), train_subset,
                        **common)


# ---------------------------------------------------------------------- ImageNet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _imagenet_present(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "val").is_dir()


def _load_imagenet(spec: DatasetSpec, root: Path, searched: list[Path], *,
                   train_subset: int | None, download: bool, **common) -> Data:
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(224),
                                   transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), normalize])
    test_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                                  transforms.ToTensor(), normalize])
    try:
        train_set = datasets.ImageFolder(str(root / "train"), transform=train_tf)
        test_set = datasets.ImageFolder(str(root / "val"), transform=test_tf)
    except (OSError, ValueError) as exc:  # FileNotFoundError when a split has no images
        raise _error(spec, f"cannot index {root}: {exc}", searched) from exc
    if train_set.class_to_idx != test_set.class_to_idx:
        raise _error(spec, f"{root / 'train'} and {root / 'val'} hold different class "
                     f"folders ({len(train_set.classes)} vs {len(test_set.classes)})",
                     searched)
    return _loader_data(spec, train_set, test_set, len(train_set.classes), train_subset,
                        **common)


def _loader_data(spec: DatasetSpec, train_set: Dataset, test_set: Dataset,
                 num_classes: int, train_subset: int | None, **common) -> LoaderData:
    if train_subset is not None:
        train_set = Subset(train_set, stratified_subset(torch.as_tensor(train_set.targets), train_subset).tolist())
    return LoaderData(train_set, test_set, name=spec.name, num_classes=num_classes,
                      input_shape=spec.input_shape, **common)


#: The subset's draw does not depend on the run's seed: every seed and method of a suite trains
#: on the same examples (the subset is part of the data set, not of the run's randomness).
SUBSET_SEED = 0


def stratified_subset(labels: torch.Tensor, size: int) -> torch.Tensor:
    """Indices of a seeded, class-stratified sample of ``size`` examples, in dataset order.

    Each class keeps its share of ``size`` (largest remainders round it to whole examples),
    drawn uniformly within the class by a generator seeded with :data:`SUBSET_SEED`. The first
    N examples would not do: an ImageFolder tree is sorted by class, so they hold one class.
    """
    labels = torch.as_tensor(labels).reshape(-1)
    if size >= len(labels):
        return torch.arange(len(labels))
    classes, counts = torch.unique(labels, return_counts=True)
    quotas = counts.double() * size / len(labels)
    take = quotas.floor().long()
    short = size - int(take.sum())
    if short:
        take[torch.argsort(quotas - take, descending=True, stable=True)[:short]] += 1
    generator = torch.Generator().manual_seed(SUBSET_SEED)
    chosen = []
    for cls, n in zip(classes.tolist(), take.tolist()):
        members = torch.nonzero(labels == cls).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:n]])
    return torch.cat(chosen).sort().values


DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist", num_classes=10, input_shape=(1, 28, 28), train_size=60_000,
        layout="  <root>/" + "[.gz]\n  <root>/".join(_FASHION_FILES.values()) + "[.gz]\n"
               "  (IDX files; gzip-compressed or not)",
        default_root="/usr/share/datasets/fashion-mnist",
        is_present=_fashion_present, fetch=_fetch_fashion_mnist, downloads_by_default=True,
        fix_hint="or, as root on Debian or Ubuntu, run `apt-get install dataset-fashion-mnist` "
                 "(installs /usr/share/datasets/fashion-mnist).",
        loader=_load_fashion_mnist),
    "cifar100": DatasetSpec(
        name="cifar100", num_classes=100, input_shape=(3, 32, 32), train_size=50_000,
        layout="  <root>/cifar-100-python/train\n  <root>/cifar-100-python/test\n"
               "  <root>/cifar-100-python/meta\n  (the pickles of cifar-100-python.tar.gz)",
        default_root=None,
        is_present=_cifar_present, fetch=_fetch_cifar100, downloads_by_default=False,
        fix_hint="or get torchvision's cifar-100-python.tar.gz and extract it there.",
        loader=_load_cifar100),
    "imagenet": DatasetSpec(
        name="imagenet", num_classes=1000, input_shape=(3, 224, 224), train_size=1_281_167,
        layout="  <root>/train/<wnid>/*.JPEG\n  <root>/val/<wnid>/*.JPEG\n"
               "  (ImageFolder layout; the validation images sorted into class folders)",
        default_root=None,
        is_present=_imagenet_present, fetch=None, downloads_by_default=False,
        fix_hint="ImageNet cannot be downloaded automatically (image-net.org).",
        loader=_load_imagenet),
}


def _candidate_roots(spec: DatasetSpec, root: str | os.PathLike | None) -> list[Path]:
    if root is not None:
        return [Path(root)]
    candidates = []
    env_root = os.environ.get(DATA_ROOT_ENV)
    if env_root:
        if not Path(env_root).is_dir():  # a typo must not fall back to other data in silence
            raise DataError(f"{DATA_ROOT_ENV}={env_root} is not a folder: point it at the folder holding the "
                            f"data sets (or unset it to use the default locations)")
        candidates += [Path(env_root) / spec.name, Path(env_root)]
    if spec.default_root:
        candidates.append(Path(spec.default_root))
    if spec.fetch is not None and not env_root:  # with the variable set, the cache is $ACDC_BENCH_DATA/<dataset>
        candidates.append(user_cache(spec.name))
    return candidates


def load_data(dataset: str, *, root: str | os.PathLike | None, batch_size: int, seed: int,
              num_workers: int = 0, device: torch.device | str = torch.device("cpu"),
              rank: int = 0, world_size: int = 1, train_subset: int | None = None,
              download: bool | None = None) -> Data:
    """Load ``dataset`` for one rank of a run.

    Args:
        dataset: a key of :data:`DATASETS`.
        root: the data folder; ``None`` searches ``$ACDC_BENCH_DATA/<dataset>``,
            ``$ACDC_BENCH_DATA``, the dataset's default location and, for the datasets that
            can be downloaded, the per-user cache (:func:`user_cache`), in that order.
        batch_size: the global batch size (a multiple of ``world_size``).
        seed: with the epoch, fixes the training order (and worker seeds).
        num_workers: ``DataLoader`` workers (ignored for in-memory Fashion-MNIST).
        device: where batches are delivered.
        rank, world_size: the data-parallel position; each rank gets a disjoint shard.
        train_subset: keep a class-stratified sample of N training examples (:func:`stratified_subset`).
        download: where the data is found nowhere, download it (:func:`download_dataset`)
            into ``root``, or into the per-user cache when ``root`` is ``None``; ``None``
            (the default) downloads where no root is given and the dataset downloads by
            default (Fashion-MNIST, not CIFAR-100's 169 MB); ``False`` never downloads.

    Raises:
        ValueError: unknown dataset, or batch size/rank/world size inconsistent.
        DataError: the data is missing or malformed.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of: "
                         f"{', '.join(sorted(DATASETS))}")
    if train_subset is not None and train_subset < 1:
        raise ValueError(f"train_subset must be positive, got {train_subset}")
    spec = DATASETS[dataset]
    searched = _candidate_roots(spec, root)
    found = next((path for path in searched if spec.is_present(path)), None)
    if download is None:
        download = spec.downloads_by_default and root is None
    if found is None and download and spec.fetch is not None:
        found = download_dataset(dataset, root)
    elif found is None:
        problem = ("no data root given (no root argument, " + DATA_ROOT_ENV +
                   " unset) and the dataset has no default location"
                   if not searched else "data not found (missing files or folders)")
        if spec.fetch is None:
            problem += "; this dataset cannot be downloaded automatically" if download else ""
        elif root is not None:
            problem += "; download=True downloads it into that root"
            if spec.downloads_by_default:
                problem += f" (and with no root given it is downloaded into {user_cache(dataset)})"
        else:
            problem += (f"; `acdc-bench download {dataset}` (or download=True) downloads it into "
                        f"{user_cache(dataset)}")
        raise _error(spec, problem, searched)
    return spec.loader(spec, found, searched, train_subset=train_subset, download=download,
                       batch_size=batch_size, seed=seed, num_workers=num_workers,
                       device=torch.device(device), rank=rank, world_size=world_size)
