"""Data-parallel training: ``torchrun --nproc-per-node 2`` runs one run on two processes with DDP (gloo).

Checks: every rank holds the same weights and masks at the end of every epoch (through the
``ACDC_BENCH_DUMP_RANK_STATE`` debug hook of ``acdc_bench.run.loop``); only rank 0 writes; the
sharded evaluation counts every test example once; the FLOP meter counts the real examples
of each global step (an odd ``train_subset`` makes the last step carry one padded example);
the result agrees with the one-process run; a SIGKILLed DDP run resumes from its checkpoint
and ends exactly where the uninterrupted DDP run ends.
"""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from acdc_bench.core.io import load_checkpoint

from helpers import FASHION, needs_fashion

pytestmark = [
    needs_fashion,
    pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                       reason="torch.distributed with gloo is not available"),
]

# 3001 (not 3000) examples: 1501 per rank, so the last global step holds 185 real examples plus
# one wrap-around duplicate, which the FLOP meter must not count.
TRAIN_SUBSET = 3001
EPOCHS = 4
# A short AC/DC: dense 0, sparse 1, dense 2, sparse 3 (4 epochs, 1-epoch phases).
SHORT = [f"train_subset={TRAIN_SUBSET}", "methods.acdc.schedule_epochs=4", "methods.acdc.warmup_epochs=1",
         "methods.acdc.phase_epochs=1", "methods.acdc.final_dense_epochs=1", "methods.acdc.final_sparse_epochs=1"]
# At this scale the two runs agree far better than this (the DDP step averages the two half-batch
# gradients, i.e. the full batch's gradient up to float rounding, and the data order is the same
# permutation), so top-1 differs by rounding noise amplified over 48 steps: typically < 0.5 points.
# 3 points leaves room for a different BLAS/thread count without hiding a real bug (e.g. a rank
# training on the whole data set or on the wrong shard, an lr rescaled by N, masks out of sync).
TOP1_TOLERANCE = 3.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_args(out: Path) -> list[str]:
    return ["run", "--suite", "fashion-mnist", "--method", "acdc", "--sparsity", "0.9", "--epochs", str(EPOCHS),
            "--out", str(out), "--no-progress", *[f"--set={o}" for o in SHORT]]


def _torchrun(out: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(_free_port()), "-m", "acdc_bench", *_run_args(out)]


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _run_dir(out: Path) -> Path:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


