"""The run-folder format: file names, writers, readers, what "finished" means, and its lock.

``runs/<suite>/<run-id>/`` holds, in the order a run writes them:

- ``config.yaml``: the resolved run config (written once, before training);
- ``metrics.csv``: one row per finished epoch (:class:`MetricsRow`);
- ``checkpoint.pt``: the state after the last finished epoch (removed when the run finishes);
- ``model_dense.pt``: the dense model of a sparse-dense pair (AC/DC, dense);
- ``model_final.pt``: the final model, plain tensors with exact zeros;
- ``predictions.npz``: the final model's predicted class for every test example
  (``final``), the dense model's of the pair (``dense``) and the labels (``targets``);
- ``result.json`` (:class:`Result`): written last. A run is *finished* exactly when it parses.

Every file is written atomically (temporary file, fsync, rename). While a process trains a
run it holds an exclusive ``fcntl`` lock on ``.lock`` in the folder (:func:`lock_run`): a
second process on the same run fails at once with a message naming the holder's PID, and
the kernel releases the lock of a process that dies, so a killed run never blocks.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import fcntl
import io
import json
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from acdc_bench.core.io import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
)

CONFIG = "config.yaml"
METRICS = "metrics.csv"
CHECKPOINT = "checkpoint.pt"
FAILED = "failed.txt"
MODEL_FINAL = "model_final.pt"
MODEL_DENSE = "model_dense.pt"
PREDICTIONS = "predictions.npz"
RESULT = "result.json"
LOCK = ".lock"
RESULT_SCHEMA_VERSION = 1

class RunLocked(RuntimeError):
    """Another live process is training this run."""


@dataclass
class MetricsRow:
    """One row of ``metrics.csv``: one finished epoch, as the loop writes it and the reports read it."""

    epoch: int
    phase: str  # "dense" or "sparse": what the method trained this epoch
    lr: float
    train_loss: float
    train_top1: float
    test_loss: float
    top1: float
    sparsity: float  # zeros among the prunable weights at the epoch's end
    mask_sparsity: float  # what the masks in force hold (0 in a dense phase)
    training_flops: float  # cumulative, metered
    mask_overlap: float | None  # AC/DC: the mask's overlap with the previous sparse phase's
    wall_time_s: float


METRIC_COLUMNS = [f.name for f in dataclasses.fields(MetricsRow)]


def _optional() -> Any:
    """A result field a ``result.json`` may lack (written by later versions of schema 1)."""
    return dataclasses.field(metadata={"required": False})


@dataclass
class Result:
    """``result.json``, schema version 1: what a finished run measured, in the order it is written.

    The loop builds one (a key missing or unknown is a TypeError there, not a file the reports cannot
    read), :func:`validate_result` checks a file against these fields (``float``, ``int``: a finite
    number; ``... | None``: a number or null; ``dict``: an object; a field made with
    :func:`_optional` may be missing), and the reports read it (``acdc_bench.report.results``).
    """

    schema_version: int
    run_id: str
    suite: str
    dataset: str
    model: str
    method: str
    variant: str
    distribution: str
    target_sparsity: float
    actual_sparsity: float
    layer_densities: dict
    top1: float  # the final epoch's test top-1
    top1_best: float | None = _optional()  # the best epoch's that held the final sparsity
    best_epoch: int | None = _optional()
    top1_dense: float | None  # the dense model of the sparse-dense pair, if the method has one
    dense_pair_epoch: int | None = _optional()
    training_flops: float | None
    dense_training_flops: float | None
    training_flops_multiplier: float | None
    inference_flops: float | None
    dense_inference_flops: float | None
    inference_flops_multiplier: float | None
    epochs: int
    train_steps: int | None = _optional()
    suite_epochs: int | None = _optional()
    seed: int
    budget: dict  # mode, reference_training_flops, achieved_ratio (and a calibration's record)
    steps: int | None = _optional()
    examples_seen: int | None = _optional()
    world_size: int | None = _optional()
    wall_time_s: float | None
    cell: str | None = _optional()
    train_subset: int | None = _optional()
    overrides: list = _optional()
    sparsity_check: dict = _optional()
    versions: dict
    numerics: dict = _optional()
    command: str | None = _optional()


_RESULT_FIELDS = dataclasses.fields(Result)
#: Keys every ``result.json`` of schema version 1 carries.
RESULT_REQUIRED_KEYS = tuple(f.name for f in _RESULT_FIELDS if f.metadata.get("required", True))
#: Result keys that must hold a finite number.
RESULT_NUMBER_KEYS = tuple(f.name for f in _RESULT_FIELDS if f.type in ("float", "int"))
#: Result keys that must hold a number or null.
RESULT_OPTIONAL_NUMBER_KEYS = tuple(f.name for f in _RESULT_FIELDS if f.type in ("float | None", "int | None"))
#: Result keys that hold a mapping.
RESULT_DICT_KEYS = tuple(f.name for f in _RESULT_FIELDS if f.type == "dict")
BUDGET_KEYS = ("mode", "reference_training_flops", "achieved_ratio")


class CorruptResult(ValueError):
    """A ``result.json`` that does not parse or validate; the message names the file and the fix."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def best_epoch(rows: list[dict], reached: float, tolerance: float) -> tuple[float | None, int | None]:
    """``(top1_best, best_epoch)``: the best test top-1 over the epochs whose model held the run's final
    sparsity (``mask_sparsity`` within ``tolerance`` of ``reached``), and that epoch (0-based, as in
    ``metrics.csv``). The published AC/DC and STR numbers are such best-epoch checkpoints (their
    managers keep the best validation accuracy, and ImageNet's validation set is its test set);
    ``top1`` is the final epoch's. A dense epoch of AC/DC, or GMP's ramp, is not the sparse model and
    never counts. ``(None, None)`` when no epoch qualifies."""
    best = None
    for row in rows:
        top1, sparsity = float(row["top1"]), float(row.get("mask_sparsity", row.get("sparsity", "nan")))
        if not abs(sparsity - reached) <= tolerance + 1e-12:
            continue
        if best is None or top1 > best[0]:
            best = (top1, int(float(row["epoch"])))
    return best if best is not None else (None, None)


