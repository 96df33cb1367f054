"""The magnitude top-k: exactly the masks of one ``torch.kthvalue``, with one full-size temporary.

``reference_masks`` is the straightforward implementation (concatenate the magnitudes,
one ``kthvalue``, ties pruned in index order); the selection in ``acdc_bench.core.sparsity``
must give the same masks bit for bit, on every path (sample bracket, radix fallback,
NaN fallback, small tensors), while allocating one full-size fp32 buffer at most.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from acdc_bench.core import sparsity
from acdc_bench.core.sparsity import MaskSet, global_magnitude_masks, magnitude_mask, prunable_layers

from helpers import ROOT as REPO


def reference_keep(scores: torch.Tensor, prune: int) -> torch.Tensor:
    keep = torch.ones_like(scores, dtype=torch.bool)
    if prune <= 0:
        return keep
    if prune >= scores.numel():
        return ~keep
    threshold = torch.kthvalue(scores, prune).values
    torch.gt(scores, threshold, out=keep)
    below = int((scores < threshold).sum())
    ties = (scores == threshold).nonzero().flatten()
    keep[ties[prune - below:]] = True
    return keep


def reference_masks(weights, sparsity_):
    sizes = [w.numel() for w in weights]
    scores = torch.cat([w.detach().abs().flatten().float() for w in weights])
    keep = reference_keep(scores, int(round(sparsity_ * scores.numel())))
    return [m.view_as(w) for m, w in zip(torch.split(keep, sizes), weights)]


def cases():
    g = torch.Generator().manual_seed(0)
    n = 50_000
    many_zeros = torch.randn(n, generator=g)
    many_zeros[torch.rand(n, generator=g) < 0.8] = 0.0  # GMP re-pruning: the pruned weights are exact zeros
    return {
        "gaussian layers": [torch.randn(300, 100, generator=g), torch.randn(16, 8, 3, 3, generator=g) * 0.1,
                            torch.randn(n, generator=g) * 3],
        "80% zeros": [many_zeros, torch.zeros(7_000)],
        "all equal": [torch.full((n,), 0.5)],
        "ascending": [torch.linspace(0, 1, n)],
        "descending": [torch.linspace(1, 0, n)],
        "four values": [torch.randint(0, 4, (n,), generator=g).float()],
        "periodic": [torch.arange(n).remainder(210).float()],
        "two scales": [torch.randn(n, generator=g) * 1e-3, torch.randn(n, generator=g) * 1e3],
        "negative zeros": [torch.where(torch.rand(n, generator=g) < 0.5, torch.tensor(-0.0), torch.randn(n, generator=g))],
        "inf": [torch.cat([torch.randn(n, generator=g), torch.full((500,), float("-inf"))])],
        "nan": [torch.cat([torch.randn(n, generator=g), torch.full((500,), float("nan"))])],
        "fp16": [torch.randn(n, generator=g).half(), torch.randn(3_000, generator=g)],
    }


SPARSITIES = [0.0, 1e-5, 0.1, 0.5, 0.8, 0.9, 0.95, 0.99, 0.99999, 1.0]


@pytest.fixture
def small_slices(monkeypatch):
    """Shrink the slice, sample and size thresholds so that small tensors take every path."""
    monkeypatch.setattr(sparsity, "_SLICE_MIN", 4096)
    monkeypatch.setattr(sparsity, "_SELECT_MIN", 1024)
    monkeypatch.setattr(sparsity, "_SAMPLE", 2048)


@pytest.mark.parametrize("name", list(cases()))
def test_global_masks_equal_one_kthvalue(name, small_slices):
    weights = cases()[name]
    for s in SPARSITIES:
        got = global_magnitude_masks(weights, s)
        want = reference_masks(weights, s)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), (name, s)


@pytest.mark.parametrize("name", list(cases()))
def test_layer_masks_equal_one_kthvalue(name, small_slices):
    for weight in cases()[name]:
        for s in SPARSITIES:
            scores = weight.detach().abs().flatten()
            want = reference_keep(scores, scores.numel() - int(round((1 - s) * scores.numel())))
            assert torch.equal(magnitude_mask(weight, 1 - s), want.view_as(weight)), (name, s)


def test_radix_fallback_equals_one_kthvalue(small_slices, monkeypatch):
    monkeypatch.setattr(sparsity, "_select_bracketed", lambda bits, k: None)
    for name, weights in cases().items():
        for s in (0.1, 0.5, 0.9, 0.999):
            got = global_magnitude_masks(weights, s)
            assert all(torch.equal(a, b) for a, b in zip(got, reference_masks(weights, s))), (name, s)


def test_default_sizes_equal_one_kthvalue():
    g = torch.Generator().manual_seed(1)
    weights = [torch.randn(1200, 1000, generator=g), torch.randn(64, 64, 3, 3, generator=g) * 0.05,
               torch.zeros(300_000)]
    for s in (0.5, 0.9, 0.98):
        got = global_magnitude_masks(weights, s)
        assert all(torch.equal(a, b) for a, b in zip(got, reference_masks(weights, s)))


class _Allocations(TorchDispatchMode):
    """Storage sizes of the tensors that PyTorch ops return inside the block (inputs excluded)."""

    def __init__(self, inputs):
        super().__init__()
        self.existing = {t.untyped_storage().data_ptr() for t in inputs}
        self.sizes = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if storage.data_ptr() not in self.existing:
                    self.sizes.setdefault(storage.data_ptr(), storage.nbytes())
        return out


def test_global_masks_allocate_one_full_size_fp32_buffer():
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(2000, 1000, generator=g), torch.randn(256, 256, 3, 3, generator=g) * 0.1,
               torch.randn(1000, 1000, generator=g)]
    n = sum(w.numel() for w in weights)
    with _Allocations(weights) as allocations:
        masks = global_magnitude_masks(weights, 0.9)
    sizes = sorted(allocations.sizes.values(), reverse=True)
    assert sizes[0] == 4 * n  # the magnitudes: the one full-size fp32 buffer
    assert sizes[1] == n  # the masks returned: one bool per weight
    slice_bytes = max(sparsity._SLICE_MIN, n // sparsity._SLICES)  # bool temporaries of one slice
    assert all(size <= slice_bytes for size in sizes[2:]), sizes[:6]  # the rest: slice-sized
    assert all(m.untyped_storage().data_ptr() == masks[0].untyped_storage().data_ptr() for m in masks)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak RSS reset needs Linux /proc")
def test_global_masks_peak_memory_is_one_buffer_beyond_the_masks():
    script = textwrap.dedent("""
        import json, re, torch
        from acdc_bench.core.sparsity import global_magnitude_masks
        def status(field):
            return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
        g = torch.Generator().manual_seed(0)
        weights = [torch.randn(4000, 1000, generator=g), torch.randn(512, 256, 3, 3, generator=g),
                   torch.randn(2_800_000, generator=g)]
        n = sum(w.numel() for w in weights)
        global_magnitude_masks(weights, 0.9)
        open("/proc/self/clear_refs", "w").write("5")
        before = status("VmRSS")
        masks = global_magnitude_masks(weights, 0.9)
        print(json.dumps({"n": n, "extra": status("VmHWM") - before}))
    """)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    buffers = (result["extra"] - result["n"]) / (4 * result["n"])  # beyond the bool masks returned
    assert buffers <= 1.25, buffers  # one fp32 buffer plus slice-sized temporaries (kthvalue alone: 3)


@pytest.mark.parametrize("float_copies", [True, False], ids=["float-copies", "uint8-views"])
def test_mask_application_matches_bool_multiplication(float_copies, monkeypatch):
    """The multipliers give exactly the bool masks' products (NaN and -0.0 included)."""
    if not float_copies:
        monkeypatch.setattr(sparsity, "_FLOAT_FACTORS_MAX", 0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(50, 40), torch.nn.Linear(40, 3))
    layers = prunable_layers(model)
    masks = MaskSet(layers)
    masks.set(global_magnitude_masks([layer.weight for layer in layers], 0.7))
    with torch.no_grad():
        layers[0].weight[0, :5] = torch.tensor([float("nan"), float("inf"), -1.0, -0.0, 2.0])
    expected = [layer.weight.detach() * mask for layer, mask in zip(layers, masks.masks)]
    masks.apply_to_weights()
    for layer, want in zip(layers, expected):
        assert torch.equal(layer.weight.detach().view(torch.int32), want.view(torch.int32))
    model(torch.randn(4, 50)).sum().backward()
    expected = [layer.weight.grad * mask for layer, mask in zip(layers, masks.masks)]
    masks.apply_to_grads()
    assert all(torch.equal(layer.weight.grad.view(torch.int32), want.view(torch.int32))
               for layer, want in zip(layers, expected))
    assert masks._factor_copies == float_copies
    # An in-place mask update (as RigL's) is seen; a replaced mask list too.
    with torch.no_grad():
        for layer in layers:
            layer.weight.normal_()
    masks.masks[1].fill_(False)
    masks.apply_to_weights()
    assert int(torch.count_nonzero(layers[1].weight)) == 0
    masks.masks[0][:, :10] = False  # through an index (a view of the mask)
    masks.apply_to_weights()
    assert int(torch.count_nonzero(layers[0].weight[:, :10])) == 0
    masks.fill_ones()
    masks.set([torch.zeros_like(m) for m in masks.masks])
    masks.apply_to_weights()
    assert all(int(torch.count_nonzero(layer.weight)) == 0 for layer in layers)
