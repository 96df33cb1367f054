"""Where the run folders of one output folder live, and what they hold.

:class:`RunStore` is the one object the harness passes around for "the runs already there": the
budget code (:mod:`acdc_bench.budget`) reads a finished reference run's FLOPs and a calibration
chain's results through it and never touches the file system or :mod:`acdc_bench.run` itself.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Iterator

from acdc_bench.run import folder


class RunStore:
    """The run folders under ``root`` (one per run id): a run's folder, its result (None until it
    has finished), whether it exists, the run ids there, and its lock."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    def folder(self, run_id: str) -> Path:
        return self.root / run_id

    def exists(self, run_id: str) -> bool:
        """Whether the run's folder exists (started, finished or failed)."""
        return self.folder(run_id).exists()

    def result(self, run_id: str) -> dict | None:
        """The finished run's ``result.json``, None until it has finished
        (:class:`acdc_bench.run.folder.CorruptResult` if it is corrupt)."""
        return folder.read_result(self.folder(run_id))

    def finished(self, run_id: str) -> bool:
        return self.result(run_id) is not None

    def run_ids(self) -> list[str]:
        """The names of the run folders there, sorted (none when ``root`` does not exist)."""
        if not self.root.is_dir():
            return []
        return sorted(path.name for path in self.root.iterdir() if path.is_dir())

    def lock(self, run_id: str) -> AbstractContextManager:
        """The run folder's exclusive lock (:class:`acdc_bench.run.folder.RunLocked` if held)."""
        return folder.lock_run(self.folder(run_id))


@contextmanager
def removed_if_left_empty(root: str | os.PathLike) -> Iterator[None]:
    """Run the body; when it fails (an error, Ctrl-C) the folders it created on the way to ``root``
    (``root`` and the missing folders above it) are removed again while they are empty: a run that
    fails before writing anything leaves no folder behind. A folder that was there stays."""
    created, path = [], Path(root).absolute()
    while not path.exists() and path != path.parent:
        created.append(path)
        path = path.parent
    try:
        yield
    except BaseException:
        for made in created:  # the deepest first; a folder holding anything stops it
            try:
                made.rmdir()
            except OSError:
                break
        raise


def store_at(out: str | os.PathLike | RunStore | None) -> RunStore | None:
    """``out`` as a store (None stays None: no run folder to read)."""
    if out is None or isinstance(out, RunStore):
        return out
    return RunStore(out)
