"""Content keys: what a run computes, as a sha256 of everything its result depends on.

    content_key(job) -> str | None        (None: the data could not be fingerprinted; such a run is never reused)
    data_fingerprint(ref) -> str | None   (the dataset's files, not its name)
    code_version() -> str                 (the package version and a hash of its source, once per process)

A run's key is computed when it is submitted and kept in its job.json ("content_key"), so a later submission
is compared with what the data and the model files were when the earlier run read them, never with what they
are now (recomputing an old run's key from today's files would always match). The key covers:

- the job's settings: kind, model, data reference, input size, normalisation, plan (its name left out: a
  label), latency, sensitivity config;
- the bytes of the files the model comes from: weights, a TorchScript or detector checkpoint (sha256);
- the data: for a folder (imagefolder:, cifar10:, cifar100:) a manifest of its files (relative paths, sizes
  and modification times, plus a content hash of each file for small sets), walked with a bound on the
  number of entries and the time taken, never following a directory link out of the folder or twice into
  the same folder (a link cycle); for yolo:FILE.yaml the yaml's bytes and the manifest of every split it
  names (and the matching labels folders); the built-in digits and shapes by name (the code version
  covers them);
- the code version, so results computed by another release (or another edit of the source) are not reused.

A dataset too big to walk within the bounds gets no key: its runs always run afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path

from complab import code_version, sources

KEY_FIELDS = ("kind", "model", "data", "input_size", "mean", "std", "plan", "latency", "config", "seconds")
MAX_ENTRIES = 200_000  # files and folders one dataset manifest may list; beyond it the data gets no key
MAX_WALK_SECONDS = 20.0  # one manifest's walk (a slow network disk): beyond it the data gets no key
HASH_MAX_FILES = 2_000  # a set this small (in files and bytes) is keyed by its files' contents too
HASH_MAX_BYTES = 64 << 20
MAX_YAML_BYTES = 1 << 20
MAX_LIST_LINES = 100_000  # image-list (.txt) splits of a YOLO yaml: lines, and bytes read
MAX_LIST_BYTES = 16 << 20
_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256 of the file's bytes


class TooBig(Exception):
    """The dataset exceeds the manifest's bounds."""


def _open_regular(path: str | Path):
    """A regular file opened for reading, else None: a FIFO would block the open, /dev/zero never ends."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (OSError, ValueError):  # ValueError: a NUL byte in the path
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except OSError:
        os.close(fd)
        return None


def _read_bounded(path: str | Path, limit: int) -> bytes | None:
    """A regular file's bytes (None when it is not one or cannot be read); TooBig past `limit` bytes."""
    handle = _open_regular(path)
    if handle is None:
        return None
    try:
        with handle:
            data = handle.read(limit + 1)
    except OSError:
        return None
    if len(data) > limit:
        raise TooBig
    return data


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, cached by (path, size, modification time) so a sweep hashes a big checkpoint
    once; "missing" for a file that cannot be read or is not a regular file (a FIFO, a device): a run of such a
    file is never reused."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):  # ValueError: a NUL byte in the path
        return "missing"
    if not stat.S_ISREG(info.st_mode):
        return "missing"
    cache_key = (str(path), info.st_size, info.st_mtime_ns)
    if cache_key not in _DIGESTS:
        digest = hashlib.sha256()
        handle = _open_regular(path)
        if handle is None:
            return "missing"
        try:
            with handle as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        except (OSError, ValueError):
            return "missing"
        _DIGESTS[cache_key] = digest.hexdigest()
    return _DIGESTS[cache_key]