def _metrics_without_time(run_dir: Path) -> list[dict]:
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    for row in rows:
        row.pop("wall_time_s")
    return rows


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same short AC/DC run on 2 processes (DDP, with the rank-state dumps) and on 1 process."""
    root = tmp_path_factory.mktemp("ddp")
    dumps = root / "dumps"
    ddp = subprocess.run(_torchrun(root / "ddp"), env=_env(ACDC_BENCH_DUMP_RANK_STATE=str(dumps)),
                         capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stdout + ddp.stderr
    # the one-process run through the same command line, in this process (one thread, like the workers)
    from acdc_bench.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_run_args(root / "single")) == 0
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "dumps": dumps, "ddp": _run_dir(root / "ddp"), "single": _run_dir(root / "single"),
            "ddp_stdout": ddp.stdout}


def _assert_same_state(a: dict, b: dict, where: str) -> None:
    assert a.keys() == b.keys(), where
    for key in a:
        if isinstance(a[key], dict):
            _assert_same_state(a[key], b[key], f"{where}.{key}")
        elif isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), f"{where}.{key} differs between ranks"
        elif isinstance(a[key], (list, tuple)) and a[key] and isinstance(a[key][0], torch.Tensor):
            assert all(torch.equal(x, y) for x, y in zip(a[key], b[key])), f"{where}.{key} differs between ranks"
        else:
            assert a[key] == b[key], f"{where}.{key}: {a[key]!r} != {b[key]!r}"


def test_ranks_hold_identical_weights_and_masks_after_every_epoch(runs):
    dumps = runs["dumps"]
    names = [f"-epoch{e}" for e in range(EPOCHS)] + [""]
    for name in names:
        rank0 = load_checkpoint(dumps / f"rank0{name}.pt")
        rank1 = load_checkpoint(dumps / f"rank1{name}.pt")
        _assert_same_state(rank0["model"], rank1["model"], f"model{name}")
        _assert_same_state(rank0["method"], rank1["method"], f"method{name}")
        masks = rank0["method"]["masks"]
        kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
        phase = ["dense", "sparse", "dense", "sparse", "sparse"][names.index(name)]
        assert kept == (1.0 if phase == "dense" else pytest.approx(0.1, abs=1e-5)), name
        if name:  # the per-epoch metrics are global (all-reduced), the same on both ranks
            assert rank0["row"] == {**rank1["row"], "wall_time_s": rank0["row"]["wall_time_s"]}
        else:
            assert rank0["result"] == rank1["result"]
    # the model of the last dump is the one rank 0 wrote
    final = load_checkpoint(runs["ddp"] / "model_final.pt")
    _assert_same_state(final, load_checkpoint(dumps / "rank1.pt")["model"], "model_final")


def test_ddp_result_matches_one_process_run_and_counts_real_examples(runs):
    ddp = json.loads((runs["ddp"] / "result.json").read_text())
    single = json.loads((runs["single"] / "result.json").read_text())
    assert ddp["run_id"] == single["run_id"]  # the same run, whatever the number of processes
    assert (ddp["world_size"], single["world_size"]) == (2, 1)
    assert ddp["actual_sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert abs(ddp["top1"] - single["top1"]) <= TOP1_TOLERANCE, (ddp["top1"], single["top1"])
    # 12 global steps per epoch (batch 256 is global, never rescaled), the real 3001 examples each epoch
    assert ddp["steps"] == single["steps"] == EPOCHS * 12
    assert ddp["examples_seen"] == single["examples_seen"] == EPOCHS * TRAIN_SUBSET
    # LeNet's layers all cost 2 FLOPs per weight, and both runs keep exactly 10% of the weights in
    # their compressed phases, so even the sparse epochs' FLOPs agree exactly
    assert ddp["training_flops"] == single["training_flops"]
    assert ddp["training_flops_multiplier"] == pytest.approx(single["training_flops_multiplier"], rel=1e-12)
    # same lr schedule on both (never rescaled with the number of processes)
    lrs = [[row["lr"] for row in _metrics_without_time(runs[k])] for k in ("ddp", "single")]
    assert lrs[0] == lrs[1]


def test_only_rank_zero_writes_and_logs(runs):
    names = {p.name for p in runs["ddp"].iterdir()}
    assert names == {"config.yaml", "metrics.csv", "result.json", "model_final.pt", "model_dense.pt", "predictions.npz",
                     ".lock"}
    for epoch in range(1, EPOCHS + 1):
        assert runs["ddp_stdout"].count(f"epoch {epoch}/{EPOCHS} ") == 1
    assert runs["ddp_stdout"].count(" done: top-1") == 1


def test_sharded_evaluation_counts_every_test_example_once(runs):
    from acdc_bench.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD, read_idx
    from acdc_bench.models import build_model

    root = Path(os.environ.get("ACDC_BENCH_DATA", FASHION))
    root = root / "fashion-mnist" if (root / "fashion-mnist").is_dir() else root
    images = read_idx(root / "t10k-images-idx3-ubyte.gz", 3).unsqueeze(1).float().div(255)
    labels = read_idx(root / "t10k-labels-idx1-ubyte.gz", 1).long()
    model = build_model("lenet-300-100", 10).eval()
    model.load_state_dict(load_checkpoint(runs["ddp"] / "model_final.pt"))
    with torch.no_grad():
        correct = int((model((images - FASHION_MNIST_MEAN) / FASHION_MNIST_STD).argmax(1) == labels).sum())
    ddp = json.loads((runs["ddp"] / "result.json").read_text())
    # the two ranks evaluated disjoint halves and summed their counts (a rank's half alone would be
    # off by about half a point); one example of slack for a batch-size-dependent rounding tie
    assert ddp["top1"] == pytest.approx(100.0 * correct / len(labels), abs=0.0101)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find torchrun's workers")
def test_ddp_run_killed_after_a_checkpoint_resumes_to_the_same_end(runs):
    out = runs["root"] / "killed"
    process = subprocess.Popen(_torchrun(out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None:
            run_dirs = [p for p in out.glob("*") if (p / "checkpoint.pt").exists() and (p / "metrics.csv").exists()]
            if run_dirs and len(_metrics_without_time(run_dirs[0])) >= 2:
                break
            time.sleep(0.02)
    finally:
        # the whole job dies at once, as on a preempted node: torchrun and its workers (which
        # torchrun starts in sessions of their own)
        victims = _descendants(process.pid) + [process.pid]
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait()
    run_dir = _run_dir(out)
    assert not (run_dir / "result.json").exists(), "the run finished before it could be killed"
    assert len(_metrics_without_time(run_dir)) >= 2
    resumed = subprocess.run(_torchrun(out), env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming from epoch" in resumed.stdout
    assert resumed.stdout.count("resuming from epoch") == 1  # logged by rank 0 only
    # bit-identical to the uninterrupted DDP run: per-(seed, epoch, rank) RNG, the same shards,
    # and a two-rank all-reduce does not depend on the bucket order
    straight = runs["ddp"]
    a, b = load_checkpoint(straight / "model_final.pt"), load_checkpoint(run_dir / "model_final.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _metrics_without_time(straight) == _metrics_without_time(run_dir)
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (straight, run_dir))
    for key in ("top1", "top1_dense", "actual_sparsity", "training_flops", "examples_seen", "layer_densities"):
        assert ra[key] == rb[key], key