def validate_result(result: Any) -> list[str]:
    """Return the problems that make ``result`` (parsed result.json) unusable; empty if none."""
    if not isinstance(result, dict):
        return [f"result.json holds a {type(result).__name__}, not an object"]
    problems = []
    missing = [key for key in RESULT_REQUIRED_KEYS if key not in result]
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    version = result.get("schema_version")
    if "schema_version" in result and version != RESULT_SCHEMA_VERSION:
        problems.append(f"unsupported schema_version {version!r} (expected {RESULT_SCHEMA_VERSION})")
    for key in RESULT_NUMBER_KEYS:
        if key in result and not (_is_number(result[key]) and math.isfinite(result[key])):
            problems.append(f"{key} is {result[key]!r}, not a finite number")
    for key in RESULT_OPTIONAL_NUMBER_KEYS:
        if key in result and result[key] is not None and not _is_number(result[key]):
            problems.append(f"{key} is {result[key]!r}, not a number or null")
    for key in RESULT_DICT_KEYS:
        if key in result and not isinstance(result[key], dict):
            problems.append(f"{key} is {type(result[key]).__name__}, not an object")
    budget = result.get("budget")
    if isinstance(budget, dict):
        missing_budget = [key for key in BUDGET_KEYS if key not in budget]
        if missing_budget:
            problems.append(f"budget misses keys: {', '.join(missing_budget)}")
    return problems


class UnreadableConfig(ValueError):
    """A run's ``config.yaml`` that does not parse, or is not a mapping; the message names which."""


def read_config(run_dir: str | os.PathLike) -> dict | None:
    """The run's ``config.yaml`` as a mapping, None when the folder has none (the one reader of it).

    A file that cannot be read or parsed, or is not a mapping, is :class:`UnreadableConfig`."""
    import yaml

    path = Path(run_dir) / CONFIG
    if not path.exists():
        return None
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise UnreadableConfig(f"config.yaml unreadable: {error}") from error
    if not isinstance(config, dict):
        raise UnreadableConfig("config.yaml is not a mapping")
    return config


def read_result(run_dir: str | os.PathLike) -> dict | None:
    """The run's ``result.json`` when the run is finished, None when there is none yet.

    A result that does not parse or validate is :class:`CorruptResult`, naming the file and what is
    wrong: never mistaken for an unfinished run (which would be trained over) nor for a result."""
    path = Path(run_dir) / RESULT
    if not path.exists():
        return None
    fix = f"delete {Path(run_dir)} to train the run again, or restore the file"
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CorruptResult(f"{path} does not parse ({error}): {fix}") from error
    problems = validate_result(result)
    if problems:
        raise CorruptResult(f"{path} is not a valid result ({'; '.join(problems)}): {fix}")
    return result


