"""The paper suites: their cells (``reproduce.variants``), the dry run, and every method of every
suite trained end to end on CPU (real models, test-made data in the real formats, a few steps)."""

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from acdc_bench.budget.matching import spec_config
from acdc_bench.config.cells import suite_cells, variant_length
from acdc_bench.cli import main
from acdc_bench.config import ConfigError, load_suite, run_config
from acdc_bench.report.protocol import run_protocol
from acdc_bench.core.sparsity import nm_group_nonzeros
from acdc_bench.report.compare import match_published, protocol_differences
from acdc_bench.report.dryrun import format_dry_run
from acdc_bench.report.results import load_reference
from acdc_bench.run.launch import RunSpec, plan_runs
from plan_check import assert_plan_matches_run
from data_files import rgb, write_cifar100
from helpers import ROOT

PAPER_SUITES = ("imagenet-resnet50", "imagenet-mobilenetv1", "cifar100-wrn28-10")
METHODS = ("dense", "acdc", "gmp", "rigl", "str")


def _specs(waves):
    return [spec for wave in waves for spec in wave]


# --------------------------------------------------------------------------- cells and planning


@pytest.mark.parametrize("name", PAPER_SUITES)
def test_every_cell_matches_the_published_row_it_names(name):
    """Each cell's runs record its variant and length and are compared by compare with the row the cell
    names, of the same protocol and, where the row names its official configuration, one the cell
    runs; a cell naming none is compared with no row (one of another protocol may be shown beside it)."""
    suite, reference = load_suite(name), load_reference()
    for spec in _specs(plan_runs(suite)):
        cell = next(c for c in suite_cells(suite) if c["cell"] == spec.cell)
        config = spec_config(suite, spec, None)
        assert config.variant == cell["tag"]
        assert config.epochs / config.suite_epochs == pytest.approx(variant_length(cell["tag"])), spec.cell
        distribution = config.distribution
        protocol = run_protocol(config)
        match = match_published(reference, dataset=config.dataset, model=config.model, method=spec.method,
                                target_sparsity=spec.sparsity, variant=config.variant, distribution=distribution,
                                protocol=protocol)
        if match is not None and protocol_differences(protocol, match):
            match = None  # shown beside the run, never compared
        expected = cell["published"]
        if expected is None:
            assert match is None, (spec.cell, spec.sparsity, match is not None and match["source_id"])
            continue
        assert match is not None, (spec.cell, spec.sparsity)
        if match["config"]:  # a row that names its configuration pairs only with a cell that runs it
            assert f"{match['repository']} {match['config']}" in cell["official"], (spec.cell, spec.sparsity, match["config"])
        got = {key: (match[key] if isinstance(match[key], str) else "") for key in ("source_id", "variant", "distribution")}
        assert got == {key: expected.get(key, got[key]) for key in got}, (spec.cell, spec.sparsity)


def test_resnet50_cells_carry_their_options_into_the_runs():
    suite = load_suite("imagenet-resnet50")
    specs = {(s.cell, s.sparsity): s for s in _specs(plan_runs(suite))}
    rigl = spec_config(suite, specs[("rigl-5x-uniform", 0.9)], None)
    assert (rigl.epochs, rigl.suite_epochs, rigl.variant) == (500, 100, "5x uniform")
    assert rigl.method_config.distribution == "uniform" and rigl.method_config.keep_dense == ["conv1"]
    assert rigl.label_smoothing == 0.1 and rigl.recipe_source == "methods.rigl.recipe"
    twice = spec_config(suite, specs[("acdc-2x-uniform", 0.95)], None)
    assert (twice.epochs, twice.method_config.schedule_epochs, twice.method_config.keep_dense) == (
        200, 200, ["conv1", "fc"])
    gmp = spec_config(suite, specs[("gmp-1.5x", 0.95)], None)
    assert (gmp.epochs, gmp.label_smoothing, gmp.method_config.keep_dense) == (150, 0.0, ["conv1"])
    nm = spec_config(suite, specs[("acdc-2:4", 0.5)], None)
    assert nm.method_config.pattern == "2:4" and nm.variant == "2:4"
    # a cell without options or tag resolves exactly as the plain run does (same run id)
    assert spec_config(suite, specs[("acdc", 0.9)], None).run_id == run_config(suite, "acdc", 0.9).run_id
    assert spec_config(suite, specs[("rigl-1x", 0.8)], None).run_id == run_config(suite, "rigl", 0.8).run_id
    # distinct cells are distinct runs
    assert len({spec_config(suite, s, None).run_id for s in specs.values()}) == len(specs)


