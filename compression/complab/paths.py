"""Where things live (assets, the data folder, generated data, Ultralytics' settings) and writing files safely.

Folders: `ASSETS` (the shipped demo weights, cards and recipes), `home()` (the data folder: run store,
uploads, caches; $COMPRESSION_LAB_HOME, else the per-user data folder), `data_home()` (generated
datasets; $COMPRESSION_LAB_DATA, else home()/data) and `ultralytics_config_dir()` (home()/ultralytics).

Every file a command writes (a compact model, an export, metrics) goes to a temporary name beside
its target and is renamed into place, so a crash or a full disk never leaves half a file under the
real name, and the temporary file is removed when the write fails. An OSError from a full, read-only
or forbidden place becomes an OutputError that names the path and what to do.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from complab.errors import CompressionLabError

ASSETS = Path(__file__).resolve().parents[2] / "assets"  # compression/complab/paths.py -> the repository root


def home() -> Path:
    """The data folder (run store, uploads, caches): $COMPRESSION_LAB_HOME, else the per-user data folder."""
    if os.environ.get("COMPRESSION_LAB_HOME"):
        return Path(os.environ["COMPRESSION_LAB_HOME"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("compression-lab"))


class HomeError(CompressionLabError):
    """The data folder named by --home or $COMPRESSION_LAB_HOME cannot be one: empty, or not on a disk."""


# file systems whose folders are the kernel's views, not storage: a data folder there can never be written
PSEUDO_FILE_SYSTEMS = ("/proc", "/sys", "/dev")


def home_option(value: str | Path) -> Path:
    """The data folder a user named (`--home DIR`, the app's `-- --home DIR`), checked by check_home.

    The value is taken as typed: an empty one is refused here, before `Path("")` turns it into the current
    folder (which would then fill with a run store)."""
    if isinstance(value, str) and not value.strip():
        raise HomeError("--home is empty: give the data folder, e.g. --home ~/complab (or leave --home out "
                        "for $COMPRESSION_LAB_HOME, else the per-user data folder)")
    return check_home(Path(os.path.expanduser(value)))


def check_home(path: str | Path) -> Path:
    """`path` if it can be a data folder, else a HomeError that says why: a folder on a kernel file system (/proc,
    /sys, /dev: no disk, so "full" or "read-only" would be the wrong story) or on one that reports no size at all."""
    path = Path(os.path.expanduser(path))
    if not str(path).strip():
        raise HomeError("the data folder is empty: set --home or $COMPRESSION_LAB_HOME to a folder")
    absolute = Path(os.path.abspath(path))
    for top in PSEUDO_FILE_SYSTEMS:
        if absolute.is_relative_to(top):
            raise HomeError(f"the data folder {path} is on {top}, a kernel file system, not a disk: point --home / "
                            "$COMPRESSION_LAB_HOME at a folder on a disk")
    probe = absolute
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        import shutil

        total = shutil.disk_usage(probe).total
    except OSError:
        return path
    if total == 0:
        raise HomeError(f"the data folder {path} is on a file system with no storage (like /proc): point --home / "
                        "$COMPRESSION_LAB_HOME at a folder on a disk")
    return path


def data_home() -> Path:
    """Where generated datasets live: $COMPRESSION_LAB_DATA, else home()/data."""
    if os.environ.get("COMPRESSION_LAB_DATA"):
        return Path(os.environ["COMPRESSION_LAB_DATA"]).expanduser()
    return home() / "data"


def ultralytics_config_dir() -> Path:
    """Ultralytics' settings folder (YOLO_CONFIG_DIR): ours, so it never writes or downloads elsewhere."""
    return home() / "ultralytics"


class OutputError(CompressionLabError):
    """An output path cannot be written: missing folder, a folder in the way, full or read-only disk."""


def describe_os_error(exc: OSError, path: str | Path) -> str:
    """One line naming the problem with `path` and the fix, for the errors a user's machine produces."""
    path = Path(path)
    code = exc.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk holding {path} is full: free some space (or choose another folder) and try again"
    if code == errno.EROFS:
        return f"{path} is on a read-only file system: choose a writable folder"
    if code in (errno.EACCES, errno.EPERM):
        return f"no permission to write {path}: choose a folder you can write to"
    if code == errno.ENOENT:
        return f"the folder {path.parent} does not exist: create it or choose another path"
    if code == errno.EISDIR:
        return f"{path} is a folder: give a file name inside it"
    if code == errno.ENOTDIR:
        return f"a part of {path} is a file, not a folder: choose another path"
    if code == errno.ENAMETOOLONG:
        return f"the path {str(path)[:80]}... is too long: choose a shorter name"
    return f"cannot write {path}: {exc.strerror or type(exc).__name__}"


def check_output_file(path: str | Path, suffixes: tuple[str, ...], force: bool = False) -> Path:
    """A file path the user asked us to write: right suffix, parent folder exists, nothing overwritten unasked."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"{path} is a folder: give a file name inside it, e.g. {path / ('model' + suffixes[0])}")
    if path.suffix.lower() not in suffixes:
        raise OutputError(f"{path.name} has an unknown extension: use {' or '.join(suffixes)}")
    if not path.parent.is_dir():
        raise OutputError(f"the folder {path.parent} does not exist: create it or choose another path")
    if path.exists() and not force:
        raise OutputError(f"{path} already exists: choose another name or pass --force to replace it")
    return path


def replace_atomically(path: str | Path, data: bytes | str) -> int:
    """Write `data` to `path` through a temporary file in the same folder, fsync, rename; OSError as it comes.

    The temporary file is removed when writing fails (a full disk leaves nothing behind); its name holds
    the process and thread, so concurrent writers never share one.
    """
    import threading

    path = Path(path)
    data = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(data)


def write_bytes_atomic(path: str | Path, data: bytes | str) -> int:
    """replace_atomically, with an OSError turned into an OutputError naming the problem (its cause kept)."""
    try:
        return replace_atomically(path, data)
    except OSError as exc:
        raise OutputError(describe_os_error(exc, Path(path))) from exc


def prepare_output_dir(folder: str | Path, results: tuple[str, ...], force: bool = False) -> Path:
    """An output folder that exists, is writable and holds no earlier `results` (unless `force`)."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} is a file, not a folder: choose a folder for the results")
    earlier = [name for name in results if (folder / name).exists()]
    if earlier and not force:
        raise OutputError(f"{folder} already holds results of an earlier run ({', '.join(earlier)}): choose a new "
                          "folder or pass --force to replace them")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(describe_os_error(exc, folder)) from None
    return folder
