"""Atomic file writes and safe checkpoint loading: a crash never leaves a half-written file."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence



def _temporary_beside(path: Path) -> tuple[int, Path]:
    """A new file ``.<name>.<random>.tmp`` beside ``path``, open for writing, with the mode ``open()``
    gives a new file (0o666 less the umask; ``tempfile.mkstemp``'s 0o600 would keep a lab's
    colleagues from reading the runs)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def user_cache_root() -> Path:
    """The project's per-user cache: ``${XDG_CACHE_HOME:-~/.cache}/acdc-bench``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "acdc-bench"


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename over ``path``.

    The file gets the mode ``open()`` would give it (0o666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_csv(path: str | Path, rows: Sequence[dict], columns: Sequence[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    atomic_write_text(path, buffer.getvalue())


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    import torch  # here, not at import: the command line pins numerics before torch starts

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


@contextmanager
def staged(*folders: str | Path) -> Iterator[list[Path]]:
    """Temporary folders standing in for ``folders``, for output that is written whole or not at all.

    The body writes into the folders yielded (one per folder given); when it returns, every target is
    checked (no folder where a file goes, no file where a folder goes), then every file it wrote is
    renamed to the same place under the real folder; when it or a check fails, nothing is moved, the
    temporary folders are removed, and so are the real folders this call created. The temporary
    folders lie inside the real ones (hidden, ``.staging-*``), so the renames stay on one file system
    (a mount point or a Docker volume as ``--out``) and a folder whose parent is read-only works.
    Errors name the user's path, never a temporary one."""
    folders = [Path(folder) for folder in folders]
    stages: list[Path] = []
    created: list[Path] = []
    try:
        for folder in folders:
            missing = [path for path in (folder, *folder.parents) if not path.exists()]
            try:
                folder.mkdir(parents=True, exist_ok=True)
                created += [path for path in missing if path.exists()]
                stages.append(Path(tempfile.mkdtemp(prefix=".staging-", dir=folder)))
            except OSError as error:
                raise type(error)(error.errno, error.strerror, str(folder)) from error
        yield stages
        moves = [(source, folder, folder / source.relative_to(stage)) for stage, folder in zip(stages, folders)
                 for source in sorted(p for p in stage.rglob("*") if p.is_file())]
        for _, folder, target in moves:
            _check_target(target, folder)
        for source, _, target in moves:
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(source, target)
            except OSError as error:
                raise type(error)(error.errno, error.strerror, str(target)) from error
        created = []
    finally:
        for stage in stages:
            shutil.rmtree(stage, ignore_errors=True)
        for path in sorted(created, key=lambda p: len(p.parts), reverse=True):
            try:
                path.rmdir()  # only if the failed call left it empty
            except OSError:
                pass


def _check_target(target: Path, folder: Path) -> None:
    """Refuse, before anything moves, a target that a folder occupies or whose folders are files."""
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "a folder is where this file is to be written", str(target))
    for parent in target.relative_to(folder).parents:
        path = folder / parent
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "a file is where a folder is to be written", str(path))


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only)."""
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - re-raised with the path and a fix
        raise RuntimeError(
            f"checkpoint {path} could not be loaded safely ({error}); delete it to restart the run"
        ) from error


def flatten(mapping: dict, separator: str = "_", keep: tuple = (), prefix: str = "") -> dict:
    """Nested dicts as one level, ``parent<separator>child`` keys; the keys in ``keep`` stay whole."""
    flat: dict = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key not in keep:
            flat.update(flatten(value, separator, keep, f"{name}{separator}"))
        else:
            flat[name] = value
    return flat
