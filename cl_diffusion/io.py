"""Safe file output: atomic writes, fresh run directories, provenance.

Every file a run writes goes through :func:`atomic_write_bytes` (temp file in the same folder,
fsync, ``os.replace``), so a kill at any moment leaves either the old file or the new one.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from . import __version__
from .errors import RunFailure


_UMASK = os.umask(0)
os.umask(_UMASK)


class OutputError(RunFailure):
    """A write failed for a reason of the machine, not of the run's input: a full disk, a read-only
    or vanished folder. One line ``error: ...`` and exit status 1, as every run failure (cli_main);
    the file it was writing keeps its previous content (the last good checkpoint stays intact)."""


#: errno -> what it means for the folder written to
_FAULTS = {errno.EROFS: "is on a read-only file system", errno.EACCES: "is not writable by this user",
           errno.EPERM: "is not writable by this user", errno.ENOENT: "no longer exists (deleted or unmounted?)"}


def write_error(path: Path, err: OSError, n_bytes: int) -> OSError:
    """An :class:`OutputError` naming ``path`` for a full disk (with the bytes needed and free), a
    read-only or a vanished folder; ``err`` itself for any other failure."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = f"{shutil.disk_usage(path.parent).free:,} free"
        except OSError:
            free = "free space unknown"
        what = "no space left on the device" if err.errno == errno.ENOSPC else "disk quota exceeded"
        return OutputError(f"{what} writing {path}: it needs {n_bytes:,} bytes ({free}); the previous "
                           "version of the file is kept; free some space, then resume the run (--resume RUN_DIR)")
    if err.errno in _FAULTS:
        return OutputError(f"cannot write {path}: its folder {path.parent} {_FAULTS[err.errno]} ({err.strerror}); "
                           "the previous version of the file is kept")
    return err


def require_folder(path: Path, what: str = "folder") -> None:
    """:class:`OutputError` if the folder ``path`` has vanished (never silently recreate it)."""
    if not Path(path).is_dir():
        raise OutputError(f"the {what} {path} no longer exists (deleted or unmounted?); nothing more is written")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename); a full disk, read-only or
    vanished folder raises :class:`OutputError` and leaves ``path`` as it was."""
    path = Path(path)
    try:
        _atomic_write(path, data)
    except OSError as err:
        raise write_error(path, err, len(data)) from None


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


def write_csv(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write rows (dicts) as CSV atomically; columns in first-seen order."""
    rows = list(rows)
    columns: list[str] = []
    for r in rows:
        columns += [c for c in r if c not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: _fmt(r.get(c, "")) for c in columns})
    atomic_write_text(path, buf.getvalue())


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return "" if v != v else repr(v)  # NaN -> blank, floats with full precision
    return v


def new_run_dir(parent: Path, stem: str) -> Path:
    """Create a new, empty run directory ``parent/stem-YYYYmmdd-HHMMSS-<random>``.

    ``os.mkdir`` is exclusive, so two runs started at the same moment never share a folder.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        path = parent / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a fresh run directory under {parent}")


def git_commit(repo: Path | None = None) -> str:
    """The current git commit of the source tree ('unknown' outside a checkout), '+dirty' if modified."""
    root = Path(repo) if repo else Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(device: str) -> dict[str, Any]:
    """What identifies the code and machine a run ran on."""
    import platform

    import torch

    name = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine()
    return {"package_version": __version__, "git_commit": git_commit(), "device": device,
            "device_name": name, "cpu_model": cpu_model(), "torch": torch.__version__,
            "python": platform.python_version(), "cpu_threads": torch.get_num_threads(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows: float results
    of the same seed differ between CPU families, so a run records which one it ran on."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
