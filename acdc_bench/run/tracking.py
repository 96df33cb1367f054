"""Optional Weights & Biases logging of a run; the run folder stays the source of truth.

Tracking happens only when asked for (``Tracker(enabled=True)``) and only on
rank 0. ``WANDB_MODE`` from the environment decides ``online``, ``offline`` or
``disabled``; when it is unset the tracker logs offline (never online by
itself, never needing the network) and says so. W&B writes under
``<run_dir>/wandb``; an offline run can be uploaded later with
``wandb sync <run_dir>/wandb/offline-run-*``. When ``wandb`` is not installed,
or a W&B call fails, the tracker warns once and turns itself off: training
goes on.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterable

from acdc_bench.core.io import flatten

log = logging.getLogger(__name__)

DEFAULT_PROJECT = "acdc_bench"
_warned_missing_wandb = False


def _import_wandb():
    """Return the wandb module, or None after one warning per process when it is missing."""
    global _warned_missing_wandb
    try:
        import wandb
    except ImportError as error:
        if not _warned_missing_wandb:
            warnings.warn(f"W&B tracking was asked for but wandb cannot be imported ({error}); "
                          "continuing without it (the run folder keeps every record)", RuntimeWarning,
                          stacklevel=3)
            _warned_missing_wandb = True
        return None
    return wandb


def _loggable(row: dict[str, Any]) -> dict[str, float]:
    """Finite numbers of ``row`` (bools as 0/1); ``phase`` becomes ``dense_phase`` (1 dense, 0 sparse)."""
    values = {}
    for key, value in row.items():
        if isinstance(value, bool):
            values[key] = float(value)
        elif isinstance(value, (int, float)) and math.isfinite(value):
            values[key] = value
    if isinstance(row.get("phase"), str):
        values["dense_phase"] = float(row["phase"] == "dense")
    return values


def _flatten(mapping: dict[str, Any]) -> dict[str, Any]:
    return flatten(mapping, "/")


def _wandb_run_id(run_dir: Path) -> str:
    """Stable W&B id of a run folder: its name (W&B-safe) plus a hash of its absolute path."""
    resolved = run_dir.resolve()
    readable = re.sub(r"[^0-9A-Za-z_-]", "-", resolved.name)[:50]
    return f"{readable}-{hashlib.sha1(str(resolved).encode()).hexdigest()[:10]}"


class Tracker:
    """Mirror a run's config, per-epoch metrics and result to W&B when enabled.

    Every method is a no-op when the tracker is disabled, on ranks other than
    0, when wandb is missing, or after a W&B error.

    >>> tracker = Tracker(enabled=False)
    >>> tracker.start("runs/x", {"method": "acdc"}, name="x")  # does nothing
    """

    def __init__(self, enabled: bool = False, *, rank: int = 0, project: str = DEFAULT_PROJECT,
                 entity: str | None = None, group: str | None = None, tags: Iterable[str] = ()):
        self.enabled = bool(enabled) and rank == 0
        self.rank = rank
        self.project = project
        self.entity = entity
        self.group = group
        self.tags = list(tags)
        self.run = None
        self.run_dir: Path | None = None

    @property
    def active(self) -> bool:
        """Whether a W&B run is open and logging."""
        return self.run is not None

    def _fail(self, action: str, error: Exception) -> None:
        warnings.warn(f"W&B {action} failed ({error!r}); tracking turned off for this run", RuntimeWarning,
                      stacklevel=3)
        self.run = None
        self.enabled = False

    def start(self, run_dir: str | os.PathLike, config: dict[str, Any], name: str) -> None:
        """Open the W&B run for ``run_dir`` (files under ``<run_dir>/wandb``), logging ``config``.

        The W&B run id is derived from the run folder's path, so a run resumed
        in its folder continues the same W&B run.
        """
        if not self.enabled or self.run is not None:
            return
        wandb = _import_wandb()
        if wandb is None:
            self.enabled = False
            return
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        init_kwargs: dict[str, Any] = {}
        if not os.environ.get("WANDB_MODE"):
            init_kwargs["mode"] = "offline"
            log.info("WANDB_MODE is unset: W&B logs offline under %s/wandb "
                     "(set WANDB_MODE=online to upload, or run `wandb sync` later)", self.run_dir)
        run_id = _wandb_run_id(self.run_dir)
        try:
            self.run = wandb.init(project=self.project, entity=self.entity, group=self.group, tags=self.tags,
                                  name=name, config=dict(config), dir=str(self.run_dir), id=run_id,
                                  resume="allow", **init_kwargs)
        except Exception as error:  # W&B must never stop training
            self._fail("init", error)

    def log_epoch(self, row: dict[str, Any]) -> None:
        """Log one metrics.csv row (numbers only) at step ``row['epoch']``."""
        if self.run is None:
            return
        values = _loggable(row)
        step = int(row["epoch"]) if isinstance(row.get("epoch"), (int, float)) and math.isfinite(row["epoch"]) else None
        try:
            self.run.log(values, step=step)
        except Exception as error:
            self._fail("log", error)

    def log_result(self, result: dict[str, Any], files: Iterable[str | os.PathLike] = ()) -> None:
        """Put the result.json fields in the run summary and attach ``files`` (e.g. result.json)."""
        if self.run is None:
            return
        try:
            self.run.summary.update(_flatten(result))
            for path in files:
                path = Path(path)
                if path.exists():
                    self.run.save(str(path.resolve()), base_path=str(path.resolve().parent), policy="now")
                else:
                    log.warning("W&B: %s does not exist; not attached", path)
        except Exception as error:
            self._fail("log_result", error)

    def finish(self) -> None:
        """Close the W&B run (safe to call more than once)."""
        if self.run is None:
            return
        run, self.run = self.run, None
        try:
            run.finish()
        except Exception as error:
            warnings.warn(f"W&B finish failed ({error!r})", RuntimeWarning, stacklevel=2)

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc_info) -> None:
        self.finish()