def finished_problems(run_dir: str | os.PathLike, result: dict) -> list[str]:
    """What makes a finished run's folder disagree with its ``result.json`` (parsed, and valid by
    :func:`validate_result`); empty if nothing. The reports skip such a run, naming these.

    - ``metrics.csv`` holds a row per trained epoch, as many as ``epochs`` says: a finished run
      without them is not whole;
    - ``top1`` (the final model's) is never above ``top1_best``, the best over the epochs that held
      the final sparsity, the last epoch among them: the final evaluation may differ from the last
      epoch's by one test example (its rounding differs where sparse kernels ran), the test-set
      size read from ``predictions.npz``; without that file, by nothing.
    """
    run_dir = Path(run_dir)
    fix = f"restore it, or delete {run_dir} to train the run again"
    problems = []
    try:
        with open(run_dir / METRICS, newline="", encoding="utf-8") as handle:
            epochs = sum(1 for _ in csv.DictReader(handle))
    except FileNotFoundError:
        problems.append(f"no {METRICS} beside its {RESULT} ({fix})")
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        problems.append(f"{METRICS} unreadable ({error}; {fix})")
    else:
        trained = result.get("epochs")
        if not epochs:
            problems.append(f"{METRICS} holds no epoch ({fix})")
        elif isinstance(trained, int) and epochs != trained:
            problems.append(f"{METRICS} holds {epochs} epoch(s), its {RESULT} says {trained} were trained: the "
                            f"file was cut short or mixes two runs ({fix})")
    best = result.get("top1_best")
    if _is_number(best) and result["top1"] > best + 1e-9:  # only then is the test-set size read
        try:
            predictions = read_predictions(run_dir)
        except ValueError:
            predictions = None
        examples = len(predictions["targets"]) if predictions is not None else 0
        slack = 100 / examples if examples else 0.0
        if result["top1"] > best + slack + 1e-9:
            problems.append(f"{RESULT}'s top1 {result['top1']:g} lies above its top1_best {best:g}, the best "
                            f"epoch's at the final sparsity (the last epoch is one of those): the file was edited "
                            f"or mixes two runs ({fix})")
    return problems


def is_finished(run_dir: str | os.PathLike) -> bool:
    return read_result(run_dir) is not None


@contextmanager
def lock_run(run_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the run folder's exclusive lock while the body runs; :class:`RunLocked` if held.

    The lock is an ``fcntl.flock`` on ``<run_dir>/.lock``; the file also records the holder's
    PID and host for the message. The kernel drops the lock when its process exits, however
    it exits (SIGKILL included), so a stale ``.lock`` file never blocks a later run.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise RunLocked(f"run folder {run_dir} is being trained by another process ({holder}); "
                            f"wait for it to finish, or stop that process") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def write_failure(run_dir: Path, message: str) -> None:
    """``failed.txt``: why a run that trained to its end is not a result (it missed its target)."""
    atomic_write_text(Path(run_dir) / FAILED, message + "\n")


def read_failure(run_dir: Path) -> str | None:
    path = Path(run_dir) / FAILED
    try:
        return path.read_text().strip()
    except OSError:
        return None


def write_config(run_dir: Path, text: str) -> None:
    atomic_write_text(Path(run_dir) / CONFIG, text)


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    atomic_write_csv(Path(run_dir) / METRICS, rows, METRIC_COLUMNS)


def write_checkpoint(run_dir: Path, state: dict) -> None:
    atomic_torch_save(state, Path(run_dir) / CHECKPOINT)


def write_dense_model(run_dir: Path, state_dict: dict) -> None:
    atomic_torch_save(state_dict, Path(run_dir) / MODEL_DENSE)


def _class_array(values) -> np.ndarray:
    array = np.asarray(values)
    return array.astype(np.int16 if array.size == 0 or array.max() < 2**15 else np.int32)


def write_predictions(run_dir: Path, targets, final, dense=None) -> None:
    """``predictions.npz``: one predicted class per test example (int16), compressed, atomically."""
    arrays = {"targets": _class_array(targets), "final": _class_array(final)}
    if dense is not None:
        arrays["dense"] = _class_array(dense)
    if any(len(a) != len(arrays["targets"]) for a in arrays.values()):
        raise ValueError(f"predictions for {run_dir}: arrays of different lengths {[len(a) for a in arrays.values()]}")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(Path(run_dir) / PREDICTIONS, buffer.getvalue())


def read_predictions(run_dir: str | os.PathLike) -> dict[str, np.ndarray] | None:
    """``{"targets", "final"[, "dense"]}`` of a run, or None when it has none (older runs)."""
    path = Path(run_dir) / PREDICTIONS
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key].astype(np.int64) for key in data.files}
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is unreadable ({error}); delete it (the run's result stays valid)") from error


def finish(run_dir: Path, model_state: dict, result: dict[str, Any], predictions: dict | None = None) -> None:
    """Write the final model, the predictions and, last, ``result.json``; drop the checkpoint."""
    run_dir = Path(run_dir)
    atomic_torch_save(model_state, run_dir / MODEL_FINAL)
    if predictions is not None:
        write_predictions(run_dir, **predictions)
    atomic_write_json(run_dir / RESULT, result)
    (run_dir / CHECKPOINT).unlink(missing_ok=True)