def _walk(root: Path, budget: list[int], deadline: float) -> list[tuple[str, int, int, str]]:
    """(relative path, size, mtime_ns, full path) of every file under `root`, sorted; directory links are
    followed only to a folder inside `root` not visited before. Raises TooBig past the bounds."""
    real_root = os.path.realpath(root)
    files: list[tuple[str, int, int, str]] = []
    try:
        top = os.stat(root)
    except (OSError, ValueError):
        return files
    seen = {(top.st_dev, top.st_ino)}
    stack = [(str(root), "")]
    while stack:
        folder, rel = stack.pop()
        entries = []
        try:
            with os.scandir(folder) as listing:
                for entry in listing:  # counted as read: a folder of millions stops at the bound, not after it
                    budget[0] -= 1
                    if budget[0] < 0 or time.monotonic() > deadline:
                        raise TooBig
                    entries.append(entry)
        except OSError:
            continue
        for entry in sorted(entries, key=lambda e: e.name):  # the same tree walks the same way
            name = f"{rel}/{entry.name}" if rel else entry.name
            try:
                info = os.stat(entry.path)  # follows a link: a linked file counts with its target's size and time
            except OSError:
                files.append((name, -1, 0, ""))  # a dangling link: listed, so adding its target changes the key
                continue
            if stat.S_ISDIR(info.st_mode):
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if os.path.commonpath([real_root, target]) != real_root:
                        files.append((name, -2, 0, ""))  # a link out of the folder: named, never followed
                        continue
                if (info.st_dev, info.st_ino) in seen:
                    continue  # a link back to a folder already walked (a cycle): once is enough
                seen.add((info.st_dev, info.st_ino))
                stack.append((entry.path, name))
            elif stat.S_ISREG(info.st_mode):
                files.append((name, info.st_size, info.st_mtime_ns, entry.path))
    return sorted(files)


def folder_manifest(root: str | Path, budget: list[int] | None = None, deadline: float | None = None) -> str:
    """sha256 of the manifest of a folder's files (see the module docstring). Raises TooBig past the bounds."""
    budget = budget if budget is not None else [MAX_ENTRIES]
    deadline = deadline if deadline is not None else time.monotonic() + MAX_WALK_SECONDS
    files = _walk(Path(root), budget, deadline)
    small = len(files) <= HASH_MAX_FILES and sum(max(0, size) for _, size, _, _ in files) <= HASH_MAX_BYTES
    digest = hashlib.sha256()
    for name, size, mtime, path in files:
        content = file_digest(path) if small and path else ""
        digest.update(json.dumps([name, size, mtime, content]).encode() + b"\n")
    return digest.hexdigest()


def _path_manifest(path: Path, budget: list[int], deadline: float) -> str:
    if path.is_dir():
        return "dir:" + folder_manifest(path, budget, deadline)
    if path.is_file():
        return "file:" + file_digest(path)
    return "missing"


