"""The plan page's channel-pruning section: a "channels kept" slider per channel group, GA and KD settings.

Coupled convolutions (outputs added by skip connections) are one group with one slider, and the page
says why. The section's choice turns into a ChannelStep (and a DistillStep) placed where
complab.plan.ordered() puts them (channels first, distill before clustering / quantization), and
scales the live size and FLOPs estimate. Widget defaults are the step configs' own defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import streamlit as st

from complab.analysis.channel_estimate import ChannelLayout, apply_channels, channel_factors, channel_layout
from complab.errors import PlanError
from complab.plan import ChannelStep, DistillStep, Plan, ordered
from complab.steps.channels import ROUND_TO

CHANNEL_DEFAULTS, DISTILL_DEFAULTS = ChannelStep(), DistillStep()  # the widgets start at the configs' defaults


@st.cache_resource(max_entries=8, show_spinner="Tracing the channel groups...")
def cached_layout(key: str, _model, input_shape: tuple[int, ...], task: str = "classify") -> ChannelLayout | None:
    """The model's channel groups (None when it has none or cannot be traced, e.g. a TorchScript file).

    A detector's copy is made prunable (its C2f split into two convolutions) with the head's outputs left whole,
    as the channels step does: the sliders are the step's groups, keyed by names the step resolves."""
    import copy

    try:
        layout = channel_layout(copy.deepcopy(_model).cpu(), tuple(input_shape), task)
    except Exception:  # noqa: BLE001 - a model the tracer cannot follow simply gets no channel section
        return None
    return layout if layout.groups else None


@dataclass
class ChannelChoice:
    keep_ratio: dict[str, float] = field(default_factory=dict)  # group -> kept fraction (< 1 only)
    options: dict = field(default_factory=dict)  # the ChannelStep's other settings
    distill: dict | None = None  # the DistillStep's settings, or None
    layout: ChannelLayout | None = None

    def factors(self, layers: list[str]) -> dict[str, float]:
        if self.layout is None or not self.keep_ratio:
            return {}
        return channel_factors(self.layout, self.keep_ratio, layers, int(self.options.get("round_to", 1)))

    def apply(self, est: dict, stats, settings: dict) -> dict:
        """The live estimate with the removed channels taken out (FLOPs and bytes)."""
        factors = self.factors(list(stats.layers))
        if not factors:
            return est
        return apply_channels(est, stats, factors, {k: float(v[0]) for k, v in settings.items()})

    def build(self, make_plan: Callable[[], Plan], layers: list[str]) -> Plan:
        """make_plan()'s steps with the channels and distill steps added, all in ORDER_RULES order."""
        try:
            plan = make_plan()
            steps, name = list(plan.steps), plan.name
        except PlanError as exc:
            if not (self.keep_ratio or self.distill) or "has no steps" not in str(exc):
                raise
            steps, name = [], st.session_state.get("plan_name", "plan")
            plan = None
        channels = [ChannelStep(keep_ratio=dict(self.keep_ratio), **self.options)] if self.keep_ratio else []
        distill = [DistillStep(**self.distill)] if self.distill is not None else []
        if plan is not None and not (channels or distill):
            return plan
        # given as channels, the plan's steps, distill: ordered() moves only what a rule says must move
        return Plan(steps=ordered((*channels, *steps, *distill)), name=name).validate(layers)


