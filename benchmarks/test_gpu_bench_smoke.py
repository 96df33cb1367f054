"""The GPU throughput benchmark in smoke mode (CPU, batch 2 at 64x64, 2 steps), run in-process."""

import json

import torch

import gpu_bench
from acdc_bench.methods import get_method, method_names


def shipped_methods() -> list[str]:
    """The methods this repository registers (other tests register throw-away plugins in-process)."""
    return [n for n in method_names() if get_method(n).__module__.split(".")[0] in ("acdc_bench",)]


def test_smoke_times_every_registered_method(tmp_path, capsys):
    path = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    assert {"dense", "acdc"} <= set(shipped_methods())
    assert gpu_bench.main(["--smoke", "--methods", *shipped_methods(), "--json", str(path)]) == 0
    assert torch.get_num_threads() == threads  # smoke's single thread is restored
    report = json.loads(path.read_text())
    assert report["smoke"] and report["batch"] == 2 and report["resolution"] == 64
    assert report["skipped"] == []
    results = report["results"]
    assert {r["method"] for r in results} == set(shipped_methods())
    assert all(r["images_per_s"] > 0 and r["steps_timed"] >= 2 for r in results)
    by_scenario = {r["scenario"]: r for r in results}
    assert by_scenario["dense"]["ratio_to_dense"] == 1.0
    assert {"acdc (compressed)", "acdc (decompressed)"} <= set(by_scenario)
    # the compressed phase really is sparse, the decompressed one dense (FLOPs metered per step)
    dense_flops = by_scenario["dense"]["extra"]["training_flops_per_image"]
    assert by_scenario["acdc (compressed)"]["extra"]["training_flops_per_image"] < 0.3 * dense_flops
    assert by_scenario["acdc (decompressed)"]["extra"]["training_flops_per_image"] == dense_flops
    if "rigl" in shipped_methods():
        rigl = next(r for r in results if r["method"] == "rigl")
        assert rigl["extra"]["updates_timed"] >= 1  # the amortised window includes update steps
    printed = capsys.readouterr().out
    assert "vs dense" in printed and "acdc (compressed)" in printed


def test_unregistered_method_is_skipped_not_fatal(tmp_path):
    path = tmp_path / "bench.json"
    assert gpu_bench.main(["--smoke", "--methods", "no-such-method", "--steps", "1", "--warmup", "0",
                           "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["skipped"] == [{"method": "no-such-method", "reason": "not registered"}]
    assert [r["method"] for r in report["results"]] == ["dense"]
