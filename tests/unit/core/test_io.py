"""The atomic writers: a file a lab can share (the umask's mode, as open() gives), and output staged whole."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from acdc_bench.core.io import (
    atomic_torch_save, atomic_write_bytes, atomic_write_csv, atomic_write_json, atomic_write_text, staged,
)
from acdc_bench.run import folder


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask-022", "umask-027"])
def test_every_writer_gives_the_mode_open_gives(tmp_path, umask):
    previous = os.umask(umask)
    try:
        expected = 0o666 & ~umask
        with open(tmp_path / "plain.txt", "w") as handle:  # what open() gives a new file
            handle.write("x")
        atomic_write_text(tmp_path / "a.txt", "a")
        atomic_write_bytes(tmp_path / "b.bin", b"b")
        atomic_write_json(tmp_path / "result.json", {"top1": 1.0})
        atomic_write_csv(tmp_path / "metrics.csv", [{"epoch": 0}], ["epoch"])
        atomic_torch_save({"w": torch.zeros(2)}, tmp_path / "checkpoint.pt")
        folder.write_config(tmp_path / "run", "suite: x\n")  # a folder the writer creates
        atomic_write_text(tmp_path / "a.txt", "again")  # replacing a file gives it the mode too
        written = ["plain.txt", "a.txt", "b.bin", "result.json", "metrics.csv", "checkpoint.pt", "run/config.yaml"]
        assert {name: oct(_mode(tmp_path / name)) for name in written} == {name: oct(expected) for name in written}
        assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left
    finally:
        os.umask(previous)


def test_staged_output_lands_whole_or_not_at_all(tmp_path):
    first, second = tmp_path / "out", tmp_path / "new" / "boards"
    (first / "old.txt").parent.mkdir()
    (first / "old.txt").write_text("kept")
    with pytest.raises(RuntimeError, match="drawing failed"):
        with staged(first, second) as (one, two):
            atomic_write_text(one / "compare.csv", "a")
            atomic_write_text(two / "plots" / "x.svg", "b")
            raise RuntimeError("drawing failed")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["old.txt", "out"]  # nothing moved, no staging left
    with staged(first, second) as (one, two):
        atomic_write_text(one / "compare.csv", "a")
        atomic_write_text(two / "plots" / "x.svg", "b")
        assert not (first / "compare.csv").exists()
    assert (first / "compare.csv").read_text() == "a" and (second / "plots" / "x.svg").read_text() == "b"
    assert (first / "old.txt").read_text() == "kept"
    assert not [p for p in tmp_path.rglob(".staging-*")]


def test_staged_output_checks_every_target_before_moving_and_names_the_users_path(tmp_path):
    """A folder where a file goes (or a file where a folder goes) is found before any file moves, and
    the error names that path, not a temporary one; staging inside the output folder keeps the
    renames on its file system and works where only the output folder is writable."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "compare.md").write_text("old")
    (out / "compare.csv").mkdir()  # a folder where compare.csv goes
    with pytest.raises(IsADirectoryError) as error:
        with staged(out) as (stage,):
            atomic_write_text(stage / "compare.md", "new")
            atomic_write_text(stage / "compare.csv", "new")
    assert error.value.filename == str(out / "compare.csv")
    assert (out / "compare.md").read_text() == "old"  # nothing moved
    (out / "plots").write_text("a file")  # a file where the plots folder goes
    with pytest.raises(NotADirectoryError) as error:
        with staged(out) as (stage,):
            atomic_write_text(stage / "compare.md", "new")
            atomic_write_text(stage / "plots" / "x.svg", "new")
    assert error.value.filename == str(out / "plots") and (out / "compare.md").read_text() == "old"
    # a failed call removes the folders it created; the stage lies inside the output folder
    fresh = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError):
        with staged(fresh) as (stage,):
            assert stage.parent == fresh
            raise RuntimeError("failed")
    assert not (tmp_path / "a").exists()
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        (locked / "mine").mkdir(parents=True)
        locked.chmod(0o555)
        try:
            with staged(locked / "mine") as (stage,):
                atomic_write_text(stage / "compare.md", "new")
            assert (locked / "mine" / "compare.md").read_text() == "new"
        finally:
            locked.chmod(0o755)
