"""Compiled against eager training steps, paired, for a method attached through ``sparsify``.

    python benchmarks/compile_steps.py [--method acdc] [--rounds 60] [--threads 1] [--backend inductor] [--short]

Two models: LeNet-300-100 (batch 256, 28x28 inputs) and a small transformer (a BERT built from a
config: 4 layers, hidden 256, 4 heads, sequence 128, batch 8). For each, an eager copy and a
``torch.compile`` copy (inductor) of the same initial model train side by side on the same
batches, each with its own sparsifier; after the warm-up (compilation) the two take turns, one
step each per round, and the script prints each one's median ms a step and the median of the
per-round ratios (compiled / eager). Under portable numerics unless ``ACDC_BENCH_NUMERICS=native``
(the process pins the math libraries before torch starts).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from acdc_bench import numerics  # noqa: E402  (imports no torch)

numerics.ensure(numerics.default_mode(), reexec=True)

import torch  # noqa: E402
from torch import nn  # noqa: E402

import acdc_bench  # noqa: E402


def lenet(batch: int):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                          nn.Linear(100, 10))

    def data():
        return (torch.randn(batch, 1, 28, 28),), {}, torch.randint(0, 10, (batch,))

    return model, data, lambda out, y: nn.functional.cross_entropy(out, y)


def transformer(batch: int, length: int = 128):
    import transformers

    config = transformers.BertConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                     intermediate_size=1024, max_position_embeddings=length, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    model.config.return_dict = False

    def data():
        ids = torch.randint(0, 1000, (batch, length))
        return (), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, torch.randint(0, 2, (batch,))

    return model, data, lambda out, y: nn.functional.cross_entropy(out[0], y)


def pair(name: str, build, method: str, rounds: int, warmup: int, backend: str) -> dict:
    torch.manual_seed(0)
    base, data, loss_fn = build
    runs = {}
    for kind in ("eager", "compiled"):
        model = copy.deepcopy(base)
        sparsifier = acdc_bench.sparsify(model, method, sparsity=0.9 if method != "dense" else 0.0,
                                         total_steps=warmup + rounds, steps_per_epoch=1, batch_size=1,
                                         **({"lam": 1e-4, "s_init": -5.0} if method == "str" else {}))
        optimizer = sparsifier.wrap(torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9))
        runs[kind] = (torch.compile(model, backend=backend) if kind == "compiled" else model, optimizer, [])

    def step(kind, batch):
        model, optimizer, times = runs[kind]
        args, kwargs, y = batch
        started = time.perf_counter()
        optimizer.zero_grad()
        loss_fn(model(*args, **kwargs), y).backward()
        optimizer.step()
        return time.perf_counter() - started

    compile_started = time.perf_counter()
    for _ in range(warmup):
        batch = data()
        step("eager", batch)
        step("compiled", batch)
    compile_s = time.perf_counter() - compile_started
    ratios = []
    for number in range(rounds):
        batch = data()
        order = ("eager", "compiled") if number % 2 == 0 else ("compiled", "eager")
        took = {kind: step(kind, batch) for kind in order}
        for kind in took:
            runs[kind][2].append(took[kind])
        ratios.append(took["compiled"] / took["eager"])
    eager, compiled = (statistics.median(runs[k][2]) * 1e3 for k in ("eager", "compiled"))
    return {"model": name, "method": method, "eager_ms": eager, "compiled_ms": compiled,
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "warmup_s": compile_s, "rounds": rounds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="acdc", help="the method attached to both copies (default: acdc)")
    parser.add_argument("--rounds", type=int, default=60, help="paired rounds after the warm-up (default: 60)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default: inductor)")
    parser.add_argument("--short", action="store_true", help="8 rounds on small shapes: a smoke run for the tests")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rounds, warmup = (8, 2) if args.short else (args.rounds, 5)
    cases = [("lenet-300-100, batch 256", lenet(16 if args.short else 256))]
    try:
        cases.append(("bert 4x256, seq 128, batch 8", transformer(2 if args.short else 8, 16 if args.short else 128)))
    except ImportError:
        print("transformers is not installed: the transformer case is skipped (pip install 'acdc-bench[hf]')")
    print(f"{numerics.cpu_model()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"{numerics.active()} numerics, method {args.method}, backend {args.backend}")
    print("| model | eager ms | compiled ms | compiled / eager (median, min-max) | warm-up s |")
    print("|---|---|---|---|---|")
    for name, build in cases:
        r = pair(name, build, args.method, rounds, warmup, args.backend)
        print(f"| {r['model']} | {r['eager_ms']:.2f} | {r['compiled_ms']:.2f} | {r['ratio']:.3f} "
              f"({r['ratio_min']:.3f}-{r['ratio_max']:.3f}) | {r['warmup_s']:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
