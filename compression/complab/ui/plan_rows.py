"""The Plan page's per-layer rows, built from the steps' declared per-layer fields (complab/steps/*: each config's
`layer_fields`, `from_rows`, `to_rows`): a step that declares fields gets its columns, its bulk setter, its values
kept across hidden rows and loaded from a recipe, and its part of the plan and of the live estimate, with no
line here naming it.

Widgets of hidden rows are not drawn (and Streamlit forgets a widget's value when it is not drawn), so every
layer's values live in the page's store and a widget is seeded from there when its row is drawn again. A widget's
key is `<prefix><field>::<layer>` (`plan::<model>::sp::fc1`), a group's bulk setter's `<prefix>bulk_<field>::<group>`.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from complab.analysis.estimate import plan_settings
from complab.layermap import STEP_TYPES, LayerField
from complab.plan import ordered
from complab.ui.numbers import human
from complab.ui.sparkline import layer_curve, sparkline

LEFT = ["layer", "params", "sensitivity"]
LEFT_WIDTHS = [1.6, 0.8, 1.4]
BYTES_WIDTH = 1.1


def plan_order() -> list[type]:
    """The registered step configs in the order a plan runs them (prune before cluster before quantize)."""
    return [step.__class__ for step in ordered(config() for config in STEP_TYPES.values())]


def step_fields() -> list[tuple[type, LayerField]]:
    """(config class, field) of every per-layer field the registered steps declare, the steps in plan order
    (sparsity before clusters before the quantizer)."""
    return [(config, f) for config in plan_order() for f in getattr(config, "layer_fields", ())]


def with_choice(choices, value) -> list:
    """`choices` plus `value` where a loaded recipe holds one they lack (n_clusters 3, n_codewords 4096): a
    widget must show every value Plan.validate accepts, or the page fails drawing it."""
    choices = list(choices)
    if value is None or value in choices:
        return choices
    numbers = [c for c in choices if isinstance(c, int)]
    words = [c for c in choices if not isinstance(c, int)]
    return words + sorted([*numbers, value]) if isinstance(value, int) else [*choices, value]


class LayerRows:
    """Every layer's per-layer values (the store), the widgets that show them, and the steps they ask for."""

    def __init__(self, prefix: str, layers: list[str]) -> None:
        self.prefix, self.layers = prefix, layers
        self.fields = step_fields()
        self.by_name = {f.name: f for _, f in self.fields}
        self.store: dict[str, dict] = st.session_state.setdefault(prefix + "values", {layer: {} for layer in layers})
        if prefix + "init" not in st.session_state:
            st.session_state[prefix + "init"] = True
            self.reset()

    def reset(self, settings: dict[str, tuple] | None = None) -> None:
        """Every field of every layer back to its default, then the solver's (or the suggestion's) settings."""
        for layer in self.layers:
            for f in self.by_name.values():
                self.set_value(layer, f.name, f.default)
        if settings:
            self.set_settings(settings)

    def key(self, name: str, layer: str) -> str:
        return self.prefix + name + "::" + layer

    def set_value(self, layer: str, name: str, value: Any) -> None:
        self.store.setdefault(layer, {})[name] = value
        st.session_state[self.key(name, layer)] = value

    def set_rows(self, rows: dict[str, dict]) -> None:
        for layer, values in rows.items():
            for name, value in values.items():
                self.set_value(layer, name, value)

    def set_settings(self, settings: dict[str, tuple], bits: dict[str, int] | None = None) -> None:
        """The solver's per-layer (sparsity, n_clusters) and integer widths (`bits`, the layers it stores as
        integers) into the fields that hold them (None, or a layer without a width: the field's off)."""
        for layer, values in settings.items():
            chosen = {"sparsity": values[0], "n_clusters": values[1], "bits": (bits or {}).get(layer)}
            for setting, value in chosen.items():
                for f in self.by_name.values():
                    if f.setting == setting:
                        self.set_value(layer, f.name, f.off if value is None else
                                       float(value) if f.kind == "slider" else value)

    def load_plan(self, plan) -> None:
        """Every field from a loaded recipe: its steps' values, and each absent step's off values."""
        steps = {step.type: step for step in plan.steps}
        for config in {config for config, _ in self.fields}:
            step = steps.get(config.type)
            if step is not None:
                self.set_rows(step.to_rows(self.layers))
            else:
                self.set_rows({layer: {f.name: f.off if f.off is not None else f.default
                                       for f in config.layer_fields} for layer in self.layers})

    def sync_from_widgets(self) -> None:
        """Widgets drawn in the last run hold the newest values: copy them into the store."""
        for layer in self.layers:
            for name in self.by_name:
                key = self.key(name, layer)
                if key in st.session_state:
                    self.store[layer][name] = st.session_state[key]

    def changed(self, layer: str, name: str) -> None:
        """A widget's on_change: its field's rule resets the row's other fields (a quantizer replaces clustering)."""
        value = st.session_state[self.key(name, layer)]
        self.store[layer][name] = value
        for other, update in self.by_name[name].on_change(value).items():
            self.set_value(layer, other, update)

    def steps(self, options: dict[str, dict]) -> list:
        """The configs the rows ask for (unvalidated), each with its step's options (fine-tuning settings)."""
        out = []
        for config in dict.fromkeys(config for config, _ in self.fields):
            step = config.from_rows(self.store, options.get(config.type))
            if step is not None:
                out.append(step)
        return out

    def settings(self, options: dict[str, dict]) -> tuple[dict, dict, dict]:
        """(settings {layer: (sparsity, n_clusters)}, quantizers {layer: settings or None}, estimate options) of the
        rows, through each step's estimate hook."""
        settings, chosen, estimate_options = plan_settings(self.steps(options), self.layers)
        return settings, {layer: chosen.get(layer) for layer in self.layers}, estimate_options

    # ------------------------------------------------------------------------------------------- drawing

    def shown(self, compact: bool) -> list[LayerField]:
        return [f for f in self.by_name.values() if not (compact and f.wide)]

    def widths(self, compact: bool) -> list[float]:
        return LEFT_WIDTHS + [f.width for f in self.shown(compact)] + [BYTES_WIDTH]

    def header(self, compact: bool) -> list[str]:
        return LEFT + [f.label for f in self.shown(compact)] + ["est. bytes"]

    def _seeded(self, name: str, layer: str) -> str:
        key = self.key(name, layer)
        if key not in st.session_state:
            st.session_state[key] = self.store[layer][name]
        return key

    def draw_row(self, layer: str, numel: int, report, compact: bool, layer_bytes: float) -> None:
        cols = st.columns(self.widths(compact), vertical_alignment="center")
        cols[0].markdown(f"`{layer}`")
        cols[1].markdown(human(numel, exact_below=1e4))
        values = self.store[layer]
        sparsity = next((f for f in self.by_name.values() if f.setting == "sparsity"), None)
        width = next((f for f in self.by_name.values() if f.setting == "bits"), None)
        curve, current = None, None
        if width is not None and values.get(width.name, width.off) != width.off:  # an int layer: its bits curve
            curve, current = layer_curve(report, layer, "bits"), float(values[width.name])
        if curve is None and sparsity is not None:
            curve, current = layer_curve(report, layer, "sparsity"), float(values[sparsity.name])
        if curve is not None:
            cols[2].markdown(sparkline(curve, current), unsafe_allow_html=True)
        else:
            cols[2].caption("no analysis")
        for col, f in zip(cols[3:-1], self.shown(compact), strict=True):
            values[f.name] = self._widget(col, f, layer)
        notes = [f"{f.label}: {values[f.name]}" for f in self.by_name.values()
                 if compact and f.wide and f.off is not None and values[f.name] != f.off]
        if notes:  # a hidden column that does something on this layer
            cols[-1].caption(", ".join(notes))
        cols[-1].markdown(f"{layer_bytes:,.0f}")

    def _widget(self, col, f: LayerField, layer: str):
        key = self._seeded(f.name, layer)
        common = {"key": key, "label_visibility": "collapsed", "help": f.help}
        if f.enabled_when is not None:
            other, allowed = f.enabled_when
            common["disabled"] = self.store[layer][other] not in allowed
        if f.on_change is not None:
            common.update(on_change=self.changed, args=(layer, f.name))
        if f.kind == "slider":
            return col.slider(f.label, f.low, f.high, step=f.step, format=f.fmt, **common)
        if f.kind == "number":
            return col.number_input(f.label, f.low, f.high, **common)
        return col.selectbox(f.label, with_choice(f.choices, self.store[layer].get(f.name)), **common)

    def draw_bulk(self, group: str, visible: list[str], compact: bool) -> None:
        """The group's bulk setter: a widget per field that declares one, and the button that sets them."""
        bulk_fields = [f for f in self.shown(compact) if f.bulk_step is not None]
        cols = st.columns([2.2] + [1.4] * len(bulk_fields) + [1.2, 3])
        cols[0].caption(f"set the {len(visible)} layers shown")
        for col, f in zip(cols[1:], bulk_fields, strict=False):
            key = self.prefix + f"bulk_{f.name}::" + group
            if f.kind in ("slider", "number"):
                col.number_input(f.label, f.low, f.high, f.default, f.bulk_step, key=key)
            else:
                col.selectbox(f.label, list(f.choices), index=list(f.choices).index(f.default), key=key)
        cols[len(bulk_fields) + 1].button("Set group", key=self.prefix + "bulk::" + group, on_click=self.apply_bulk,
                                          args=(group, visible), help="every layer of the group shown under the "
                                                                      "filter gets these settings")

    def apply_bulk(self, group: str, members: list[str]) -> None:
        """Every listed layer gets the group's bulk values, in the fields' order (a later field's rule, such as a
        quantizer replacing clustering, applies after the earlier fields are set)."""
        for f in self.by_name.values():
            value = st.session_state.get(self.prefix + f"bulk_{f.name}::" + group)
            if value is None:
                continue
            for layer in members:
                self.set_value(layer, f.name, float(value) if f.kind == "slider" else value)
                if f.on_change is not None:
                    for other, update in f.on_change(value).items():
                        self.set_value(layer, other, update)
