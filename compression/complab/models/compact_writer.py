"""The compact file's one writer, for a handle of any task, and what compression made that the file must store."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from complab import __version__
from complab.models import actquant
from complab.storage import write_file


@dataclass
class Products:
    """What compression made besides the weights that the file must store to rebuild the model.

    Step handlers return these in their StepResult (methods/context.py); compress collects them and hands
    them to write_compact. Nothing rides on attributes of the model.
    """

    # Torch-Pruning replay records [module name, out-channels?, [channel indices]], in the order applied
    channel_history: list = field(default_factory=list)
    # weight tensor name -> codebooks + codes of a vector-quantized layer (stored as "vq" sections)
    vq_structures: dict = field(default_factory=dict)
    # weight tensor name -> storage.int_section.IntWeights (levels + scales) of an integer-quantized layer (stored
    # as "int" sections when they decode to exactly the weight)
    int_weights: dict = field(default_factory=dict)
    folded_bn: bool = False  # a detector's batch norms were folded into its convolutions
    # a detector's C2f modules replaced by split-free C2fV2 before channel pruning (models/yolo_prunable.py):
    # the decoder repeats the replacement before it replays channel_history
    c2f_replaced: list = field(default_factory=list)

    def merge(self, other: Products) -> None:
        self.channel_history.extend(other.channel_history)
        self.c2f_replaced.extend(other.c2f_replaced)
        self.vq_structures.update(other.vq_structures)
        self.int_weights.update(other.int_weights)
        self.folded_bn = self.folded_bn or other.folded_bn


def write_compact(handle, path: str | Path, extra: dict | None = None, products: Products | None = None) -> int:
    """Encode a handle's model (classifier or detector) into our compact format; returns the bytes written.

    The meta records the producer, the handle's task and what rebuilds it (`handle.compact_meta()`), the
    channel-pruning record, the 8-bit activation table of the hooks installed on the model (`int_quant`,
    models/actquant.py), then `extra` (the plan, the data reference). Integer levels come from the products and
    from the handle itself (a decoded integer model saved again); each is stored as such only where it decodes to
    exactly the weight in the state dict.
    """
    products = products or Products()
    meta = {"producer": f"complab {__version__}", "task": handle.task, **handle.compact_meta()}
    history = list(handle.channel_history) + list(products.channel_history)
    if history:  # channels were removed: the decoder replays this record on the built architecture
        meta["channel_pruning"] = history
    replaced = list(handle.c2f_replaced) + list(products.c2f_replaced)  # (a detector's C2f)
    if replaced:
        meta["c2f_replaced"] = replaced
    if products.folded_bn:
        meta["fused"] = True
    activations = actquant.table_of(handle.model)
    if activations:  # hooks are not in the state dict: the decoder installs them again from this table
        meta["int_quant"] = actquant.to_meta(activations)
    meta.update(extra or {})
    # x + 0.0 == x for every x except -0.0, which becomes +0.0: pruned weights (w * 0) keep the sign bit,
    # and the bit-exact codec would otherwise have to store every negative zero as a non-zero
    state = {k: (v.detach().cpu() + 0.0 if v.is_floating_point() else v.detach().cpu())
             for k, v in handle.model.state_dict().items()}
    structures = {**getattr(handle, "int_weights", {}), **products.vq_structures, **products.int_weights}
    return write_file(path, state, meta, handle.layer_kinds(), structures=structures or None)