def load_channels(plan: Plan, handle, key: str) -> None:
    """Set the section's widgets from a loaded recipe (its channels and distill steps; defaults otherwise)."""
    layout = cached_layout(key, handle.model, tuple(handle.input_shape), handle.task)
    if layout is None:
        return
    from complab.plan import resolve

    prefix = f"chan::{key}::"
    steps = {step.type: step for step in plan.steps}
    channels_step, distill_step = steps.get("channels"), steps.get("distill")
    st.session_state[prefix + "show"] = channels_step is not None or st.session_state.get(prefix + "show", False)
    for group in layout.channels:
        ratio = resolve(channels_step.keep_ratio, group) if channels_step else None
        st.session_state[prefix + "keep::" + group] = layout.kept(group, ratio)
    if channels_step:
        st.session_state[prefix + "selection"] = channels_step.selection
        st.session_state[prefix + "population"] = channels_step.population
        st.session_state[prefix + "generations"] = channels_step.generations
        st.session_state[prefix + "epochs"] = channels_step.finetune_epochs
        st.session_state[prefix + "round_to"] = channels_step.round_to
    st.session_state[prefix + "kd"] = distill_step is not None
    if distill_step:
        st.session_state[prefix + "temperature"] = float(distill_step.temperature)
        st.session_state[prefix + "alpha"] = float(distill_step.alpha)
        st.session_state[prefix + "kd_epochs"] = distill_step.epochs
        st.session_state[prefix + "kd_features"] = float(distill_step.features)
        st.session_state[prefix + "kd_feature_temperature"] = float(distill_step.feature_temperature)


