"""Model files that hold code (Ultralytics pickles, TorchScript), opened in a one-shot child process, never in the
Streamlit server (DESIGN.md, "Trust").

Loading either runs code its author chose: a pickle's `__reduce__`, a TorchScript archive's `__setstate__` and
`forward` (e.g. `torch.from_file(path, shared=True, ...)` writes any file the process may write). Both load only
with the person's trust (--trust, the app's checkbox). The CLI and the engine's workers then load the file in
their own process (the person's command; a worker started for it). The Streamlit server never does: it starts
`python -m complab.codeload REQUEST.json`, a fresh interpreter (exec'd, not forked from the server)
that caps its own address space and CPU time, loads the file and writes back data only, which the server
checks as it checks any file it receives:

- an Ultralytics detector: its architecture record (yaml, class names, image size) as JSON and its tensors as
  safetensors; the server rebuilds it with detector.handle_from_decoded_detector, the allow-listed path a
  compact file takes (nothing unpickled, the yaml checked before Ultralytics sees it);
- a TorchScript classifier: its measured numbers (accuracy, sizes, latency, layer table) as JSON
  (complab/measure_child.py, which runs its child through this module's runner). Its code is the model, so
  the server cannot rebuild it without running that code: the app measures a trusted
  TorchScript file this way and does not make it the active model (TorchScript is for evaluation only,
  handle.EVALUATION_ONLY; IN_SERVER says what to do instead).

The server kills the child's whole process group after a timeout; a child that runs out of memory or crashes
is reported in one line.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from safetensors.torch import load_file, save_file

from complab.errors import CompressionLabError, ModelLoadError, first_line
from complab.models.detector import handle_from_decoded_detector, load_detector

MEMORY_LIMIT_BYTES = 8 << 30  # the child's address space (torch alone maps ~2 GiB of it)
DETECTOR_TIMEOUT_S = 300.0  # load a checkpoint and write its tensors
RESULT_LIMIT_BYTES = 16 << 20  # the JSON a child hands back
PACKAGE_ROOT = Path(__file__).resolve().parents[1]

IN_SERVER = (
    "TorchScript is code, and the app never runs an uploaded model's code in its server: it measures a trusted "
    "TorchScript file in a separate process on the Model page but cannot make it the active model; save its state "
    "dict with torch.save(model.state_dict()) and upload it with its torchvision architecture, or use the CLI "
    "with --trust")


def detector_in_child(path: str | Path, imgsz: int | None = None, timeout: float = DETECTOR_TIMEOUT_S):
    """A trusted Ultralytics checkpoint as a DetectorHandle, unpickled in a child process, rebuilt here from data."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ModelLoadError(f"detector file {path} does not exist: check the path")

    def rebuild(payload: dict, out: Path):
        meta = payload.get("meta")
        if not isinstance(meta, dict):
            raise ModelLoadError(f"opening {path.name} in a separate process gave no architecture record: "
                                 "it is not an Ultralytics detector checkpoint")
        try:
            state = load_file(str(out / "state.safetensors"), device="cpu")
        except Exception as exc:  # noqa: BLE001 - a missing or damaged tensor file, whatever the reader says
            raise ModelLoadError(f"opening {path.name} in a separate process gave no readable tensors "
                                 f"({first_line(exc, 120)}): check the file") from None
        # opened from the user's checkpoint (in a child process), not decoded from a compact file
        return replace(handle_from_decoded_detector(meta, state, path.name), file_meta=None, source_file=str(path))

    return run_child("detector", {"path": str(path), "imgsz": imgsz}, timeout, path.name, rebuild)


# --- the parent's side -----------------------------------------------------------------------------------------