def test_plan_filters_and_the_matched_budget():
    suite = load_suite("imagenet-resnet50")
    everything = _specs(plan_runs(suite))
    assert len(everything) >= 24 and everything[0] == RunSpec("dense", 0.0, 0, "paper", "dense")
    only = _specs(plan_runs(suite, methods=["rigl", "set"], sparsities=[0.9]))
    assert {(s.cell, s.sparsity) for s in only} == {("rigl-1x", 0.9), ("rigl-1x-uniform", 0.9), ("rigl-5x", 0.9),
                                                   ("rigl-5x-uniform", 0.9), ("set", 0.9)}
    assert [s.sparsity for s in _specs(plan_runs(suite, cells=["str-extrapolated"], seeds=[0, 1]))] == [
        0.8, 0.95, 0.965, 0.98, 0.99] * 2
    first, second = plan_runs(suite, budget="matched")
    assert {s.method for s in first} == {"dense", "acdc"} and "acdc" not in {s.method for s in second}
    assert not any(variant_length(s.variant) != 1.0 for s in first + second)  # 2x, 5x, 1.5x: left out
    with pytest.raises(ValueError, match="unknown cell"):
        plan_runs(suite, cells=["rigl-3x"])
    with pytest.raises(ValueError, match="no selected cell"):
        plan_runs(suite, methods=["acdc"], sparsities=[0.85])
    # a suite without variants plans exactly as before
    fashion = load_suite("fashion-mnist")
    assert _specs(plan_runs(fashion, methods=["dense", "acdc"], sparsities=[0.9], seeds=[0])) == [
        RunSpec("dense", 0.0, 0, fashion.budget_mode), RunSpec("acdc", 0.9, 0, fashion.budget_mode)]


@pytest.mark.parametrize("cells, words", [
    ({"cell": "a", "method": "acdc", "sparsity": [0.9]}, ["unknown key(s) ['sparsity']", "sparsities"]),
    ({"cell": "a", "method": "adcd", "sparsities": [0.9]}, ["method 'adcd' is unknown", "acdc"]),
    ({"cell": "a", "method": "acdc", "sparsities": [0.9], "options": {"presets": "x"}},
     ["cell a", "options", "'presets'", "preset"]),
    ({"cell": "a", "method": "acdc", "sparsities": [0.9], "recipe": {"lr": 0.1}}, ["recipe", "optimizer"]),
    ({"cell": "a", "method": "acdc", "sparsities": [1.5]}, ["cell a", "[0, 1)"]),
    ({"cell": "a", "method": "acdc", "sparsities": [0.9], "options": {"pattern": "2:4", "distribution": "uniform"}},
     ["cell a", "sparsity 0.5, not 0.9"]),
    ([{"cell": "a", "method": "acdc", "sparsities": [0.9]}, {"cell": "b", "method": "acdc", "sparsities": [0.9]}],
     ["cell 'a' already runs acdc", "variant tag"]),
    ([{"cell": "a", "method": "acdc", "sparsities": [0.9]}, {"cell": "a", "method": "gmp", "sparsities": [0.9]}],
     ["cell a", "unique"]),
])
def test_bad_cells_are_clear_errors(cells, words):
    suite = load_suite("imagenet-resnet50", [f"reproduce.variants={json.dumps(cells if isinstance(cells, list) else [cells])}"])
    with pytest.raises(ConfigError) as error:
        suite_cells(suite)
    message = str(error.value)
    assert "reproduce.variants" in message and all(word in message for word in words), message


