"""The training loop: AC/DC behaviour, exact FLOP metering, run folders, kill-and-resume equality."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from acdc_bench.methods.acdc import ACDC
from acdc_bench.cli import main
from acdc_bench.config import load_suite, run_config
from acdc_bench.core.flops import measure_layer_flops
from acdc_bench.core.io import load_checkpoint
from acdc_bench.methods import make_config
from acdc_bench.core.sparsity import prunable_layers
from acdc_bench.run.loop import train

from helpers import needs_fashion

# A short AC/DC: dense 0, sparse 1, dense 2, sparse 3 (4 epochs, 1-epoch phases).
SHORT = ["train_subset=3000", "methods.acdc.schedule_epochs=4", "methods.acdc.warmup_epochs=1",
         "methods.acdc.phase_epochs=1", "methods.acdc.final_dense_epochs=1", "methods.acdc.final_sparse_epochs=1"]


def tiny_acdc(sparsity=0.8):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    layers = prunable_layers(model)
    flops = measure_layer_flops(model, layers, (20,))
    config = make_config(ACDC, dict(schedule_epochs=4, warmup_epochs=1, phase_epochs=1,
                                    final_dense_epochs=1, final_sparse_epochs=1))
    method = ACDC(config, target_sparsity=sparsity, epochs=4, steps_per_epoch=3)
    method.setup(model, layers, flops)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    method.bind_optimizer(optimizer)
    return model, layers, method, optimizer


def step(model, method, optimizer, step_index):
    method.on_step_start(step_index)
    optimizer.zero_grad()
    model(torch.randn(8, 20)).pow(2).mean().backward()
    if method.before_optimizer_step(step_index):
        optimizer.step()
    method.after_optimizer_step(step_index)


def test_acdc_phases_masks_and_momentum():
    model, layers, method, optimizer = tiny_acdc()
    assert method.phases == ["dense", "sparse", "dense", "sparse"]
    total = sum(layer.numel for layer in layers)
    method.on_epoch_start(0)
    for i in range(3):
        step(model, method, optimizer, i)
    assert all(m.all() for m in method.masks.masks)

    method.on_epoch_start(1)  # compressed: one-shot global top-k, nothing else reset
    momentum = [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    assert sum(int((layer.weight != 0).sum()) for layer in layers) == total - round(0.8 * total)
    assert all(torch.equal(optimizer.state[p]["momentum_buffer"], m) for p, m in zip(model.parameters(), momentum))
    for i in range(3, 6):
        step(model, method, optimizer, i)
        for layer, mask in zip(layers, method.masks.masks):
            assert torch.all(layer.weight[~mask] == 0) and torch.all(layer.weight.grad[~mask] == 0)
    pruned = [~m.clone() for m in method.masks.masks]

    method.on_epoch_start(2)  # decompressed: masks ones, momentum zero, pruned weights restart at zero
    assert all(m.all() for m in method.masks.masks)
    assert all(torch.count_nonzero(optimizer.state[p]["momentum_buffer"]) == 0 for p in model.parameters())
    assert all(torch.all(layer.weight[p] == 0) for layer, p in zip(layers, pruned))
    step(model, method, optimizer, 6)
    assert any(torch.any(layer.weight[p] != 0) for layer, p in zip(layers, pruned))  # they train again
    assert method.step_training_flops(6) == 3 * method.flops.dense_forward

    method.on_epoch_start(3)
    assert method.on_epoch_end(3)["mask_overlap"] is not None
    _, _, resumed, _ = tiny_acdc()  # a resume within the epoch reports the same overlap at its end
    resumed.load_state_dict(method.state_dict())
    assert resumed.on_epoch_end(3) == method.on_epoch_end(3)
    assert method.step_training_flops(9) == 3 * method.flops.sparse_forward(method.masks.nonzeros)
    assert method.dense_pair_epoch() == 2


def short_config(method="acdc", sparsity=0.8, overrides=(), epochs=4):
    return run_config(load_suite("fashion-mnist", list(SHORT) + list(overrides)), method, sparsity, epochs=epochs)


@needs_fashion
def test_meter_matches_flops_recomputed_from_masks_at_every_step(tmp_path, monkeypatch):
    recomputed = []
    original = ACDC.after_optimizer_step

    def recording(self, step_index):
        original(self, step_index)
        per_weight = self.flops.per_weight
        in_force = [int(m.sum()) if self.masking else m.numel() for m in self.masks.masks]
        recomputed.append(3 * sum(n * w for n, w in zip(in_force, per_weight)))

    monkeypatch.setattr(ACDC, "after_optimizer_step", recording)
    config = short_config()
    result = train(config, tmp_path, progress=False, log=lambda *_: None)
    sizes = [256] * (3000 // 256) + [3000 % 256]
    expected = sum(r * sizes[i % len(sizes)] for i, r in enumerate(recomputed))
    assert len(recomputed) == 4 * len(sizes)
    assert result["training_flops"] == expected
    rows = list(csv.DictReader(open(tmp_path / config.run_id / "metrics.csv")))
    assert [r["phase"] for r in rows] == ["dense", "sparse", "dense", "sparse"]
    assert int(rows[-1]["training_flops"]) == expected
    dense_per_epoch = 3 * 532_400 * 3000
    assert result["dense_training_flops"] == 4 * dense_per_epoch
    assert result["training_flops_multiplier"] == pytest.approx(expected / (4 * dense_per_epoch))


@needs_fashion
def test_run_folder_contents_and_finished_run_is_reported(tmp_path, capsys):
    args = ["run", "--suite", "fashion-mnist", "--method", "acdc", "--sparsity", "0.8", "--epochs", "4",
            "--out", str(tmp_path), "--no-progress"] + [f"--set={o}" for o in SHORT]
    assert main(args) == 0
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert {"config.yaml", "metrics.csv", "result.json", "model_final.pt", "model_dense.pt"} <= {p.name for p in run_dir.iterdir()}
    result = json.loads((run_dir / "result.json").read_text())
    required = {"suite", "method", "target_sparsity", "actual_sparsity", "layer_densities", "top1", "top1_dense",
                "training_flops", "training_flops_multiplier", "inference_flops_multiplier", "epochs", "seed",
                "wall_time_s", "versions"}
    assert required <= set(result)
    assert result["actual_sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert result["top1_dense"] is not None and result["dense_pair_epoch"] == 2
    state = load_checkpoint(run_dir / "model_final.pt")
    zeros = sum(int((state[k] == 0).sum()) for k in ("1.weight", "3.weight", "5.weight"))
    assert zeros / 266_200 == pytest.approx(result["actual_sparsity"], abs=1e-9)
    before = (run_dir / "result.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0
    assert "finished already" in capsys.readouterr().out
    assert (run_dir / "result.json").stat().st_mtime_ns == before
    # a broken config is an error and leaves the finished run untouched
    assert main(args + ["--set", "epoch=3"]) == 2
    assert (run_dir / "result.json").stat().st_mtime_ns == before


def _cli(out, extra=()):
    return [sys.executable, "-m", "acdc_bench", "run", "--suite", "fashion-mnist", "--method", "acdc",
            "--sparsity", "0.8", "--epochs", "4", "--out", str(out), "--no-progress",
            *[f"--set={o}" for o in SHORT], "--set=num_workers=0", *extra]


def _metrics_without_time(run_dir):
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    for row in rows:
        row.pop("wall_time_s")
    return rows


@needs_fashion
def test_sigkill_and_resume_ends_with_identical_weights_and_metrics(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_cli(straight), check=True, env=env, capture_output=True)
    process = subprocess.Popen(_cli(killed), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        # the checkpoint is written just before metrics.csv: wait for both
        runs = [p for p in killed.glob("*") if (p / "checkpoint.pt").exists() and (p / "metrics.csv").exists()]
        if runs and len(_metrics_without_time(runs[0])) >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    (run_dir,) = [p for p in killed.iterdir() if p.is_dir()]
    assert not (run_dir / "result.json").exists(), "the run finished before it could be killed"
    resumed = subprocess.run(_cli(killed), check=True, env=env, capture_output=True, text=True)
    assert "resuming from epoch" in resumed.stdout
    (reference_dir,) = [p for p in straight.iterdir() if p.is_dir()]
    assert run_dir.name == reference_dir.name
    a, b = load_checkpoint(reference_dir / "model_final.pt"), load_checkpoint(run_dir / "model_final.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _metrics_without_time(reference_dir) == _metrics_without_time(run_dir)
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (reference_dir, run_dir))
    for key in ("top1", "top1_dense", "actual_sparsity", "training_flops", "layer_densities"):
        assert ra[key] == rb[key]


@needs_fashion
@pytest.mark.slow
def test_fashion_mnist_acdc_hits_target_at_about_half_the_dense_flops(tmp_path):
    suite = load_suite("fashion-mnist-10")  # the default reproduction's 10 epochs on the whole data
    acdc = train(run_config(suite, "acdc", 0.9), tmp_path, progress=False, log=lambda *_: None)
    assert abs(acdc["actual_sparsity"] - 0.9) < 0.001
    assert acdc["top1_dense"] is not None and acdc["top1"] > 80
    assert (tmp_path / acdc["run_id"] / "model_dense.pt").exists()
    assert 0.5 < acdc["training_flops_multiplier"] < 0.6


@needs_fashion
@pytest.mark.slow
def test_fashion_mnist_dense_reaches_88(tmp_path):
    dense = train(run_config(load_suite("fashion-mnist-10"), "dense", 0.0), tmp_path, progress=False,
                  log=lambda *_: None)
    assert dense["top1"] >= 88.0
    assert dense["training_flops_multiplier"] == pytest.approx(1.0, abs=1e-9)
