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
``$ACDC_BENCH_DATA``), else the dataset's default location (Fashion-MNIST only).
Missing or malformed data raise :class:`DataError`, which says where it looked,
what layout it expects and how to fix it.
"""

from __future__ import annotations

import abc
import functools
import gzip
import hashlib
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchvision import datasets, transforms

__all__ = ["DataError", "DatasetSpec", "DATASETS", "Data", "TensorData", "LoaderData",
           "load_data", "read_idx", "epoch_seed", "DATA_ROOT_ENV"]

DATA_ROOT_ENV = "ACDC_BENCH_DATA"

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
        can_download: whether ``download=True`` can fetch it into a missing root.
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
    can_download: bool
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


# ------------------------------------------------------------------ IDX parsing


_IDX_DTYPES = {0x08: torch.uint8}
_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530


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


def _cifar_present(root: Path) -> bool:
    folder = root / "cifar-100-python"
    return all((folder / name).is_file() for name in ("train", "test", "meta"))


class _CIFAR100WithoutMD5(datasets.CIFAR100):
    """torchvision's CIFAR100 checking that the files exist, not their MD5 sums.

    Hashing 180 MB on every start is slow, and malformed files still fail to
    unpickle.  Downloads keep the archive's MD5 check.
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
        train_set = _CIFAR100WithoutMD5(str(root), train=True, transform=train_tf,
                                      download=download)
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
        is_present=_fashion_present, can_download=False,
        fix_hint="or run `apt-get install dataset-fashion-mnist` "
                 "(installs /usr/share/datasets/fashion-mnist).",
        loader=_load_fashion_mnist),
    "cifar100": DatasetSpec(
        name="cifar100", num_classes=100, input_shape=(3, 32, 32), train_size=50_000,
        layout="  <root>/cifar-100-python/train\n  <root>/cifar-100-python/test\n"
               "  <root>/cifar-100-python/meta\n  (the pickles of cifar-100-python.tar.gz)",
        default_root=None,
        is_present=_cifar_present, can_download=True,
        fix_hint="or, where the network allows, pass --download (download=True) to "
                 "fetch it into the root.",
        loader=_load_cifar100),
    "imagenet": DatasetSpec(
        name="imagenet", num_classes=1000, input_shape=(3, 224, 224), train_size=1_281_167,
        layout="  <root>/train/<wnid>/*.JPEG\n  <root>/val/<wnid>/*.JPEG\n"
               "  (ImageFolder layout; the validation images sorted into class folders)",
        default_root=None,
        is_present=_imagenet_present, can_download=False,
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
    return candidates


def load_data(dataset: str, *, root: str | os.PathLike | None, batch_size: int, seed: int,
              num_workers: int = 0, device: torch.device | str = torch.device("cpu"),
              rank: int = 0, world_size: int = 1, train_subset: int | None = None,
              download: bool = False) -> Data:
    """Load ``dataset`` for one rank of a run.

    Args:
        dataset: a key of :data:`DATASETS`.
        root: the data folder; ``None`` searches ``$ACDC_BENCH_DATA/<dataset>``,
            ``$ACDC_BENCH_DATA`` and the dataset's default location, in that order.
        batch_size: the global batch size (a multiple of ``world_size``).
        seed: with the epoch, fixes the training order (and worker seeds).
        num_workers: ``DataLoader`` workers (ignored for in-memory Fashion-MNIST).
        device: where batches are delivered.
        rank, world_size: the data-parallel position; each rank gets a disjoint shard.
        train_subset: keep a class-stratified sample of N training examples (:func:`stratified_subset`).
        download: fetch the data into the first searched root if it is absent
            (CIFAR-100 only; ignored where the data is present).

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
    if found is None:
        if download and spec.can_download and searched:
            found = searched[0]
        else:
            problem = ("no data root given (no root argument, " + DATA_ROOT_ENV +
                       " unset) and the dataset has no default location"
                       if not searched else "data not found (missing files or folders)")
            if download and not spec.can_download:
                problem += "; this dataset cannot be downloaded automatically"
            raise _error(spec, problem, searched)
    return spec.loader(spec, found, searched, train_subset=train_subset, download=download,
                       batch_size=batch_size, seed=seed, num_workers=num_workers,
                       device=torch.device(device), rank=rank, world_size=world_size)