def channel_section(handle, key: str, lazy: bool = False) -> ChannelChoice:
    """Draw the section (an expander) and return what it asks for.

    lazy (a big model): the section starts behind a toggle, since tracing the channel groups takes seconds
    (4 s for a ResNet-50) and its 37 sliders slow every redraw; switched off, the plan has no channels step.
    A detector's groups are drawn under the YOLO block they belong to ("model.2 · C2f")."""
    detector = handle.kind.groups_channels_by_block
    prefix = f"chan::{key}::"
    if lazy and not st.toggle("Channel pruning (structured: remove whole channels)", key=prefix + "show",
                              help="traces the model's channel groups (a few seconds on a large model) and shows "
                                   "a 'channels kept' slider per group; off: the plan removes no channels"):
        return ChannelChoice()
    layout = cached_layout(key, handle.model, tuple(handle.input_shape), handle.task)
    if layout is None:
        return ChannelChoice()
    choice = ChannelChoice(layout=layout)
    with st.expander("Channels kept (structured pruning: removed channels make the model faster on any CPU)",
                     expanded=detector):
        st.caption("Hu et al. (2018): per convolution, a genetic algorithm picks which output channels to keep "
                   "(L1 norm and random are the baselines); the channels are removed for real, so parameters, "
                   "FLOPs, file bytes and CPU latency all drop. Runs first in the plan; pruning and clustering "
                   "then work on what remains.")
        if detector:
            st.caption("YOLO: each C2f's split is first replaced by two convolutions (same outputs), so its `cv1` "
                       "is two halves that keep the same fraction; the Detect head's final box and class "
                       "convolutions and its DFL keep all their outputs (they are the predictions); attention layers "
                       "(YOLO11's C2PSA, YOLOv10's PSA, YOLO12's A2C2f) and the convolutions a block splits by a "
                       "fixed count keep their channels, and everything around them is pruned.")
        block = None
        for group, members in layout.groups.items():
            if detector and layout.blocks.get(group) != block:
                block = layout.blocks.get(group)
                st.markdown(f"**{block}**")
            _group_row(choice, prefix, group, members, layout)
        c = st.columns(4)
        st.session_state.setdefault(prefix + "selection", "l1" if detector else CHANNEL_DEFAULTS.selection)
        selection = c[0].selectbox("selection", ["ga", "l1", "random"], key=prefix + "selection",
                                   format_func={"ga": "genetic algorithm", "l1": "L1 norm (Li et al.)",
                                                "random": "random"}.get,
                                   help="a detector starts at L1: one pass per group, where the genetic search "
                                        "scores many candidate masks by mAP" if detector else None)
        for name, value in (("population", CHANNEL_DEFAULTS.population),
                            ("generations", CHANNEL_DEFAULTS.generations),
                            ("epochs", CHANNEL_DEFAULTS.finetune_epochs), ("round_to", handle.kind.channel_round_to),
                            ("kd", True),
                            ("temperature", DISTILL_DEFAULTS.temperature), ("alpha", DISTILL_DEFAULTS.alpha),
                            ("kd_epochs", DISTILL_DEFAULTS.epochs),
                            ("kd_features", float(DISTILL_DEFAULTS.features)),
                            ("kd_feature_temperature", float(DISTILL_DEFAULTS.feature_temperature))):
            st.session_state.setdefault(prefix + name, value)
        population = c[1].number_input("population", 2, 200, key=prefix + "population")
        generations = c[2].number_input("generations", 0, 200, key=prefix + "generations")
        epochs = c[3].number_input("fine-tune epochs per layer", 0, 50, key=prefix + "epochs")
        round_to = st.selectbox("round kept channels to a multiple of", list(ROUND_TO), key=prefix + "round_to",
                                format_func=lambda n: "off" if n == 1 else str(n),
                                help="each group's kept count rounded to the nearest multiple (never 0, never above "
                                     "its width; the extra channels chosen by the same criterion): ONNX Runtime's "
                                     "and PyTorch's (oneDNN) convolution kernels work on 8 or 16 channels at a time; "
                                     "a detector starts at 16 (YOLOv8n pruned on an AVX-512 CPU: 1.14-1.39x faster "
                                     "per FLOP than unrounded, 8: 1.12-1.14x)")
        c = st.columns(4)
        use_kd = c[0].toggle("distill from the original", key=prefix + "kd",
                             help="Knowledge distillation (Hinton et al.): every fine-tuning in the plan uses "
                                  "the original model's softened outputs as well as the labels")
        temperature = c[1].number_input("temperature", 0.5, 20.0, key=prefix + "temperature", disabled=not use_kd)
        alpha = c[2].number_input("KD weight", 0.0, 1.0, key=prefix + "alpha", disabled=not use_kd)
        kd_epochs = c[3].number_input("distill epochs", 0, 100, key=prefix + "kd_epochs", disabled=not use_kd)
        features = feature_temperature = 0.0
        if detector:
            c = st.columns(4)
            features = c[1].number_input(
                "neck distillation weight", 0.0, 1000.0, key=prefix + "kd_features", disabled=not use_kd,
                help="channel-wise distillation (Shu et al. 2021) of the maps feeding the Detect head, added to "
                     "the loss with this weight (0: off); a narrower pruned neck is compared through 1x1 adapters "
                     "trained with it and dropped after")
            feature_temperature = c[2].number_input("neck temperature", 0.1, 100.0,
                                                    key=prefix + "kd_feature_temperature",
                                                    disabled=not use_kd or not features)
    choice.options = {"selection": selection, "population": int(population), "generations": int(generations),
                      "elite": min(CHANNEL_DEFAULTS.elite, int(population) - 1),
                      "survivors": min(CHANNEL_DEFAULTS.survivors, int(population)),
                      "finetune_epochs": int(epochs), "round_to": int(round_to)}
    if use_kd and choice.keep_ratio:
        choice.distill = {"temperature": float(temperature), "alpha": float(alpha), "epochs": int(kd_epochs),
                          "features": float(features),
                          "feature_temperature": float(feature_temperature or DISTILL_DEFAULTS.feature_temperature)}
    return choice


def _group_row(choice: ChannelChoice, prefix: str, group: str, members: tuple[str, ...],
               layout: ChannelLayout) -> None:
    """One plan key's slider; a key naming several equal groups (a C2f's two halves) moves in steps of their count."""
    n = layout.channels[group]
    parts = layout.parts.get(group, (n,))
    step = len(parts) if len(set(parts)) == 1 else 1
    cols = st.columns([5, 6, 6])
    cols[0].markdown(f"`{group}` · {n} channels")
    # defaults live in the session state (load_channels sets them from a recipe)
    st.session_state.setdefault(prefix + "keep::" + group, n)
    kept = cols[1].slider("channels kept", step, n, step=step, key=prefix + "keep::" + group,
                          label_visibility="collapsed")
    notes = []
    if len(parts) > 1:
        notes.append(f"{len(parts)} halves of {parts[0]} after the split, each keeps the same fraction")
    coupled = [m for m in members if m != group]
    if coupled:
        notes.append(f"moves with {', '.join(coupled)}: their outputs are added by skip connections, so they "
                     "must keep the same channels")
    if notes:
        cols[2].caption("; ".join(notes))
    if kept < n:
        choice.keep_ratio[group] = round(kept / n, 4)
