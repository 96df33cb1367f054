"""Run folders written by hand for the report tests: a config, a result.json, a metrics.csv, in the
formats ``acdc_bench.run.folder`` defines (shared by tests/unit/report/)."""

import json
import math
from pathlib import Path

import pandas as pd
import yaml

SUITE = "smoke"
EPOCHS = 6
# (method, seed) -> top-1 of the finished runs at 90% sparsity.
TOP1 = {("acdc", 0): 88.0, ("acdc", 1): 89.0, ("gmp", 0): 86.0, ("gmp", 1): 86.5}


#: The recipe each method runs in the ImageNet suites (the protocol a published row is compared on).
RECIPES = {"acdc": ("acdc", 0.0, 256), "dense": ("acdc", 0.0, 256), "gmp": ("gale", 0.1, 256),
           "rigl": ("rigl", 0.1, 256), "str": ("str", 0.1, 256), "set": ("rigl", 0.1, 256)}


def _config(method: str, seed: int, sparsity: float = 0.9, dataset: str = "fashion-mnist",
            model: str = "lenet-300-100") -> dict:
    family, smoothing, batch = RECIPES[method]
    return {"suite": SUITE, "dataset": dataset, "model": model, "method": method,
            "sparsity": sparsity, "seed": seed, "epochs": EPOCHS, "suite_epochs": EPOCHS,
            "recipe": {"family": family, "label_smoothing": smoothing, "batch_size": batch}}


def _metrics(method: str) -> pd.DataFrame:
    """Six epochs; AC/DC alternates dense (0-1), sparse (2-3), dense (4), sparse (5)."""
    phases = ["dense", "dense", "sparse", "sparse", "dense", "sparse"] if method == "acdc" else \
        ["dense", "sparse", "sparse", "sparse", "sparse", "sparse"]
    sparsity = [0.9 if phase == "sparse" else 0.0 for phase in phases]
    per_epoch_flops = [3e9 * (1 - 0.8 * value) for value in sparsity]
    overlap = [math.nan] * EPOCHS
    if method == "acdc":
        overlap[5] = 0.83
    return pd.DataFrame({
        "epoch": range(EPOCHS), "phase": phases, "lr": 0.1, "train_loss": 0.5, "train_top1": 80.0,
        "test_loss": 0.4, "top1": 85.0, "sparsity": sparsity,
        "training_flops": pd.Series(per_epoch_flops).cumsum(), "mask_overlap": overlap,
        "wall_time_s": [10.0 * (epoch + 1) for epoch in range(EPOCHS)],
    })


def _result(method: str, seed: int, top1: float, *, dataset: str = "fashion-mnist",
            model: str = "lenet-300-100", sparsity: float = 0.9) -> dict:
    return {
        "schema_version": 1, "run_id": f"{method}-s{sparsity}-seed{seed}", "suite": SUITE, "dataset": dataset,
        "model": model, "method": method, "variant": "", "distribution": "global",
        "target_sparsity": sparsity, "actual_sparsity": sparsity - 0.0001,
        "layer_densities": {"fc1.weight": 0.08, "fc2.weight": 0.15}, "top1": top1, "top1_best": top1,
        "best_epoch": EPOCHS - 1, "top1_dense": 89.5,
        "training_flops": 1.0e10, "dense_training_flops": 1.8e10, "training_flops_multiplier": 0.55,
        "inference_flops": 1.0e5, "dense_inference_flops": 5.3e5, "inference_flops_multiplier": 0.19,
        "epochs": EPOCHS, "seed": seed,
        "budget": {"mode": "paper", "reference_training_flops": None, "achieved_ratio": None},
        "wall_time_s": 60.0, "versions": {"torch": "2.x", "acdc_bench": "0.1"},
    }


def _write_run(root: Path, name: str, config: dict, *, result=None, metrics: pd.DataFrame | None = None,
               checkpoint: bool = False) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    if metrics is None and isinstance(result, dict):  # a finished run has its epochs' rows
        metrics = _metrics(config["method"])
    if metrics is not None:
        metrics.to_csv(run_dir / "metrics.csv", index=False)
    if checkpoint:
        (run_dir / "checkpoint.pt").write_bytes(b"\0")
        (run_dir / "RUNNING").touch()
    if isinstance(result, dict):
        (run_dir / "result.json").write_text(json.dumps(result))
    elif isinstance(result, str):
        (run_dir / "result.json").write_text(result)
    return run_dir


def _write_seeds(root: Path, method: str, top1_by_seed: dict[int, float], sparsity: float = 0.9, **where) -> None:
    for seed, top1 in top1_by_seed.items():
        _write_run(root, f"{method}-s{sparsity}-seed{seed}", _config(method, seed, sparsity, **where),
                   result=_result(method, seed, top1, sparsity=sparsity, **where))
