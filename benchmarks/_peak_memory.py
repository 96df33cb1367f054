"""Peak memory of a mask computation, in full-size fp32 buffers; run as a fresh process.

``python _peak_memory.py global|kthvalue [sparsity]`` prints JSON with the peak resident
memory above the baseline while the global top-k (or one ``torch.kthvalue`` over the
concatenated magnitudes) runs on ResNet50's prunable weights, divided by 4 x the number
of weights. Linux only: the peak is read from ``VmHWM`` after resetting it through
``/proc/self/clear_refs``; run with ``MALLOC_MMAP_THRESHOLD_`` set so that freed
buffers go back to the system at once. For the global top-k it also lists the tensors of
at least half a full-size fp32 buffer that the computation allocates (one: the magnitudes).
"""

from __future__ import annotations

import json
import re
import sys

import torch


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"{field}:\s+(\d+) kB", status.read()).group(1)) * 1024


def peak_extra_bytes(fn) -> int:
    """Peak resident bytes above the current resident set while ``fn()`` runs (its result included)."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM to the current resident set
    before = _status("VmRSS")
    result = fn()
    peak = _status("VmHWM")
    del result
    return peak - before


def full_size_allocations(fn, n: int, inputs) -> list[int]:
    """Sizes (bytes) of the tensors ``fn()`` allocates through PyTorch ops that are at least
    half a full-size fp32 buffer (``2 n`` bytes). Counts what the Python-level algorithm
    allocates; allocations inside one kernel (``kthvalue``'s copy and indices) are not seen."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    existing = {t.untyped_storage().data_ptr() for t in inputs}
    sizes: dict[int, int] = {}

    class Allocations(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    if storage.data_ptr() not in existing:
                        sizes.setdefault(storage.data_ptr(), storage.nbytes())
            return out

    with Allocations():
        fn()
    return sorted((b for b in sizes.values() if b >= 2 * n), reverse=True)


def main(argv: list[str]) -> None:
    from acdc_bench.models import build_model
    from acdc_bench.core.sparsity import global_magnitude_masks, prunable_layers

    what = argv[0]
    sparsity = float(argv[1]) if len(argv) > 1 else 0.9
    torch.manual_seed(0)
    weights = [layer.weight.detach() for layer in prunable_layers(build_model("resnet50"))]
    n = sum(w.numel() for w in weights)
    if what == "global":
        fn = lambda: global_magnitude_masks(weights, sparsity)  # noqa: E731
        output = n  # the masks themselves: one bool per weight
    else:
        scores = torch.cat([w.abs().flatten() for w in weights])
        k = int(round(sparsity * n))
        fn = lambda: torch.kthvalue(scores, k)  # noqa: E731
        output = 0
    fn()  # warm up (lazy initialisations)
    extra = peak_extra_bytes(fn)
    full = full_size_allocations(fn, n, weights) if what == "global" else None
    print(json.dumps({"elements": n, "peak_extra_bytes": extra, "output_bytes": output,
                      "extra_fp32_buffers": (extra - output) / (4 * n),
                      "full_size_fp32_buffers": None if full is None else sum(b >= 4 * n for b in full),
                      "allocations_over_half_a_buffer": full}))


if __name__ == "__main__":
    main(sys.argv[1:])
