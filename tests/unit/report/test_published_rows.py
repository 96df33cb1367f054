"""The shipped published rows and the official configurations: every number traceable to the file it
was read from, every official configuration of the reproduced codes run by a cell or said why not."""

import csv
import re

import pytest
import yaml

from acdc_bench.config.cells import suite_cells
from acdc_bench.config import ConfigError, load_suite
from acdc_bench.report.results import DEFAULT_REFERENCE_PATH, REFERENCE_SELECTIONS, load_reference
from helpers import ROOT

PAPER_SUITES = ("imagenet-resnet50", "imagenet-mobilenetv1", "cifar100-wrn28-10")
OFFICIAL_CONFIGS = DEFAULT_REFERENCE_PATH.with_name("official_configs.csv")
REPOSITORY = re.compile(r"[\w.-]+/[\w.-]+")
COMMIT = re.compile(r"[0-9a-f]{40}")


def _official_configs() -> list[dict]:
    with open(OFFICIAL_CONFIGS, newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_published_row_names_the_file_and_commit_it_was_read_from():
    reference = load_reference()
    assert len(reference) > 0
    listed = _official_configs()
    configs = {(row["repository"], row["path"]) for row in listed}
    for line, row in enumerate(reference.to_dict("records"), start=2):
        where = f"published.csv:{line} ({row['source_id']} {row['method']} {row['target_sparsity']})"
        assert REPOSITORY.fullmatch(row["repository"]), f"{where}: repository {row['repository']!r} is not owner/name"
        assert row["path"], f"{where}: no path of the file the number was read from"
        assert COMMIT.fullmatch(row["commit"]), f"{where}: commit {row['commit']!r} is not a full hash"
        assert row["source"], f"{where}: no citation"
        assert row["selection"] in REFERENCE_SELECTIONS, where
        if row["config"]:
            assert (row["repository"], row["config"]) in configs, f"{where}: config {row['config']} is not in official_configs.csv"
        # a row's commit is the one the official configurations of its repository were read at
        commits = {c["commit"] for c in listed if c["repository"] == row["repository"]}
        assert not commits or commits == {row["commit"]}, f"{where}: read at another commit than its configurations"


def test_every_official_configuration_is_run_by_a_cell_or_says_why_not():
    listed = _official_configs()
    names = {f"{row['repository']} {row['path']}" for row in listed}
    assert len(names) == len(listed), "official_configs.csv lists a configuration twice"
    covered = {}
    for suite in PAPER_SUITES:
        for cell in suite_cells(load_suite(suite)):
            for entry in cell["official"]:
                assert entry in names, f"{suite} cell {cell['cell']}: {entry} is not in official_configs.csv"
                covered.setdefault(entry, []).append(f"{suite}:{cell['cell']}")
    for row in listed:
        name = f"{row['repository']} {row['path']}"
        assert COMMIT.fullmatch(row["commit"]), name
        if name in covered:
            assert not row["no_cell"], f"{name} is run by {covered[name]} but official_configs.csv says why not"
        else:
            assert row["no_cell"], f"{name}: no cell runs it and official_configs.csv gives no reason"


def test_every_configuration_the_references_page_names_is_listed():
    listed = {row["path"].rsplit("/", 1)[-1] for row in _official_configs()}
    text = (ROOT / "docs" / "references.md").read_text()
    named = set(re.findall(r"\b[a-z0-9]+_[\w-]+\.yaml", text))  # iht_..., imagenet_... (not config.yaml)
    assert named, "docs/references.md names no configuration file"
    assert named <= listed, f"docs/references.md names configurations official_configs.csv does not list: {sorted(named - listed)}"


@pytest.mark.parametrize("text, words", [
    ("official: RAIVNLab/STR configs/x.yaml", "must be a list"),
    ("official: [configs/x.yaml]", "owner/name path"),
])
def test_a_bad_official_entry_is_a_clear_error(tmp_path, text, words):
    suite = load_suite("imagenet-resnet50")
    cell = {"cell": "x", "method": "acdc", "sparsities": [0.9], **yaml.safe_load(text)}
    suite = suite.replace(reproduce={**suite.reproduce, "variants": [cell]})
    with pytest.raises(ConfigError, match=words):
        suite_cells(suite)
