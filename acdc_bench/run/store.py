"""Where the run folders of one output folder live, and what they hold.

:class:`RunStore` is the one door to run folders: the training loop writes a run's files through
it, the runners and the budget code (:mod:`acdc_bench.budget`: a finished reference run's FLOPs, a
calibration chain's results) read them through it, and so do the reports
(:mod:`acdc_bench.report.results`). The file formats live in :mod:`acdc_bench.run.folder`.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Iterator

from acdc_bench.run import folder


class RunStore:
    """The run folders under ``root``, one per run id: every read and write of a run's files
    (config, checkpoint, metrics, result, failure note, predictions, lock)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    @classmethod
    def locate(cls, run_dir: str | os.PathLike) -> tuple["RunStore", str]:
        """The store holding the run folder ``run_dir`` and the run's id (its folder's name)."""
        run_dir = Path(run_dir)
        return cls(run_dir.parent), run_dir.name

    @staticmethod
    def find(root: str | os.PathLike) -> list[Path]:
        """The run folders at any depth below ``root`` (``root`` itself included), sorted: folders
        holding a ``config.yaml`` or a ``result.json``. The walk does not descend into a run folder
        (its ``wandb/`` tree holds ``config.yaml`` files of its own) nor into hidden folders. A folder
        that cannot be read (no permission) is listed too, so that reading it fails in the open and
        the reports name it, rather than leave it out unsaid."""
        found = []

        def unreadable(error: OSError) -> None:
            if error.filename is not None:
                found.append(Path(error.filename))

        for path, subfolders, files in os.walk(root, onerror=unreadable):
            if folder.CONFIG in files or folder.RESULT in files:
                found.append(Path(path))
                subfolders.clear()
            else:
                subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        return sorted(found)

    def folder(self, run_id: str) -> Path:
        return self.root / run_id

    def exists(self, run_id: str) -> bool:
        """Whether the run's folder exists (started, finished or failed)."""
        return self.folder(run_id).exists()

    def run_ids(self, prefix: str = "") -> list[str]:
        """The names of the run folders there starting with ``prefix``, sorted (none when ``root``
        does not exist)."""
        if not self.root.is_dir():
            return []
        return sorted(path.name for path in self.root.iterdir() if path.is_dir() and path.name.startswith(prefix))

    # ------------------------------------------------------------------ reads

    def config(self, run_id: str) -> dict | None:
        """The run's ``config.yaml`` (None before it is written;
        :class:`acdc_bench.run.folder.UnreadableConfig` if it does not parse)."""
        return folder.read_config(self.folder(run_id))

    def started(self, run_id: str) -> bool:
        """Whether the run has written its ``config.yaml`` (its first write)."""
        return (self.folder(run_id) / folder.CONFIG).exists()

    def result(self, run_id: str) -> dict | None:
        """The finished run's ``result.json``, None until it has finished
        (:class:`acdc_bench.run.folder.CorruptResult` if it is corrupt)."""
        return folder.read_result(self.folder(run_id))

    def finished(self, run_id: str) -> bool:
        return self.result(run_id) is not None

    def result_as_written(self, run_id: str) -> tuple[Any, list[str]] | None:
        """For the reports, which list a corrupt run with what it has: ``result.json`` as parsed (None
        when it does not parse) and what is wrong with it or with the folder beside it (empty: a
        finished run); None when the file is absent."""
        path = self.folder(run_id) / folder.RESULT
        if not path.exists():
            return None
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            return None, [f"{folder.RESULT} unreadable: {error}"]
        problems = folder.validate_result(result)
        if not problems:  # a valid result.json in a folder that disagrees with it is no result either
            problems = folder.finished_problems(self.folder(run_id), result)
        return result, problems

    def result_written_at(self, run_id: str) -> float | None:
        """When the run wrote its ``result.json`` (None without one)."""
        try:
            return (self.folder(run_id) / folder.RESULT).stat().st_mtime
        except OSError:
            return None

    def failure(self, run_id: str) -> str | None:
        """Why a run that trained to its end is not a result (``failed.txt``), None if it has no such note."""
        return folder.read_failure(self.folder(run_id))

    def metrics_path(self, run_id: str) -> Path:
        """The run's ``metrics.csv`` (one row per finished epoch), for readers that parse it."""
        return self.folder(run_id) / folder.METRICS

    def epochs_done(self, run_id: str) -> int:
        """How many epochs the run's ``metrics.csv`` holds (0 without one): its progress."""
        try:
            return max(0, len(self.metrics_path(run_id).read_text().splitlines()) - 1)
        except OSError:
            return 0

    def checkpoint_path(self, run_id: str) -> Path | None:
        """The run's checkpoint when it has one (it can resume), else None."""
        path = self.folder(run_id) / folder.CHECKPOINT
        return path if path.exists() else None

    def predictions(self, run_id: str) -> dict | None:
        """The run's per-example predictions (:func:`acdc_bench.run.folder.read_predictions`)."""
        return folder.read_predictions(self.folder(run_id))

    def last_write(self, run_id: str) -> float:
        """The newest modification time in the run's folder (a file renamed away meanwhile, as atomic
        writes do, is skipped; 0 for a folder that is gone)."""
        newest = 0.0
        try:
            paths = list(self.folder(run_id).iterdir())
        except OSError:
            return newest
        for path in paths:
            try:
                newest = max(newest, path.stat().st_mtime)
            except OSError:
                continue
        return newest

    def being_trained(self, run_id: str) -> bool:
        """Whether the run folder's lock names a live process on this host (it is training now).

        Reads the lock file only (taking the lock, even shared, could make a run that starts at that
        instant fail); a killed holder's stale PID reads as not training."""
        try:
            words = (self.folder(run_id) / folder.LOCK).read_text().split()
        except OSError:
            return False
        if len(words) < 4 or words[0] != "pid" or words[3] != os.uname().nodename:
            return False
        try:
            os.kill(int(words[1]), 0)
        except (ProcessLookupError, ValueError):
            return False
        except PermissionError:
            return True
        return True

    # ------------------------------------------------------------------ the output folder's own files

    #: The dense step ``reproduce`` timed on this machine, kept for a later invocation on the same one.
    DENSE_STEP = "dense-step.json"

    def dense_step(self) -> dict | None:
        """The timed dense step kept in the output folder (None when absent or unreadable)."""
        try:
            step = json.loads((self.root / self.DENSE_STEP).read_text())
        except (OSError, ValueError):
            return None
        return step if isinstance(step, dict) else None

    def write_dense_step(self, step: dict) -> Path:
        """Keep ``step`` in the output folder (atomically); returns the file written."""
        from acdc_bench.core.io import atomic_write_json

        path = self.root / self.DENSE_STEP
        atomic_write_json(path, step)
        return path

    # ------------------------------------------------------------------ writes (the training loop's)

    def lock(self, run_id: str) -> AbstractContextManager:
        """The run folder's exclusive lock (:class:`acdc_bench.run.folder.RunLocked` if held)."""
        return folder.lock_run(self.folder(run_id))

    def write_config(self, run_id: str, text: str) -> None:
        folder.write_config(self.folder(run_id), text)

    def save_progress(self, run_id: str, checkpoint: dict, rows: list[dict]) -> None:
        """The end of an epoch: the checkpoint to resume from, then ``metrics.csv`` with its rows."""
        folder.write_checkpoint(self.folder(run_id), checkpoint)
        folder.write_metrics(self.folder(run_id), rows)

    def write_dense_model(self, run_id: str, state_dict: dict) -> None:
        folder.write_dense_model(self.folder(run_id), state_dict)

    def write_failure(self, run_id: str, message: str) -> None:
        folder.write_failure(self.folder(run_id), message)

    def finish(self, run_id: str, model_state: dict, result: dict, predictions: dict | None = None) -> None:
        """The final model, the predictions and, last, ``result.json``; the checkpoint is dropped."""
        folder.finish(self.folder(run_id), model_state, result, predictions)

    def remove(self, run_id: str) -> None:
        """Delete the run's folder (a run that failed before writing anything)."""
        shutil.rmtree(self.folder(run_id), ignore_errors=True)


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