@pytest.mark.slow
def test_dry_run_lists_every_resnet50_run_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["reproduce", "--suite", "imagenet-resnet50", "--dry-run", "--json", "--out", str(out)]) == 0
    listing = json.loads(capsys.readouterr().out)
    runs = listing["runs"]
    assert len(runs) >= 24 and sum(r["published"] is not None for r in runs) >= 20
    assert listing["planned"] == len(runs) and not out.exists()  # no run folder written
    keys = {"cell", "method", "variant", "distribution", "sparsity", "seed", "epochs", "run_id",
            "estimated_training_flops_multiplier", "published"}
    assert all(keys <= set(r) for r in runs)
    by_cell = {(r["cell"], r["sparsity"]): r for r in runs}
    assert by_cell[("dense", 0.0)]["estimated_training_flops_multiplier"] == pytest.approx(1.0)
    assert by_cell[("rigl-5x-uniform", 0.8)]["estimated_training_flops_multiplier"] == pytest.approx(1.14, abs=0.04)
    assert by_cell[("rigl-5x", 0.8)]["estimated_training_flops_multiplier"] == pytest.approx(2.09, abs=0.04)
    assert by_cell[("acdc-2:4", 0.5)]["published"] is None
    assert by_cell[("str", 0.9)]["published"]["source_id"] == "str-readme"
    assert by_cell[("str", 0.9)]["published"]["reported_sparsity"] == pytest.approx(0.9023)
    # STR at a target whose lambda is extrapolated: its README row shown beside it, never compared
    assert "method values extrapolated here" in by_cell[("str-extrapolated", 0.965)]["published"]["other_protocol"]
    assert by_cell[("str-extrapolated", 0.965)]["published"]["reported_sparsity"] == pytest.approx(0.9611)
    # each run's resolved recipe: STR's dense model on STR's dense weight decay, not on its lambda
    dense_str = by_cell[("dense-str", 0.0)]["recipe"]
    assert dense_str["optimizer"]["weight_decay"] == pytest.approx(3.0517578125e-05)
    assert (dense_str["init"], dense_str["label_smoothing"], dense_str["epochs"]) == ("kaiming_normal_fan_in", 0.1, 100)
    assert by_cell[("str-extrapolated", 0.8)]["recipe"]["method_options"]["unofficial"] is True
    # SET as the RigL paper's rows: uniform with the first layer dense, at their 0.23x training FLOPs
    assert by_cell[("set", 0.8)]["distribution"] == "uniform"
    assert by_cell[("set", 0.8)]["estimated_training_flops_multiplier"] == pytest.approx(0.23, abs=0.01)
    assert by_cell[("acdc-2x-uniform", 0.9)]["published"]["top1"] == pytest.approx(76.09)
    # every official AC/DC configuration and every baseline, SET included, each on its own recipe
    assert {r["cell"] for r in runs} >= {
        "dense", "dense-rigl", "dense-str", "acdc", "acdc-50", "acdc-global-no-conv1-fc", "acdc-1.5x", "acdc-ftdense",
        "acdc-1.5x-ftdense", "acdc-uniform", "acdc-2x-uniform", "acdc-2x-uniform-ftdense", "acdc-2:4", "gmp",
        "gmp-1.5x", "rigl-1x", "rigl-1x-uniform", "rigl-5x", "rigl-5x-uniform", "set", "str", "str-extrapolated"}
    assert by_cell[("gmp", 0.5)]["published"]["top1"] == pytest.approx(76.53)
    assert by_cell[("dense-rigl", 0.0)]["protocol"].startswith("rigl recipe")
    assert by_cell[("gmp", 0.95)]["protocol"] == "gale recipe, sparsity over all, label smoothing 0, 1x, batch 256"
    # a row of another protocol is shown beside a run, never compared: AC/DC's dense run beside RigL's
    assert "recipe acdc here, rigl there" in by_cell[("dense", 0.0)]["published"]["other_protocol"]
    for row in runs:  # the row compare will compare with is the one the cell names, of the same protocol
        expected = row["expected_published"]
        compared = row["published"] is not None and not row["published"]["other_protocol"]
        assert compared == (expected is not None), row["cell"]
        if expected:
            assert {k: row["published"][k] for k in expected} == expected, row["cell"]
    # The text the listing prints without --json (the same listing: planning ResNet50's 52 runs once)
    # names each published row no planned run is compared with, and why.
    text = format_dry_run(listing)
    assert "acdc-readme 75.03 (verified, unknown epoch)" in text
    assert "sgd lr 0.256 m 0.875 wd 3.05176e-05; cosine, 5-ep warm-up; ls 0.1; init kaiming_normal_fan_in" in text
    assert "published rows no planned run is compared with" in text
    assert ("rigl-readme-nolabelsmooth RigL 1x ERK 0.8: top-1 75.02 (final epoch): the planned run at this point "
            "is compared with rigl-readme instead (this row's protocol differs: label smoothing 0.1 here, 0 there)") in text
    assert "chase-readme SET - uniform (first layer dense) 0.8: top-1 72.90 (unknown epoch): shown beside a " \
           "planned run, not compared: other protocol: recipe not published" in text
    assert "chase-readme MEST - - 0.8: top-1 75.39 (unknown epoch): not reproduced here" in text


def test_dry_run_text_for_mobilenet(tmp_path, capsys):
    assert main(["reproduce", "--suite", "imagenet-mobilenetv1", "--dry-run", "--out", str(tmp_path / "r")]) == 0
    text = capsys.readouterr().out
    assert "16 planned runs, 4 compared with a published number of the same protocol" in text
    assert "acdc-readme 70.41 (verified, unknown epoch)" in text
    assert "str-readme 62.10 (verified, unknown epoch), reported sparsity 0.8901" in text
    assert "init tf-mobilenet" in text  # RigL's MobileNet initialisation
    assert not (tmp_path / "r").exists()
    assert main(["reproduce", "--suite", "imagenet-mobilenetv1", "--json"]) == 2  # --json needs --dry-run


