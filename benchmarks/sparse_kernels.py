"""Sparse kernels against the masked dense layer: forward + backward time per layer shape.

    python benchmarks/sparse_kernels.py [--numerics native portable] [--threads 1 2] [--densities 0.1 0.05]
                                        [--repeats 20] [--out .benchmarks/sparse_kernels.json]

For every layer shape of the default suite's model (LeNet-300-100, batch 256) and a few of
ResNet50's (batch 16), a random weight pruned to each density by magnitude, and each backend:

- ``dense-masked``: a masked layer's dense step, ``F.linear`` / ``F.conv2d`` with the masked
  weight, forward + backward, the dense weight gradient masked afterwards (under portable
  numerics the linear products on the pinned OpenBLAS, :mod:`acdc_bench.core.blas`, as runs do);
- ``fixed-order`` (portable numerics, linear layers): :mod:`acdc_bench.core.sparse`'s kernels,
  which portable runs use for masks at most ``MAX_DENSITY`` dense;
- ``csr``: PyTorch's CSR tensors (linear layers only): ``torch.sparse.mm`` forward and input
  gradient (with the transposed weight in CSR), ``torch.sparse.sampled_addmm`` for the weight
  gradient at the mask's non-zeros;
- ``sparseprop``: ``sparseprop.modules.SparseLinear`` / ``SparseConv2d`` (IST-DASLab's sparse
  backpropagation, the AC/DC authors' lab; optional: ``pip install pybind11 wheel`` then
  ``pip install --no-build-isolation sparseprop``, compiled with ``-march=native``).

Each (numerics, thread count) runs in its own process with ``OMP_NUM_THREADS`` and torch's
threads set (portable: pinned as runs are, :func:`acdc_bench.numerics.pinned_environment`),
and the backends are timed in interleaved rounds (A B C A B C ...), so that load on a shared
machine falls on all of them alike; the table gives medians in ms and the ratio to
dense-masked, and checks every backend's output, input gradient and (linear) weight gradient against
dense-masked (``max |diff| / max |dense|``). A timing, not a test: ``nox -s kernels`` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

#: (name, kind, shape, batch input shape). Linear: (out, in); conv: (out, in, k, stride, padding).
#: The input gradient is computed (and checked) for every layer but the model's first (LeNet fc1).
LAYERS = [
    ("lenet fc1 784x300", "linear", (300, 784), (256, 784)),
    ("lenet fc2 300x100", "linear", (100, 300), (256, 300)),
    ("lenet fc3 100x10", "linear", (10, 100), (256, 100)),
    ("resnet50 layer1 conv3x3 64, 56x56", "conv", (64, 64, 3, 1, 1), (16, 64, 56, 56)),
    ("resnet50 layer3 conv3x3 256, 14x14", "conv", (256, 256, 3, 1, 1), (16, 256, 14, 14)),
    ("resnet50 layer4 conv1x1 2048->512, 7x7", "conv", (512, 2048, 1, 1, 0), (16, 2048, 7, 7)),
    ("resnet50 fc 2048x1000", "linear", (1000, 2048), (16, 2048)),
]
BACKENDS = ["dense-masked", "csr", "sparseprop", "fixed-order"]


# ----------------------------------------------------------------------------- in the worker


def _pruned(shape, density: float, generator):
    import torch

    weight = torch.randn(shape, generator=generator) * 0.05
    keep = max(1, round(density * weight.numel()))
    threshold = weight.abs().flatten().kthvalue(weight.numel() - keep + 1).values
    mask = weight.abs() >= threshold
    return weight * mask, mask


def _rounding_bounds(kind: str, spec, weight, mask, x, grad_out, batch: int):
    """Elementwise bounds on how far two summation orders of the output, the weight gradient (at
    the mask) and the input gradient may differ: 2 gamma_n times the sum of the products'
    magnitudes (Higham, eq. 3.5; tests/tolerance.py), the magnitudes computed by the same dense
    operations on absolute values, n the longest reduction of the three."""
    import torch
    import torch.nn.functional as F

    u = torch.finfo(torch.float32).eps / 2
    w = weight.abs().requires_grad_()
    xa = x.detach().abs().requires_grad_()
    out = F.linear(xa, w) if kind == "linear" else F.conv2d(xa, w, stride=spec[3], padding=spec[4])
    out.backward(grad_out.abs())
    fan_in = weight[0].numel()
    positions = out[0, 0].numel() if kind != "linear" else 1
    n = max(fan_in, batch * positions, weight.shape[0] * (weight[0, 0].numel() if kind != "linear" else 1))
    factor = 2 * n * u / (1 - n * u)
    return (factor * out.detach(), factor * w.grad * mask, factor * xa.grad)


def _csr_linear():
    import torch

    class CsrLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight_csr, weight_t_csr, mask_csr):
            ctx.save_for_backward(x)
            ctx.weights = (weight_t_csr, mask_csr)
            return torch.sparse.mm(weight_csr, x.t()).t()

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            weight_t_csr, mask_csr = ctx.weights
            grad_x = torch.sparse.mm(weight_t_csr, grad.t()).t()
            grad_w = torch.sparse.sampled_addmm(mask_csr, grad.t().contiguous(), x, beta=0.0)
            return grad_x, grad_w, None, None

    return CsrLinear


def _backend_step(backend: str, kind: str, spec, weight, mask):
    """A closure running one forward + backward of ``backend``; returns (output, dX, dW at the mask)."""
    import torch
    import torch.nn.functional as F

    from acdc_bench import numerics
    from acdc_bench.core import blas, sparse

    factor = mask.to(weight.dtype)  # as MaskSet multiplies: same dtype (a bool mask takes a slow cast)
    portable = numerics.active() == "portable"
    if backend in ("csr", "sparseprop") and portable or backend == "fixed-order" and not portable:
        return None  # sparseprop is built for this CPU (-march=native); the fixed-order kernels are portable's

    if kind == "linear":
        linear = blas.linear if portable else F.linear
        if backend == "dense-masked":
            w = weight.clone().requires_grad_()

            def run(x):
                out = linear(x, w)
                out.backward(run.grad)
                grad_w = w.grad.mul_(factor)  # the compressed phase masks the dense gradient
                w.grad = None
                return out, grad_w
            run.forward = lambda x: linear(x, w)
            return run
        if backend == "fixed-order":
            layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            with torch.no_grad():
                layer.weight.copy_(weight)
            structure = sparse.Structure(mask)

            def run(x):
                out = sparse.forward(layer, structure, x)
                out.backward(run.grad)
                grad_w, layer.weight.grad = layer.weight.grad, None
                return out, grad_w
            return run
        if backend == "csr":
            function = _csr_linear()
            weight_csr = weight.to_sparse_csr()
            weight_t_csr = weight.t().contiguous().to_sparse_csr()
            mask_csr = mask.float().to_sparse_csr()
            values = weight_csr.values()

            def run(x):
                weight_csr_grad = torch.sparse_csr_tensor(weight_csr.crow_indices(), weight_csr.col_indices(),
                                                          values, weight.shape, requires_grad=True)
                out = function.apply(x, weight_csr_grad, weight_t_csr, mask_csr)
                out.backward(run.grad)
                return out, weight_csr_grad.grad.to_dense()
            return run
        from sparseprop.modules import SparseLinear

        layer = SparseLinear(weight.clone())

        def run(x):
            out = layer(x)
            out.backward(run.grad)
            grad = layer.W_val.grad
            layer.W_val.grad = None
            dense = torch.zeros(weight.shape)
            indptr, indices = layer.W_idx
            rows = torch.repeat_interleave(torch.arange(weight.shape[0]), indptr[1:] - indptr[:-1])
            dense[rows, indices.long()] = grad
            return out, dense
        return run
    out_channels, in_channels, k, stride, padding = spec
    if backend == "dense-masked":
        w = weight.clone().requires_grad_()

        def run(x):
            out = F.conv2d(x, w, stride=stride, padding=padding)
            out.backward(run.grad)
            grad_w = w.grad.mul_(factor)
            w.grad = None
            return out, grad_w
        run.forward = lambda x: F.conv2d(x, w, stride=stride, padding=padding)
        return run
    if backend in ("csr", "fixed-order"):
        return None  # linear layers only (PyTorch has no CSR convolution)
    from sparseprop.modules import SparseConv2d

    conv = torch.nn.Conv2d(in_channels, out_channels, k, stride=stride, padding=padding, bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight)
    layer = SparseConv2d.from_dense(conv, vectorizing_over_on=False)

    def run(x):
        out = layer(x)
        out.backward(run.grad)
        layer.W_val.grad = None
        return out, None
    return run


def worker(threads: int, densities: list[float], repeats: int, layers: list[str] | None) -> list[dict]:
    import warnings

    import torch

    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")

    from acdc_bench import numerics

    torch.set_num_threads(threads)
    try:
        import sparseprop  # noqa: F401
        have_sparseprop = True
    except ImportError:
        have_sparseprop = False
    rows = []
    generator = torch.Generator().manual_seed(0)
    for name, kind, spec, input_shape in LAYERS:
        if layers and not any(part in name for part in layers):
            continue
        shape = spec if kind == "linear" else spec[:2] + (spec[2], spec[2])
        for density in densities:
            weight, mask = _pruned(shape, density, generator)
            x = torch.randn(input_shape, generator=generator).requires_grad_(not name.startswith("lenet fc1"))
            runs = {}
            for backend in BACKENDS:
                if backend == "sparseprop" and not have_sparseprop:
                    continue
                run = _backend_step(backend, kind, spec, weight, mask)
                if run is not None:
                    runs[backend] = run
            with torch.no_grad():
                probe = runs["dense-masked"].forward(x)
            grad_out = torch.randn(probe.shape, generator=generator)
            for run in runs.values():
                run.grad = grad_out
            results = {}
            check = {}
            expected_out, expected_grad = runs["dense-masked"](x)
            expected_out, (expected_dx, x.grad) = expected_out.detach(), (x.grad, None)
            bounds = _rounding_bounds(kind, spec, weight, mask, x, grad_out, input_shape[0])
            within = {}
            for backend, run in runs.items():
                out, grad_w = run(x)
                pairs = [(out.detach(), expected_out.detach(), bounds[0])]
                if grad_w is not None:
                    pairs.append((grad_w, expected_grad, bounds[1]))
                if expected_dx is not None:
                    pairs.append((x.grad, expected_dx, bounds[2]))
                    x.grad = None
                check[backend] = max(float((a - b).abs().max() / b.abs().max()) for a, b, _ in pairs)
                within[backend] = all(bool(((a - b).abs() <= bound).all()) for a, b, bound in pairs)
            times = {backend: [] for backend in runs}
            for backend, run in runs.items():  # warm-up
                run(x)
                x.grad = None
            for _ in range(repeats):
                for backend, run in runs.items():
                    start = time.perf_counter()
                    run(x)
                    times[backend].append(time.perf_counter() - start)
                    x.grad = None
            for backend in runs:
                values = sorted(times[backend])
                results[backend] = values[len(values) // 2] * 1e3
            rows.append({"layer": name, "kind": kind, "batch": input_shape[0], "density": density, "threads": threads,
                         "numerics": numerics.active(),
                         "ms": results, "ratio": {b: results[b] / results["dense-masked"] for b in results},
                         "max_rel_error": check, "within_rounding_bound": within})
            print(f"  {threads} thread(s) {name} density {density:g}: "
                  + ", ".join(f"{b} {results[b]:.3f} ms ({results[b] / results['dense-masked']:.2f}x)" for b in results),
                  file=sys.stderr, flush=True)
    return rows


def whole_step(threads: int, densities: list[float], repeats: int) -> list[dict]:
    """The default suite's compressed-phase step end to end (LeNet-300-100, batch 256: forward,
    backward, SGD with momentum and weight decay, masks): fc1 as masked dense against fc1 as
    ``sparseprop.SparseLinear`` (the one layer and density where the kernel table shows a gain),
    fc2/fc3 masked dense in both; interleaved rounds, medians in ms."""
    import torch
    import torch.nn.functional as F
    from sparseprop.modules import SparseLinear

    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 784, generator=generator)
    y = torch.randint(0, 10, (256,), generator=generator)
    rows = []
    for density in densities:
        pruned = [_pruned(shape, density, generator) for shape in [(300, 784), (100, 300), (10, 100)]]
        biases = [torch.zeros(shape[0]) for shape in [(300, 784), (100, 300), (10, 100)]]

        def build(sparse_fc1: bool):
            weights = [w.clone().requires_grad_() for w, _ in pruned]
            bias = [b.clone().requires_grad_() for b in biases]
            fc1 = SparseLinear(pruned[0][0].clone(), torch.nn.Parameter(biases[0].clone())) if sparse_fc1 else None
            params = ([fc1.W_val, fc1.bias] if fc1 is not None else [weights[0], bias[0]]) + weights[1:] + bias[1:]
            optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
            masks = [m.float() for _, m in pruned]  # as MaskSet multiplies: same dtype (a bool mask takes a slow cast)

            def step():
                h = fc1(x) if fc1 is not None else F.linear(x, weights[0], bias[0])
                h = F.linear(F.relu(h), weights[1], bias[1])
                loss = F.cross_entropy(F.linear(F.relu(h), weights[2], bias[2]), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                with torch.no_grad():
                    first = 0 if fc1 is None else 1
                    for weight, mask in list(zip(weights, masks))[first:]:
                        weight.grad.mul_(mask)
                    optimizer.step()
                    for weight, mask in list(zip(weights, masks))[first:]:
                        weight.mul_(mask)
            return step

        steps = {"dense-masked": build(False), "sparseprop fc1": build(True)}
        times = {name: [] for name in steps}
        for step in steps.values():
            step()
        for _ in range(repeats):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - start)
        ms = {name: sorted(v)[len(v) // 2] * 1e3 for name, v in times.items()}
        rows.append({"density": density, "threads": threads, "ms": ms,
                     "ratio": ms["sparseprop fc1"] / ms["dense-masked"]})
        print(f"  {threads} thread(s) whole step density {density:g}: " +
              ", ".join(f"{k} {v:.3f} ms" for k, v in ms.items()), file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------- the table


def markdown(rows: list[dict]) -> str:
    lines = ["| numerics | layer | batch | density | threads | dense-masked ms | CSR ms (x) | sparseprop ms (x) "
             "| fixed-order ms (x) | max rel. error |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        def cell(backend):
            if backend not in row["ms"]:
                return "n/a"
            return f"{row['ms'][backend]:.3f} ({row['ratio'][backend]:.2f}x)"
        error = max((v for k, v in row["max_rel_error"].items() if k != "dense-masked"), default=0.0)
        lines.append(f"| {row.get('numerics', '?')} | {row['layer']} | {row['batch']} | {row['density']:g} | "
                     f"{row['threads']} | {row['ms']['dense-masked']:.3f} | {cell('csr')} | {cell('sparseprop')} | "
                     f"{cell('fixed-order')} | {error:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numerics", nargs="+", default=["native", "portable"], choices=["native", "portable"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--densities", type=float, nargs="+", default=[0.1, 0.05])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--layers", nargs="*", help="only layers whose name contains one of these")
    parser.add_argument("--out", default=".benchmarks/sparse_kernels.json")
    parser.add_argument("--whole-step", action="store_true",
                        help="time the default suite's whole compressed-phase step, fc1 dense-masked vs sparseprop")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        work = whole_step(args.worker, args.densities, args.repeats) if args.whole_step else \
            worker(args.worker, args.densities, args.repeats, args.layers)
        json.dump(work, sys.stdout)
        return 0
    from acdc_bench import numerics

    rows = []
    for mode, threads in [(mode, threads) for mode in args.numerics for threads in args.threads]:
        if mode == "portable" and (threads > 1 or args.whole_step):
            continue  # portable runs train on one thread; the whole step compares sparseprop (native)
        env = {k: v for k, v in os.environ.items() if k not in numerics.PORTABLE_ENV}
        if mode == "portable":
            env.update(numerics.pinned_environment())
        env.update(OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE")
        command = [sys.executable, __file__, "--worker", str(threads), "--repeats", str(args.repeats),
                   "--densities", *map(str, args.densities)]
        if args.layers:
            command += ["--layers", *args.layers]
        if args.whole_step:
            command.append("--whole-step")
        print(f"timing under {mode} numerics with {threads} thread(s) ...", file=sys.stderr, flush=True)
        done = subprocess.run(command, env=env, check=True, stdout=subprocess.PIPE, text=True)
        rows += json.loads(done.stdout)
    from _harness import machine as machine_facts

    facts = machine_facts()
    machine = f"{facts['cpu']}, {facts['cores']} cores, torch {facts['torch']}"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    tmp.replace(out)
    print(f"machine: {machine}; medians of {args.repeats} interleaved rounds, forward + backward")
    if args.whole_step:
        print("| density | threads | step, fc1 dense-masked ms | step, fc1 sparseprop ms | ratio |\n|---|---|---|---|---|")
        for row in rows:
            print(f"| {row['density']:g} | {row['threads']} | {row['ms']['dense-masked']:.3f} | "
                  f"{row['ms']['sparseprop fc1']:.3f} | {row['ratio']:.2f}x |")
    else:
        print(markdown(rows))
    print(f"saved: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
