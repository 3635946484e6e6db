"""What a link (the app's URL query) may name on this server, parsed strictly. No Streamlit here: the fuzz
campaign calls these functions directly.

A URL is untrusted (README, "Trust"): anyone can send one. Its numbers are ASCII digits only (`int()` takes
'²' after `isdigit()` said yes, and fails) within a range; its run id is a run folder's name; its dataset is
the demo digits or a folder under a root this server shares:
  - the data folder's datasets (HOME/data, and $COMPRESSION_LAB_DATA when set), where generated data lives;
  - every `--data-root DIR` given to the server (`streamlit run app.py -- --data-root DIR [--data-root DIR2]`);
  - every folder in $COMPRESSION_LAB_DATA_ROOTS (separated by ':' as in PATH).
The folder is resolved (`..` and symlinks followed) before the check, so neither escapes a root. A refusal
says nothing about the folder it names (whether it exists, what it holds).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

NUMBER = re.compile(r"[0-9]{1,5}")
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")  # a run folder's name (complab.engine's rule)
DATA_ROOTS_ENV = "COMPRESSION_LAB_DATA_ROOTS"
DATA_ROOT_ARG = "--data-root"
FOLDER_PREFIXES = ("imagefolder:", "cifar10:", "cifar100:")
MAX_PATH_CHARS = 4096
MAX_IMAGE_INDEX = 99_999


def link_int(value, low: int, high: int) -> int | None:
    """The integer a link's parameter spells (1 to 5 ASCII digits) when it lies in [low, high], else None."""
    if not isinstance(value, str) or not NUMBER.fullmatch(value):
        return None
    number = int(value)
    return number if low <= number <= high else None


def link_image_index(value, count: int) -> int:
    """The validation image a link's `image=N` shows among `count` images: N when it is a plain number below
    count, the last image when it is a larger number, else (missing, '²', '-1', '1e3') the first."""
    number = link_int(value, 0, MAX_IMAGE_INDEX)
    return 0 if number is None or count <= 0 else min(number, count - 1)


def link_run_id(value) -> str | None:
    """A link's `run=ID` when it is a run folder's name (letters, digits, '_' and '-'), else None."""
    return value if isinstance(value, str) and RUN_ID.fullmatch(value) else None


def link_presenting(value) -> bool:
    """Whether a link's `present=` turns presentation mode on (exactly "1")."""
    return value == "1"


def data_roots(home: Path, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> list[Path]:
    """The folders a link's dataset may lie under (see the module docstring), resolved; `home` is the app's data
    folder."""
    argv = sys.argv if argv is None else argv
    env = os.environ if env is None else env
    roots = [Path(home) / "data", *([Path(env["COMPRESSION_LAB_DATA"])] if env.get("COMPRESSION_LAB_DATA") else [])]
    roots += [Path(argv[i + 1]) for i in range(len(argv) - 1) if argv[i] == DATA_ROOT_ARG and argv[i + 1]]
    roots += [Path(part) for part in env.get(DATA_ROOTS_ENV, "").split(os.pathsep) if part]
    out = []
    for root in roots:
        try:
            root = root.expanduser()
            if root.is_absolute():  # a relative root would depend on the server's working folder
                out.append(root.resolve())
        except (OSError, RuntimeError, ValueError):
            continue
    return out


def link_data_problem(data, roots: Sequence[Path]) -> str | None:
    """None when a link may name the dataset `data`, else why not (one sentence that names nothing on disk).

    Allowed: "digits", and imagefolder:/cifar10:/cifar100: with an absolute folder, free of '..', that lies
    (resolved) inside one of `roots` (data_roots())."""
    if data == "digits":
        return None
    if not isinstance(data, str) or not data.startswith(FOLDER_PREFIXES):
        return f"The link's data {str(data)[:60]!r} is not digits or a dataset folder."
    folder = data.split(":", 1)[1]
    refused = ("The link's dataset folder is not under a folder this server shares for links (its data folder, "
               "or one its owner allowed with `streamlit run app.py -- --data-root DIR`): open the dataset from the "
               "Model page instead.")
    if not folder or len(folder) > MAX_PATH_CHARS or "\x00" in folder or ".." in Path(folder).parts:
        return refused
    try:
        path = Path(folder).expanduser()
        if not path.is_absolute():
            return refused
        path = path.resolve()
    except (OSError, RuntimeError, ValueError):
        return refused
    if not any(path.is_relative_to(root) for root in roots):
        return refused
    return None
