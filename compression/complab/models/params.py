"""Turn constrained weights back into plain parameters: remove every parametrization, keep its values.

Methods constrain weights with `torch.nn.utils.parametrize` (pruning masks, shared cluster values,
vector-quantized codebooks); what is stored, fused or exported is the plain weight they produce.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize


def bake(model: nn.Module) -> None:
    """Remove every parametrization, leaving the constrained weights as plain parameters."""
    for module in model.modules():
        if parametrize.is_parametrized(module):
            # torch gives a parametrized module its own class and removal deletes the class's properties;
            # a deep copy shares that class with the original, so give this module a private one first
            cls = module.__class__
            module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
            for name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
