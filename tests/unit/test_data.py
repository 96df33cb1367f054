"""Datasets: real Fashion-MNIST, CIFAR-100 pickles and an ImageFolder tree written
from real images, deterministic sharded order, and helpful errors."""

import gzip
import pickle
import time

import numpy as np
import pytest
import torch

from acdc_bench.data import DATA_ROOT_ENV, MIRROR_ENV, DataError, load_data

from data_files import FASHION_ROOT, HAVE_FASHION, rgb

needs_fashion = pytest.mark.skipif(
    not HAVE_FASHION, reason=f"Fashion-MNIST not installed at {FASHION_ROOT} "
    "(apt-get install dataset-fashion-mnist)")


@pytest.fixture(autouse=True)
def no_data_env(monkeypatch, tmp_path_factory):
    """No data folder from the environment, an empty user cache, and a mirror that refuses every
    connection: a test here never downloads (tests/unit/test_download.py does, from 127.0.0.1)."""
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg")))
    monkeypatch.setenv(MIRROR_ENV, "http://127.0.0.1:9/")


def collect(batches):
    inputs, targets = zip(*batches)
    return list(inputs), list(targets)


# --------------------------------------------------------------------- Fashion-MNIST


def epoch_seconds(data, epoch: int) -> float:
    """Wall time of iterating one training epoch, as a training loop would.

    Measured with one intra-op thread: on a CPU shared with other processes,
    OpenMP threads waiting for a busy core would otherwise dominate the time.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        for _ in data.train_batches(epoch):
            pass
        return time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)


@needs_fashion
def test_real_fashion_mnist():
    data = load_data("fashion-mnist", root=None, batch_size=256, seed=0)
    assert (data.train_size, data.test_size) == (60000, 10000)
    assert (data.num_classes, data.input_shape) == (10, (1, 28, 28))
    assert data.steps_per_epoch == 235
    inputs, targets = collect(data.train_batches(0))
    assert len(inputs) == 235 and inputs[0].shape == (256, 1, 28, 28)
    assert inputs[-1].shape[0] == 60000 - 234 * 256
    assert sorted(torch.cat(targets).bincount().tolist()) == [6000] * 10
    assert inputs[0].dtype == torch.float32
    assert abs(data.train_inputs.mean().item()) < 0.01  # normalised
    assert abs(data.train_inputs.std().item() - 1) < 0.02
    elapsed = min(epoch_seconds(data, epoch) for epoch in range(3))
    assert elapsed < 0.5, f"one in-memory epoch took {elapsed:.3f} s (target < 0.1 s)"
    test_targets = torch.cat([t for _, t in data.test_batches()])
    assert len(test_targets) == 10000 and 0 <= test_targets.min() <= test_targets.max() <= 9


def test_idx_files_round_trip(small_fashion_root, sample_images):
    data = load_data("fashion-mnist", root=small_fashion_root, batch_size=32, seed=1)
    assert (data.train_size, data.test_size) == (101, 27)
    inputs, targets = collect(data.test_batches())  # test order is dataset order
    expected = (sample_images[0][101:128].float() / 255 - 0.2860) / 0.3530
    torch.testing.assert_close(torch.cat(inputs)[:, 0], expected)
    assert torch.equal(torch.cat(targets), sample_images[1][101:128])


def test_train_subset(small_fashion_root):
    data = load_data("fashion-mnist", root=small_fashion_root, batch_size=8, seed=0,
                     train_subset=20)
    assert data.train_size == 20 and data.steps_per_epoch == 3
    assert sorted(data.epoch_indices(0).tolist()) == list(range(20))


# ---------------------------------------------------------------------- determinism


def test_order_depends_only_on_seed_and_epoch(small_fashion_root):
    def epoch(seed, number):
        data = load_data("fashion-mnist", root=small_fashion_root, batch_size=16, seed=seed)
        torch.manual_seed(number * 7 + 123)  # global RNG state must not matter
        return torch.cat(collect(data.train_batches(number))[0])

    first = epoch(0, 3)
    assert torch.equal(first, epoch(0, 3))
    assert not torch.equal(first, epoch(0, 4))
    assert not torch.equal(first, epoch(1, 3))


def test_ranks_get_disjoint_shards_and_equal_steps(small_fashion_root):
    ranks = [load_data("fashion-mnist", root=small_fashion_root, batch_size=10, seed=5,
                       rank=r, world_size=2) for r in range(2)]
    # 101 examples: 51 per rank after wrap-around padding, 5 per step, 11 steps.
    assert [d.steps_per_epoch for d in ranks] == [11, 11]
    assert [d.train_size for d in ranks] == [101, 101]
    indices = [d.epoch_indices(2) for d in ranks]
    assert [len(i) for i in indices] == [51, 51]
    together = torch.cat(indices).tolist()
    assert set(together) == set(range(101)) and len(together) == 102  # one wrapped
    assert len(set(indices[0].tolist()) & set(indices[1].tolist())) <= 1
    assert len(set(indices[0].tolist())) == 51  # no repeat within a rank
    for data, idx in zip(ranks, indices):
        inputs, _ = collect(data.train_batches(2))
        assert len(inputs) == 11 and {len(x) for x in inputs[:-1]} == {5}
        torch.testing.assert_close(torch.cat(inputs), data.train_inputs[idx])
    sharded = [torch.cat(collect(d.test_batches(shard=True))[1]) for d in ranks]
    assert sum(len(s) for s in sharded) == ranks[0].test_size


def test_exact_disjoint_shards_when_divisible(small_fashion_root):
    ranks = [load_data("fashion-mnist", root=small_fashion_root, batch_size=4, seed=0,
                       rank=r, world_size=4, train_subset=100) for r in range(4)]
    shards = [set(d.epoch_indices(9).tolist()) for d in ranks]
    assert set.union(*shards) == set(range(100)) and sum(map(len, shards)) == 100


def test_global_batch_must_divide(small_fashion_root):
    with pytest.raises(ValueError, match="multiple of world_size"):
        load_data("fashion-mnist", root=small_fashion_root, batch_size=10, seed=0,
                  rank=0, world_size=3)


# ------------------------------------------------------------------------- CIFAR-100


def test_cifar_fixture_is_in_the_real_format(cifar_root):
    with open(cifar_root / "cifar-100-python" / "train", "rb") as f:
        entry = pickle.load(f, encoding="bytes")
    assert {b"data", b"fine_labels", b"coarse_labels", b"filenames"} <= set(entry)
    assert entry[b"data"].dtype == np.uint8 and entry[b"data"].shape == (96, 3072)


def test_cifar100_loads_and_iterates(cifar_root, sample_images):
    data = load_data("cifar100", root=cifar_root, batch_size=32, seed=0)
    assert (data.num_classes, data.input_shape) == (100, (3, 32, 32))
    assert (data.train_size, data.test_size, data.steps_per_epoch) == (96, 32, 3)
    inputs, targets = collect(data.train_batches(0))
    assert [x.shape for x in inputs] == [(32, 3, 32, 32)] * 3
    assert sorted(torch.cat(targets).tolist()) == sorted(sample_images[1][:96].tolist())
    test_inputs, test_targets = collect(data.test_batches())
    assert torch.equal(torch.cat(test_targets), sample_images[1][96:128])
    # Test images are un-augmented: normalised pixels of the stored image.
    stored = rgb(sample_images[0][96:97], 32)[0].float() / 255
    mean = torch.tensor([0.5071, 0.4865, 0.4409])[:, None, None]
    std = torch.tensor([0.2673, 0.2564, 0.2762])[:, None, None]
    torch.testing.assert_close(test_inputs[0][0], (stored - mean) / std)


def test_cifar100_workers_reproduce_augmentation(cifar_root):
    def epoch(num_workers):
        data = load_data("cifar100", root=cifar_root, batch_size=32, seed=3,
                         num_workers=num_workers, train_subset=64)
        return collect(data.train_batches(1))

    inputs_a, targets_a = epoch(2)
    inputs_b, targets_b = epoch(2)
    assert torch.equal(torch.cat(inputs_a), torch.cat(inputs_b))  # same crops and flips
    _, targets_serial = epoch(0)
    assert torch.equal(torch.cat(targets_a), torch.cat(targets_serial))  # same order


def test_cifar100_found_through_environment(cifar_root, tmp_path, monkeypatch):
    (tmp_path / "cifar100").mkdir()
    (cifar_root / "cifar-100-python").rename(tmp_path / "cifar100" / "cifar-100-python")
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    data = load_data("cifar100", root=None, batch_size=32, seed=0)
    assert data.train_size == 96


def test_cifar100_malformed_pickle(cifar_root):
    train = cifar_root / "cifar-100-python" / "train"
    train.write_bytes(train.read_bytes()[:1000])
    with pytest.raises(DataError) as info:
        load_data("cifar100", root=cifar_root, batch_size=32, seed=0)
    message = str(info.value)
    assert str(cifar_root) in message and "cifar-100-python/meta" in message


# -------------------------------------------------------------------------- ImageNet


def test_imagenet_folder_loads_and_iterates(imagenet_root):
    data = load_data("imagenet", root=imagenet_root, batch_size=4, seed=0)
    assert (data.num_classes, data.input_shape) == (2, (3, 224, 224))
    assert (data.train_size, data.test_size, data.steps_per_epoch) == (6, 4, 2)
    inputs, targets = collect(data.train_batches(0))
    assert [tuple(x.shape) for x in inputs] == [(4, 3, 224, 224), (2, 3, 224, 224)]
    assert sorted(torch.cat(targets).tolist()) == [0, 0, 0, 1, 1, 1]
    test_inputs, test_targets = collect(data.test_batches())
    assert torch.cat(test_targets).tolist() == [0, 0, 1, 1]
    assert test_inputs[0].shape == (4, 3, 224, 224)


def test_imagenet_without_images(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError) as info:
        load_data("imagenet", root=tmp_path, batch_size=4, seed=0)
    assert str(tmp_path) in str(info.value) and "<root>/val/<wnid>/*.JPEG" in str(info.value)


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize("dataset, layout_fragment, hint", [
    ("fashion-mnist", "train-images-idx3-ubyte", "apt-get install dataset-fashion-mnist"),
    ("cifar100", "cifar-100-python/train", "download=True downloads it into that root"),
    ("imagenet", "<root>/train/<wnid>/*.JPEG", "ACDC_BENCH_DATA"),
])
def test_missing_root(tmp_path, dataset, layout_fragment, hint):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        load_data(dataset, root=missing, batch_size=4, seed=0)
    message = str(info.value)
    for fragment in (dataset, str(missing), layout_fragment, hint, "--data-root"):
        assert fragment in message


def test_empty_dir(tmp_path):
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte") as info:
        load_data("fashion-mnist", root=tmp_path, batch_size=4, seed=0)
    assert str(tmp_path) in str(info.value)


def test_no_location_for_imagenet():
    with pytest.raises(DataError, match="no data root given"):
        load_data("imagenet", root=None, batch_size=4, seed=0)


@pytest.mark.parametrize("corrupt", ["truncate_gzip", "truncate_data", "bad_magic"])
def test_malformed_idx(small_fashion_root, corrupt):
    path = small_fashion_root / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    if corrupt == "truncate_gzip":
        path.write_bytes(path.read_bytes()[:200])
    elif corrupt == "truncate_data":
        path.write_bytes(gzip.compress(raw[:-10]))
    else:
        path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + raw[4:]))
    with pytest.raises(DataError) as info:
        load_data("fashion-mnist", root=small_fashion_root, batch_size=4, seed=0)
    message = str(info.value)
    assert str(path) in message and "t10k-images-idx3-ubyte" in message


def test_unknown_dataset():
    with pytest.raises(ValueError, match="cifar100, fashion-mnist, imagenet"):
        load_data("mnist", root=None, batch_size=4, seed=0)


# ---------------------------------------------------------------------- train_subset is a sample


def test_stratified_subset_keeps_each_class_share_and_is_seeded():
    from acdc_bench.data import stratified_subset

    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)  # sorted by class, as an ImageFolder tree
    subset = stratified_subset(labels, 10)
    assert subset.tolist() == sorted(subset.tolist()) and len(set(subset.tolist())) == 10
    assert torch.bincount(labels[subset]).tolist() == [5, 3, 2]
    assert torch.equal(subset, stratified_subset(labels, 10))  # the same draw every time
    # largest remainders: 7 of 100 -> 3.5, 2.1, 1.4 -> 4, 2, 1
    assert torch.bincount(labels[stratified_subset(labels, 7)]).tolist() == [4, 2, 1]
    assert stratified_subset(labels, 500).tolist() == list(range(100))


def test_train_subset_of_an_imagefolder_tree_holds_every_class(imagenet_root):
    data = load_data("imagenet", root=imagenet_root, batch_size=2, seed=0, train_subset=2)
    _, targets = collect(data.train_batches(0))
    assert sorted(torch.cat(targets).tolist()) == [0, 1]  # the first 2 files would both be class 0


def test_a_data_variable_naming_no_folder_is_an_error(tmp_path, monkeypatch):
    """ACDC_BENCH_DATA=/a/typo must not fall back to the Debian data in silence."""
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "missing"))
    with pytest.raises(DataError, match=r"ACDC_BENCH_DATA=.*missing is not a folder"):
        load_data("fashion-mnist", root=None, batch_size=32, seed=0)