# --------------------------------------------------------------------------- end to end on CPU

DATASETS = {"imagenet-resnet50": "imagenet", "imagenet-mobilenetv1": "imagenet", "cifar100-wrn28-10": "cifar100"}
EPOCHS = {"dense": 1, "acdc": 3, "gmp": 2, "rigl": 3, "str": 2}  # 1 step per epoch
#: --set overrides: 1 example, batch 1 (BatchNorm still sees 7x7 or 8x8 maps), AC/DC dense-free 3-epoch
#: schedule (sparse, dense, sparse), GMP pruning from step 0 to 1, a RigL update at step 1 (grown weights
#: start at 0: step 2 trains them).
TINY = ["train_subset=1", "num_workers=0", "batch_size=1", "methods.acdc.preset=null",
        "methods.acdc.schedule_epochs=3", "methods.acdc.warmup_epochs=0", "methods.acdc.phase_epochs=1",
        "methods.acdc.final_dense_epochs=1", "methods.acdc.final_sparse_epochs=1",
        "methods.gmp.start_fraction=0.0", "methods.gmp.end_fraction=0.5", "methods.gmp.targets={}",
        "methods.rigl.update_interval_examples=null", "methods.rigl.update_interval=1",
        # STR's official lam/s_init are written for 100 epochs: its end-of-run sparsity check is opened
        "budget.calibration.sparsity_tolerance=0.95"]


@pytest.fixture
def small_imagenet_root(tmp_path, sample_images) -> Path:
    """train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (test_data.py's layout), one image per class and split."""
    from PIL import Image

    images = rgb(sample_images[0][:4], 96).permute(0, 2, 3, 1).numpy()
    for index, (split, wnid) in enumerate((s, w) for s in ("train", "val") for w in ("n01440764", "n01443537")):
        folder = tmp_path / split / wnid
        folder.mkdir(parents=True)
        Image.fromarray(images[index]).save(folder / f"{wnid}_{index}.JPEG", quality=90)
    return tmp_path


@pytest.fixture
def small_cifar_root(tmp_path, sample_images) -> Path:
    """cifar-100-python/{train,test,meta} in the real pickle format (test_data.py's writer), 2 training
    images and 1 test image (the WideResNet evaluates every epoch)."""
    images, labels = sample_images
    pixels = rgb(images[:3], 32).reshape(3, 3072).numpy()
    return write_cifar100(tmp_path, pixels, labels, {"train": slice(0, 2), "test": slice(2, 3)})


