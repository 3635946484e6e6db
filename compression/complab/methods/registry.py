"""Step type -> handler. Each method file registers its own handler next to it with @handler(StepConfig).

A handler is `run(model, step, ctx) -> StepResult`: it changes `model` in place and returns its report
and what it made for the file (methods/context.py). A new method is its step module (complab/steps/: the
config, its checks, ordering, Plan-page fields and estimate hook, torch-free so a recipe parses without
torch) and its handler, one file in this package; `handler_for` imports every module of the package once,
so registration needs no central list.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from complab.errors import PlanError

HANDLERS: dict[str, Callable] = {}


def handler(config: type) -> Callable[[Callable], Callable]:
    """Register the decorated function as the handler of `config`'s step type."""

    def register(run: Callable) -> Callable:
        if HANDLERS.get(config.type, run) is not run:
            raise ValueError(f"step type {config.type!r} has two handlers")
        HANDLERS[config.type] = run
        return run

    return register


def _import_methods() -> None:
    import complab.methods as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")


def handler_for(step_type: str) -> Callable:
    """The registered handler of a step type (PlanError when no method file registers one)."""
    if step_type not in HANDLERS:
        _import_methods()
    if step_type not in HANDLERS:
        raise PlanError(f"step type {step_type!r} has no handler: no file in compression/methods registers one")
    return HANDLERS[step_type]