def run_child(op: str, request: dict, timeout: float, name: str, parse, module: str = "complab.codeload"):
    """Run `python -m MODULE REQUEST.json` (its `main` does `op`) under the limits; `parse(payload, out)`."""
    with tempfile.TemporaryDirectory(prefix="codeload-") as scratch:
        out = Path(scratch)
        request = {**request, "op": op, "out": str(out), "memory_bytes": MEMORY_LIMIT_BYTES,
                   "cpu_seconds": int(timeout * max(1, os.cpu_count() or 1)) + 60}
        (out / "request.json").write_text(json.dumps(request))
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "",  # CPU only: CUDA cannot start under an address-space cap
               "PYTHONPATH": os.pathsep.join(p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")) if p)}
        with open(out / "stderr.txt", "wb") as err:
            try:
                command = [sys.executable, "-m", module, str(out / "request.json")]
                proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd=scratch,
                                        env=env, start_new_session=True)
            except OSError as exc:
                raise ModelLoadError(f"cannot start a process to open {name} ({first_line(exc, 120)}): check the "
                                     "server's free memory and process limits") from None
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise ModelLoadError(f"opening {name} in a separate process took more than {timeout:.0f} s and was "
                                     "stopped: use a smaller model or the CLI") from None
            finally:
                _kill_group(proc)  # the child, and anything the file's code left running
        payload = _read_result(out / "result.json")
        if payload is None:
            tail = _tail(out / "stderr.txt")
            if proc.returncode in (-signal.SIGKILL, -signal.SIGSEGV, -signal.SIGXCPU) or "MemoryError" in tail:
                raise ModelLoadError(f"opening {name} in a separate process ran out of its "
                                     f"{MEMORY_LIMIT_BYTES >> 30} GiB memory or CPU time (exit {proc.returncode}): "
                                     "use a smaller model or the CLI")
            raise ModelLoadError(f"opening {name} in a separate process failed (exit {proc.returncode}"
                                 f"{': ' + tail if tail else ''}): check the file")
        if "error" in payload:
            lines = [line.strip() for line in str(payload["error"]).splitlines() if line.strip()]
            raise ModelLoadError(lines[0][:500] if lines else f"opening {name} failed: check the file")
        if not isinstance(payload.get("ok"), dict):
            raise ModelLoadError(f"opening {name} in a separate process gave no result: check the file")
        return parse(payload["ok"], out)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _read_result(path: Path) -> dict | None:
    """The child's JSON answer (written by our code, but after the file's code ran: checked as untrusted)."""
    try:
        if not path.is_file() or path.stat().st_size > RESULT_LIMIT_BYTES:
            return None
        payload = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return payload if isinstance(payload, dict) else None


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 4000))
            lines = [line.strip() for line in f.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


# --- the child's side ------------------------------------------------------------------------------------------

def _limit(memory_bytes: int, cpu_seconds: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))


def _detector(request: dict, out: Path) -> dict:
    handle = load_detector(request["path"], trust=True, imgsz=request.get("imgsz"))
    state = {key: value.detach().cpu().contiguous().clone() for key, value in handle.model.state_dict().items()}
    save_file(state, str(out / "state.safetensors"))
    return {"meta": {"task": handle.task, **handle.compact_meta()}}  # architecture, image size, label, fused


OPS = {"detector": _detector}


def main(argv: list[str], ops: dict | None = None) -> int:
    """The child's side: do the request's op (from `ops`, default OPS) and write result.json."""
    request = json.loads(Path(argv[0]).read_text())
    out = Path(request["out"])
    _limit(int(request["memory_bytes"]), int(request["cpu_seconds"]))
    try:
        payload = {"ok": (ops or OPS)[request["op"]](request, out)}
    except CompressionLabError as exc:
        payload = {"error": first_line(exc, 500)}
    except MemoryError:
        payload = {"error": f"opening the file ran out of the {int(request['memory_bytes']) >> 30} GiB memory limit: "
                            "use a smaller model or the CLI"}
    except Exception as exc:  # noqa: BLE001 - whatever the file's code raised: one line for the page
        payload = {"error": f"opening the file failed ({type(exc).__name__}: {first_line(exc, 200)}): check the file"}
    (out / "result.json").write_text(json.dumps(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