@pytest.fixture
def run_root(tmp_path):
    """Where the runs go: a RAM disk when there is one (a WideResNet-28-10 run writes ~1 GB of
    checkpoints), else ``tmp_path``."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 4 << 30:
        folder = Path(tempfile.mkdtemp(prefix="acdc-paper-suites-", dir=shm))
        yield folder
        shutil.rmtree(folder, ignore_errors=True)
    else:
        yield tmp_path / "runs"


def tiny_config(name: str, method: str) -> dict:
    suite = load_suite(name)
    overrides = TINY + ([f"methods.{method}.recipe.batch_size=1"] if suite.method_recipe(method) else [])
    return run_config(load_suite(name, overrides), method, 0.9, epochs=EPOCHS[method])


def cases():
    for name in PAPER_SUITES:
        slow = [pytest.mark.slow] if name != "imagenet-mobilenetv1" else []
        for method in METHODS:
            yield pytest.param(name, method, marks=slow, id=f"{name}-{method}")


@pytest.mark.parametrize("name, method", list(cases()))
def test_every_method_trains_under_its_own_recipe(name, method, run_root, request, one_thread):
    from acdc_bench.run.loop import train

    root = request.getfixturevalue("small_imagenet_root" if DATASETS[name] == "imagenet" else "small_cifar_root")
    config = tiny_config(name, method)
    has_recipe = load_suite(name).method_recipe(method) is not None
    assert config.recipe_source.startswith(f"methods.{method}.recipe" if has_recipe else "suite")
    result = train(config, run_root, data_root=str(root), progress=False, log=lambda *_: None)
    run_dir = run_root / config.run_id
    assert (run_dir / "result.json").exists() and (run_dir / "model_final.pt").exists()
    assert (result["method"], result["model"], result["steps"]) == (method, load_suite(name).model, EPOCHS[method])
    assert 0 < result["training_flops_multiplier"] and result["dense_inference_flops"] > 0
    if method in ("acdc", "gmp", "rigl"):  # the target at the end: masks in force
        assert result["sparsity_check"]["reached"] == pytest.approx(0.9, abs=0.005)
        # RigL's connections grown at step 0 start at zero; under tf-resnet's zero BatchNorm scales
        # their gradient is zero too, so a run this short may hold more zeros than its masks
        assert result["actual_sparsity"] == pytest.approx(0.9, abs=0.005) or (
            method == "rigl" and result["actual_sparsity"] > 0.9)
        assert result["inference_flops_multiplier"] < 0.5
    if method == "acdc":
        assert (run_dir / "model_dense.pt").exists() and result["top1_dense"] is not None
    if method == "dense":
        assert result["actual_sparsity"] < 0.01
    assert_plan_matches_run(config, run_dir, num_classes=2 if DATASETS[name] == "imagenet" else None)  # 2 folders


def test_reproduce_trains_a_cell_with_its_options(tmp_path, small_imagenet_root, one_thread):
    """`reproduce` runs a cell through the launcher: AC/DC 2:4 on MobileNetV1 (variant, pattern, report)."""
    cell = [{"cell": "acdc-2:4", "method": "acdc", "options": {"distribution": "uniform", "pattern": "2:4"},
             "sparsities": [0.5], "variant": "2:4", "published": None}]
    out, boards = tmp_path / "runs", tmp_path / "boards"
    args = ["reproduce", "--suite", "imagenet-mobilenetv1", "--out", str(out), "--leaderboard-dir", str(boards),
            "--data-root", str(small_imagenet_root), "--no-progress", "--jobs", "1", "--dense-step-seconds=0", "--set=epochs=3",
            f"--set=reproduce.variants={json.dumps(cell)}", *[f"--set={o}" for o in TINY]]
    assert main(args) == 0
    (result_path,) = out.glob("*/result.json")
    result = json.loads(result_path.read_text())
    assert (result["variant"], result["target_sparsity"], result["steps"]) == ("2:4", 0.5, 3)
    assert 0.49 < result["actual_sparsity"] <= 0.5  # the first conv's 3 input channels keep 2 of 3
    state = torch.load(result_path.parent / "model_final.pt", weights_only=True)
    state = state.get("model", state)
    convs = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 4 and v.shape[1] > 1]
    assert convs and all(int(nm_group_nonzeros(w, 4).max()) <= 2 for w in convs)
    assert "2:4" in (out / "compare.md").read_text()


# --------------------------------------------------------------------------- the GPU script


def test_gpu_suites_smoke(tmp_path):
    """The GPU script's every path in smoke mode (CPU, tiny shapes): MobileNetV1 with every method (the
    ResNet50 and WideResNet cells run the same code; `--smoke` alone runs all three suites), and the
    bench_gpu subprocess."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_suites
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    threads = torch.get_num_threads()
    assert gpu_suites.main([str(tmp_path / "gpu"), "--smoke", "--suites", "imagenet-mobilenetv1"]) == 0
    assert torch.get_num_threads() == threads
    report = json.loads((tmp_path / "gpu" / "gpu_suites.json").read_text())
    assert report["smoke"] and report["device"]["type"] == "cpu" and report["skipped"] == []
    rows = {r["method"]: r for r in report["results"]}
    assert set(rows) == set(METHODS) and all(r["suite"] == "imagenet-mobilenetv1" for r in rows.values())
    assert all(r["images_per_s"] > 0 and r["steps_timed"] == 2 and r["batch"] == 2 for r in rows.values())
    assert rows["dense"]["ratio_to_dense"] == 1.0 and rows["acdc"]["flops_ratio_to_dense"] < 0.5
    assert rows["rigl"]["extra"]["updates_timed"] == 1 and rows["str"]["recipe"] == "methods.str.recipe"
    assert report["bench_gpu"]["returncode"] == 0 and (tmp_path / "gpu" / "bench_gpu.json").exists()
    assert [(c["method"], c["passed"], c["masks_on"]) for c in report["checks"]] == [("rigl", True, ["cpu"]),
                                                                                    ("acdc", True, ["cpu"])]
    table = (tmp_path / "gpu" / "gpu_suites.md").read_text()
    assert "| imagenet-mobilenetv1 | acdc |" in table and "vs dense" in table and "device:" in table
    assert "bench_gpu" in table and "| dense |" in table
    assert gpu_suites.build_parser().parse_args(["out"]).suites == list(PAPER_SUITES)
