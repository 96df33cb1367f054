"""The documentation: the README stays a short manual, the site builds with ``--strict``, every
Python example and every CLI line a user would paste runs, and nothing points outside the
repository or tells how the project was made."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import needs_fashion

from helpers import ROOT
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
#: A Python block whose first line is ``# path/to/module.py`` is a file the user writes, not a script.
FILE_BLOCK = re.compile(r"# ([\w/]+\.py)\n")


def _blocks(language: str) -> list[tuple[str, str]]:
    """(``page:line``, code) of every fenced block in ``language`` in the README and docs/."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) == language:
                line = text[:match.start()].count("\n") + 1
                found.append((f"{page.relative_to(ROOT)}:{line}", match.group(2)))
    return found


def _cli_lines() -> list[tuple[str, str]]:
    return [(where, line.strip()) for where, code in _blocks("bash") for line in code.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


#: Lines of the docs the tests do not run here, and why: the tests themselves (nox), installing,
#: what needs ImageNet or several GPUs, and a line another test runs through the same entry point.
#: Every other line is run.
NOT_RUN = (("./nox ", "the two commands themselves"),
           ("pip install ", "installing the library"),
           ("nox -s ", "a nox session: its command is what is tested"),
           ("torchrun ", "needs the ImageNet data and GPUs"),
           ("acdc-bench reproduce --suite imagenet-resnet50 --dry-run",
            "run (with --json) by test_paper_suites.py::test_dry_run_lists_every_resnet50_run_and_trains_nothing, "
            "which checks its listing and prints its text: planning the 52 ResNet50 runs twice costs half a minute"))


def _not_run(line: str) -> str | None:
    for prefix, why in NOT_RUN:
        if line.startswith(prefix):
            return why
    if "--data-root /data" in line:
        return "needs the ImageNet data"
    return None


def test_the_readme_is_a_short_manual():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    first_screen = "\n".join(text.splitlines()[:60])
    assert "nox -s reproduce" in first_screen and "nox -s tests" in first_screen
    for topic in ("## What you get", "## A method in your own training loop", "## The paper suites and clusters"):
        assert topic in text
    for link in re.findall(r"\]\((docs/[\w-]+\.md)(?:#[\w-]+)?\)", text):
        assert (ROOT / link).exists(), link


def test_nothing_points_outside_the_repository():
    """A path that climbs out of its file's folder (``../x``) lands on a file of the repository, and a
    document named in capitals (``README.md``) is one the repository holds: a user of the repository
    has nothing beside it."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    names = {Path(name).name for name in tracked}
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix not in {".py", ".md", ".yaml", ".toml", ".csv", ".cfg", ".txt"} or path == Path(__file__):
            continue
        text = path.read_text(errors="replace")
        for climb in re.findall(r"(?:\.\./)+[\w./-]+", text):
            target = (path.parent / climb).resolve()
            if not (target.is_relative_to(ROOT) and target.exists()):
                offenders.append(f"{name}: {climb} is not in the repository")
        offenders += [f"{name}: {doc} is not in the repository"
                      for doc in re.findall(r"\b[A-Z][A-Z_]+\.md\b", text) if doc not in names]
        offenders += [f"{name}: {named} is not in the repository"  # a test or benchmark named by its path
                      for named in re.findall(r"\b(?:tests|benchmarks)/[\w/]+\.py\b", text)
                      if not (ROOT / named).exists()]
    assert not offenders, offenders


#: Words that tell how the project came to be rather than what it is: the pages say what holds now,
#: measured figures name their machine, date and command, and nothing more of their past.
HISTORY = re.compile(r"\b(not yet|no longer|formerly|previously|used to (?:be|run|give|take)|until now|as of now"
                     r"|(?:former|previous|old|older|earlier) (?:scheme|version|record|records|code|behaviou?r|numbers?)"
                     r"|(?:was|were) (?:changed|replaced|renamed|rewritten|re-?made|re-?recorded)"
                     r"|written before \d{4}|before \d{4}-\d\d-\d\d|this session|last session)\b", re.I)


def test_the_pages_tell_no_history():
    """README, docs/, the reference and benchmark READMEs and the suites' comments say what the project
    is, not how it was made."""
    pages = [*PAGES, ROOT / "leaderboards" / "reference" / "README.md", ROOT / "benchmarks" / "README.md"]
    suites = sorted((ROOT / "acdc_bench" / "suites").glob("*.yaml"))
    found = []
    for page in [*pages, *suites]:
        for number, line in enumerate(page.read_text().splitlines(), start=1):
            text = line.split("#", 1)[1] if page.suffix == ".yaml" and "#" in line else line
            if page.suffix == ".yaml" and "#" not in line:
                continue
            found += [f"{page.relative_to(ROOT)}:{number}: {match.group(0)!r}" for match in HISTORY.finditer(text)]
    assert not found, found
    assert HISTORY.search("run folders written before 2026-12-06 carry ids of the former scheme")


FIGURE = re.compile(r"<!-- figure: ([\w-]+) -->")
FIGURE_KEYS = {"value", "unit", "what", "machine", "date", "command"}


def _figures() -> dict:
    from acdc_bench.config.suite import parse_yaml

    path = ROOT / "docs" / "figures.yaml"
    return parse_yaml(path.read_text(), str(path))


def test_every_figure_a_page_cites_is_the_registered_one():
    """docs/figures.yaml gives each measured figure once, with what it measures, the machine, the
    date and the command; every citation of one in the pages (its value, then ``<!-- figure: NAME
    -->``) gives that value, and every registered figure is cited: one figure per quantity."""
    figures = _figures()
    assert figures and all(isinstance(name, str) for name in figures)
    for name, entry in figures.items():
        assert isinstance(entry, dict) and set(entry) == FIGURE_KEYS, f"{name}: keys must be {sorted(FIGURE_KEYS)}"
        assert all(isinstance(entry[key], str) for key in FIGURE_KEYS), f"{name}: every key holds text"
        assert all(entry[key].strip() for key in FIGURE_KEYS - {"unit"}), f"{name}: an empty key"
    pages = [*PAGES, ROOT / "leaderboards" / "reference" / "README.md", ROOT / "benchmarks" / "README.md"]
    wrong, cited = [], set()
    for page in pages:
        for number, line in enumerate(page.read_text().splitlines(), start=1):
            for match in FIGURE.finditer(line):
                name, before = match.group(1), line[:match.start()].rstrip()
                where = f"{page.relative_to(ROOT)}:{number}"
                if name not in figures:
                    wrong.append(f"{where}: {name} is not in docs/figures.yaml")
                    continue
                cited.add(name)
                value, unit = figures[name]["value"], figures[name]["unit"]
                if not (before.endswith(value) or before.endswith(f"{value} {unit}".strip())):
                    wrong.append(f"{where}: {name} is {value} {unit} in docs/figures.yaml, not {before[-40:]!r}")
    assert not wrong, wrong
    assert cited == set(figures), f"figures no page cites: {sorted(set(figures) - cited)}"
    assert FIGURE.search("6.54 ms <!-- figure: reproduction-dense-step -->")


def test_the_docs_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                           cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert built.returncode == 0, built.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("sparsify", "Sparsifier", "SparsityMethod", "register_method", "validate_result", "target_report"):
        assert name in api
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()
    assert "acdc-bench reproduce" in cli and "--gpus-per-node" in cli


def _write_files(tmp_path: Path) -> None:
    """The modules the docs ask a user to write (a plugin), as files in ``tmp_path``."""
    for _, code in _blocks("python"):
        file = FILE_BLOCK.match(code)
        if file:
            path = tmp_path / file.group(1)
            path.parent.mkdir(parents=True, exist_ok=True)
            (path.parent / "__init__.py").touch()
            path.write_text(code)


@pytest.mark.parametrize("where,code", [b for b in _blocks("python") if not FILE_BLOCK.match(b[1])],
                         ids=lambda value: value if ":" in str(value) and "\n" not in str(value) else "")
def test_every_python_example_runs(where, code, tmp_path):
    _write_files(tmp_path)
    ran = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(tmp_path), OMP_NUM_THREADS="1"))
    assert ran.returncode == 0, f"{where}:\n{ran.stderr[-3000:]}"


def test_every_cli_line_is_run_or_says_why_not():
    lines = _cli_lines()
    assert lines
    for where, line in lines:
        assert line.startswith("acdc-bench ") or _not_run(line), f"{where}: {line!r} is neither run nor exempt"


@needs_fashion
@pytest.mark.parametrize("where,line", [item for item in _cli_lines() if not _not_run(item[1])],
                         ids=lambda value: value if ":" in str(value) and " " not in str(value) else "")
def test_every_cli_line_runs(where, line, tmp_path):
    import shlex

    _write_files(tmp_path)
    argv = shlex.split(line)
    ran = subprocess.run([sys.executable, "-m", "acdc_bench", *argv[1:]], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(tmp_path), OMP_NUM_THREADS="1",
                                                          WANDB_MODE="disabled"))
    assert ran.returncode == 0, f"{where}: {line}\n{ran.stderr[-3000:]}"


def test_each_framework_is_shown_in_at_most_10_lines():
    page = (ROOT / "docs" / "integrations.md").read_text()
    blocks = [m.group(2) for m in FENCE.finditer(page) if m.group(1) == "python"]
    assert len(blocks) == 3  # the Trainer, Lightning, timm
    for code in blocks:
        assert len([line for line in code.splitlines() if line.strip()]) <= 10, code
