"""One module per plan step: its config (a frozen dataclass registered with @step_config), its checks, its
ordering constraints (`after`), the per-layer fields the Plan page draws (`layer_fields`, with `from_rows` /
`to_rows`) and its estimate hook (`encoding`, and `estimate_layer` where the step stores a layer its own way).

This package is the ground floor (no torch): complab.plan imports it to parse and validate a recipe. A step's
handler is the torch code that runs it, registered beside the other methods (methods/registry.py @handler).
Every module of this package is imported here, so a new step needs no central list.
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