def _labels_of(path: Path) -> Path | None:
    """Ultralytics' labels folder for an images folder: the last `images` part of the path becomes `labels`."""
    parts = list(path.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    return None


def _yaml_fingerprint(yaml_path: Path, budget: list[int], deadline: float) -> dict:
    """The yaml's bytes and the manifest of each split it names (folder, image list and its files, labels)."""
    import yaml  # (only for a yolo: dataset; ultralytics' dependency, not the CLI's)

    raw = _read_bounded(yaml_path, MAX_YAML_BYTES)  # never a FIFO's open or /dev/zero's endless bytes
    if raw is None:
        return {"yaml": "missing"}
    out: dict = {"yaml": hashlib.sha256(raw).hexdigest(), "splits": {}}
    try:
        data = yaml.safe_load(raw)
    except (yaml.YAMLError, ValueError, RecursionError):
        return out  # the run refuses it; its bytes are the key
    if not isinstance(data, dict):
        return out
    base = data.get("path") if isinstance(data.get("path"), str) and data.get("path") else str(yaml_path.parent)
    base = Path(os.path.expanduser(base))
    if not base.is_absolute():
        base = yaml_path.parent / base
    for key in ("train", "val", "test"):
        values = data.get(key)
        values = values if isinstance(values, list) else [values]
        found = []
        for value in [v for v in values if isinstance(v, str) and v][:16]:  # only strings: never str() a graph
            path = Path(os.path.expanduser(str(value)))
            path = path if path.is_absolute() else base / path
            if path.is_file() and path.stat().st_size > MAX_LIST_BYTES:  # before hashing it: a 100 GB "list"
                raise TooBig
            entry = {"path": str(path), "images": _path_manifest(path, budget, deadline)}
            if path.is_file():  # an image list: the files it names, and their labels
                text = _read_bounded(path, MAX_LIST_BYTES) or b""
                lines = [line.strip() for line in text.decode(errors="replace").splitlines() if line.strip()]
                if len(lines) > MAX_LIST_LINES:
                    raise TooBig
                listed = []
                for line in lines:
                    budget[0] -= 2
                    if budget[0] < 0 or time.monotonic() > deadline:
                        raise TooBig
                    image = Path(line) if Path(line).is_absolute() else path.parent / line
                    label = _labels_of(image)
                    listed.append([line, _stat(image), _stat(label.with_suffix(".txt")) if label else None])
                entry["listed"] = hashlib.sha256(json.dumps(listed).encode()).hexdigest()
            else:
                labels = _labels_of(path)
                if labels is not None:
                    entry["labels"] = _path_manifest(labels, budget, deadline)
            found.append(entry)
        out["splits"][key] = found
    return out


def _stat(path: Path) -> list[int] | None:
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return [info.st_size, info.st_mtime_ns]


def data_fingerprint(ref) -> str | None:
    """sha256 of what the dataset reference `ref` reads (module docstring); None when it is too big to walk
    within the bounds (MAX_ENTRIES, MAX_WALK_SECONDS) or cannot be read as a reference at all (a `~user` that
    does not exist, a NUL byte, a reference nested past JSON's depth): such data is never reused. Never raises:
    the reference comes from a job, a link or a received run folder."""
    try:
        if not isinstance(ref, str):
            return hashlib.sha256(json.dumps(ref, default=str).encode()).hexdigest()
        kind, arg = sources.data_files(ref) or ("builtin", ref)
        budget, deadline = [MAX_ENTRIES], time.monotonic() + MAX_WALK_SECONDS
        if kind == "folder":
            what = {"folder": _path_manifest(Path(os.path.expanduser(arg)), budget, deadline)}
        elif kind == "yaml":
            what = _yaml_fingerprint(Path(os.path.expanduser(arg)), budget, deadline)
        else:
            what = {"builtin": ref}  # digits, shapes: generated by this code, covered by its version
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
    except (TooBig, RecursionError, OSError, ValueError, RuntimeError, UnicodeError):
        return None


def content_key(job: dict, memo: dict | None = None) -> str | None:
    """What a run computes, as a sha256 (see the module docstring), or None when its data is too big to
    fingerprint (never reused). The prediction and the sweep tag are left out: they ride with a run but do
    not change its result. `job` is a validated job with absolute paths (as the store keeps it). `memo` (a dict
    the caller keeps for one submission) walks each dataset once for many jobs (a sweep's members)."""
    fields = {key: job.get(key) for key in KEY_FIELDS}
    if isinstance(fields["plan"], dict):
        fields["plan"] = {key: value for key, value in fields["plan"].items() if key != "name"}
    files = {}
    if job.get("weights"):
        files["weights"] = file_digest(job["weights"])
    for key, _, path in sources.named_files(job):
        if key == "model":  # a model file (TorchScript, an Ultralytics checkpoint); the weights file is above
            files["model"] = file_digest(path)
    data = None
    if job.get("data") is not None:
        ref = json.dumps(job["data"], default=str)
        if memo is not None and ref in memo:
            data = memo[ref]
        else:
            data = data_fingerprint(job["data"])
            if memo is not None:
                memo[ref] = data
        if data is None:
            return None
    text = json.dumps({"job": fields, "files": files, "data": data, "code": code_version()}, sort_keys=True,
                      separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
