"""Sensitivity page: run the per-layer analysis as an engine job; live progress; curves and heatmap."""

import streamlit as st
from complab import engine
from complab.analysis.fisher import ESTIMATE_ABOVE_COST, analysis_cost, default_mode
from complab.analysis.report import model_name
from complab.analysis.sensitivity import DEFAULT_BITS, SensitivityConfig
from complab.analysis.sensitivity_report import report_noise
from complab.errors import CompressionLabError
from complab.ui import figures
from complab.ui.navigation import page_setup
from complab.ui.numbers import count, duration, interval, percent
from complab.ui.report import plain_markdown
from complab.ui.state import active_spec, home, latest_sensitivity, load_active, sensitivity_job

page_setup()
st.title("Sensitivity")
spec = active_spec()
handle, data = load_active(spec)
st.caption(f"Each prunable layer of {plain_markdown(model_name(handle.label))} alone: accuracy on a validation "
           "subset at every sparsity (magnitude pruning), every cluster count (k-means weight sharing) and every "
           "integer width (uniform per-channel integers), without fine-tuning.")
detector = handle.kind.finds_boxes
if detector:  # ~60 layers, each point an mAP evaluation: a coarser default grid on fewer images
    st.caption("For a detector the score is mAP50 on validation images held in memory (same matching as "
               "Ultralytics' validator); the Detect head's prediction convolutions are not analysed (never "
               "compressed).")
    defaults = handle.kind.analysis_defaults
    n_val = len(data.val_images())
else:
    config = SensitivityConfig()  # the analysis' own defaults
    defaults = {"sparsities": list(config.sparsities), "n_clusters": list(config.n_clusters),
                "val_size": config.val_size}
    n_val = len(data.val)
modes = ["exact", "estimate"]
mode = st.radio("Mode", modes, index=modes.index(default_mode(handle)), horizontal=True, key="sens_mode",
                help="exact: every point measured. estimate: a second-order (Fisher) estimate of the loss at every "
                     "point, mapped to the score by a few measured points per layer.")
st.caption(f"Default: estimate when parameters x input pixels is above {ESTIMATE_ABOVE_COST:.0e} "
           f"(this model: {analysis_cost(handle):.1e}), else exact. Estimate mode measures only a few calibration "
           "points per layer; the plots draw measured points filled and estimated ones hollow.")
with st.expander("Settings"):
    val_size = st.number_input("Validation images", max(1, min(16, n_val)), 100_000, min(defaults["val_size"], n_val),
                               key="sens_val_size")
    sparsities = st.multiselect("Sparsities", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98],
                                default=defaults["sparsities"], key="sens_sparsities")
    clusters = st.multiselect("Cluster counts", [2, 4, 8, 16, 32, 64, 128, 256],
                              default=defaults["n_clusters"], key="sens_clusters")
    bits = st.multiselect("Integer bits", [8, 7, 6, 5, 4, 3, 2], default=list(defaults.get("bits", DEFAULT_BITS)),
                          key="sens_bits", help="uniform integer weights per output channel (the int step); none: "
                                                "no bits curves")
job = sensitivity_job(spec, {"sparsities": sorted(sparsities), "n_clusters": sorted(clusters),
                             "bits": sorted(bits, reverse=True),
                             "val_size": int(val_size), "seed": 0, "mode": mode})
if st.button("Run sensitivity analysis", type="primary", key="sens_launch"):
    try:
        st.session_state["sens_run"] = engine.submit(job, root=home())
    except CompressionLabError as exc:
        st.error(str(exc))


@st.fragment(run_every=1.0)
def progress() -> None:
    run = latest_sensitivity(spec, any_state=True)
    if run is None or run["state"] in ("succeeded", "failed", "cancelled"):
        if st.session_state.get("sens_waiting"):
            st.session_state["sens_waiting"] = False
            st.rerun()
        return
    st.session_state["sens_waiting"] = True
    stage = run.get("progress") or {}
    values = stage.get("values") or {}
    eta = values.get("eta_s")
    left = f" (about {duration(eta)} left)" if isinstance(eta, int | float) else ""
    st.progress(float(stage.get("progress", 0.0)),
                text=f"{run['state']}: {values.get('stage') or stage.get('stage', '')} {values.get('layer', '')}{left}")


progress()
run = latest_sensitivity(spec, any_state=True)
if run is not None and run["state"] == "failed":
    st.error(f"The last analysis failed: {run.get('error')}")
report = latest_sensitivity(spec)
if report is None:
    st.info("No analysis for this model and data yet: press Run.")
    st.stop()
st.session_state["sensitivity_report"] = report
n_images = figures.val_images(report)
if detector:
    st.metric("Validation mAP50 (original)", f"{report['base_accuracy']:.3f}")
else:
    st.metric("Validation accuracy (original)", percent(report["base_accuracy"]),
              help=(f"95% CI {interval(report['base_accuracy'], n_images)} on {count(n_images)} validation images: "
                    "a layer's point inside the grey band is not distinguishable from the original"
                    + (f" (above {figures.BAND_LAYERS_UP_TO} layers only this band is drawn)"
                       if len(report["layers"]) > figures.BAND_LAYERS_UP_TO else ""))
              if n_images else None)
noise_message = report_noise(report).get("message")  # an older report's noise computed from its config
if noise_message:  # the subset cannot resolve the drops it reports: say so before the curves
    st.warning(plain_markdown(noise_message))
calibration = (report.get("config") or {}).get("calibration")
if (report.get("config") or {}).get("mode") == "estimate" and calibration:
    st.caption(f"Estimate mode: {calibration.get('note', '')}; hollow markers are estimates.")
bn_note = (report.get("config") or {}).get("batch_norm", {}).get("note")
if bn_note:  # what each point's batch-norm statistics were (compression re-estimates them too)
    st.caption(f"Each point: {bn_note}.")
left, right = st.columns(2)
left.plotly_chart(figures.sensitivity_curves(report, "sparsity", band=not detector), key="sens_curve_sparsity")
right.plotly_chart(figures.sensitivity_curves(report, "clusters", band=not detector), key="sens_curve_clusters")
if any(row.get("bits") for row in report["layers"].values()):  # reports made before the bits axis have none
    st.plotly_chart(figures.sensitivity_curves(report, "bits", band=not detector), key="sens_curve_bits")
if n_images and not detector:
    st.caption(f"Shaded: each point's 95% interval on {count(n_images)} validation images (Wilson); grey: the "
               f"original's, where a point is not distinguishable from it. One image is {100 / n_images:.2g} points.")
st.subheader("Accuracy drop, layer x sparsity")
st.caption("White is no drop; red a loss; grey a \"gain\", which on a validation subset is noise.")
st.plotly_chart(figures.sensitivity_heatmap(report), key="sens_heatmap")
