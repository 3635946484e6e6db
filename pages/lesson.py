"""Lesson page: Deep Compression on LeNet-300-100 in five steps for a class; each step's numbers are measured.
While it is open its model is the active one (app.py: state.sidebar). In presentation mode (the sidebar's switch,
?present=1) the steps are drawn large for a projector, with only the Next buttons left to press."""

import streamlit as st
from complab.analysis import lesson
from complab.ui import figures, present
from complab.ui import lesson as steps
from complab.ui.navigation import page_setup
from complab.ui.state import home

page_setup()
presenting = present.presenting()
if presenting:
    present.present_css(keep=("lesson_next_", "lesson_retry_"))


def chart(fig, key: str) -> None:
    st.plotly_chart(present.projector(fig) if presenting else fig, key=key)


st.title("Lesson: Deep Compression")
st.caption("Han, Mao & Dally, \"Deep Compression\" (ICLR 2016), on LeNet-300-100 and the demo digits, step by step. "
           "Each step that changes the model is a background run (it appears on the Runs page); step 3's run is "
           "queued with step 2's, so it computes while the class reads. A step computed before is shown at once. "
           "Every number below is measured.")
if lesson.settings() is lesson.FAST:
    st.warning("Fast test settings ($COMPRESSION_LAB_LESSON_FAST=1): the runs barely fine-tune.")
state = steps.progress_state()
root = str(home())
st.button("Start over", key="lesson_restart", on_click=steps.restart)
layer = st.radio("Layer in the histograms", ["fc1", "fc2", "fc3"], horizontal=True, key="lesson_layer")
original, original_facts, test_images = steps.original_weights()


def header(step: str) -> None:
    st.subheader(f"{lesson.STEPS.index(step) + 1}. {lesson.TITLES[step]}")


with st.container(border=True):
    header("weights")
    measured = steps.original_measured()
    cols = st.columns(3)
    cols[0].metric("Original accuracy", lesson.percent(measured["accuracy"]))
    cols[1].metric("Parameters", f"{measured['params']:,}",
                   help=f"{original_facts['weights']:,} weights and {measured['params'] - original_facts['weights']:,} "
                        "biases")
    cols[2].metric("fp32 bytes", f"{measured['fp32_bytes']:,}")
    chart(figures.lesson_histogram(original[layer], None, layer), "lesson_hist_weights")
    st.markdown(lesson.weights_text(measured, original_facts, test_images))
    steps.next_button("weights")


def file_metric(col, label: str, size: int, ratio: float) -> None:
    col.metric(label, f"{size:,} B", f"{ratio:.1f}x smaller than fp32", delta_color="off", delta_arrow="off")


def shown(step: str) -> bool:
    return state["shown"] > lesson.STEPS.index(step)


if shown("prune"):
    with st.container(border=True):
        header("prune")
        run_id = steps.finished_run("prune")
        if run_id is None:
            st.stop()
        metrics, plan = steps.run_metrics(root, run_id), steps.run_plan(root, run_id)
        weights, facts = steps.run_weights(root, run_id)
        cols = st.columns(3)
        cols[0].metric("Accuracy after pruning", lesson.percent(metrics["after"]["accuracy"]))
        cols[1].metric("Weights pruned", lesson.percent(facts["sparsity"]))
        file_metric(cols[2], "Pruned file", metrics["after"]["compressed_bytes"], metrics["compression_ratio"])
        chart(figures.lesson_histogram(original[layer], weights[layer], layer, "pruned"),
              "lesson_hist_prune")
        st.markdown(lesson.prune_text(metrics, facts, plan))
        steps.flips(root, run_id, "pruned", "pruned", presenting)
        steps.next_button("prune")
        pruned_accuracy = metrics["after"]["accuracy"]

if shown("share"):
    with st.container(border=True):
        header("share")
        run_id = steps.finished_run("share")
        if run_id is None:
            st.stop()
        metrics, plan = steps.run_metrics(root, run_id), steps.run_plan(root, run_id)
        weights, facts = steps.run_weights(root, run_id)
        cols = st.columns(3)
        cols[0].metric("Accuracy after sharing", lesson.percent(metrics["after"]["accuracy"]))
        cols[1].metric("Shared values per layer (k)",
                       ", ".join(map(str, sorted(set(metrics["steps"]["cluster"]["n_clusters"].values())))))
        file_metric(cols[2], "Shared file", metrics["after"]["compressed_bytes"], metrics["compression_ratio"])
        chart(figures.lesson_histogram(original[layer], weights[layer], layer, "pruned and shared"),
              "lesson_hist_share")
        st.markdown(lesson.share_text(metrics, facts, plan, pruned_accuracy))
        steps.flips(root, run_id, "pruned and shared", "shared", presenting)
        steps.next_button("share")

if shown("code"):
    with st.container(border=True):
        header("code")
        coded = steps.run_coding(root, run_id)
        cols = st.columns(3)
        cols[0].metric("Positions + indices, fixed width", f"{coded.fixed_bytes:,} B")
        cols[1].metric("Entropy coded (ANS)", f"{coded.coded_bytes:,} B")
        file_metric(cols[2], "Whole file", coded.file_bytes, coded.waterfall.start / max(1, coded.file_bytes))
        chart(figures.bytes_waterfall(coded.waterfall), "lesson_waterfall")
        st.markdown(lesson.coding_text(coded))
        steps.next_button("code")

if shown("decode"):
    with st.container(border=True):
        header("decode")
        check = steps.run_decode_check(root, run_id)
        cols = st.columns(3)
        cols[0].metric("Decoded accuracy", lesson.percent(check["accuracy"]))
        cols[1].metric("Decode time", f"{1000 * check['seconds']:.0f} ms")
        cols[2].metric("Digits right below",
                       f"{sum(s['label'] == s['predicted'] for s in check['samples'])} of {len(check['samples'])}")
        st.markdown(lesson.decode_text(check, metrics, coded.file_bytes))
        for col, sample in zip(st.columns(len(check["samples"])), check["samples"], strict=True):
            col.image(sample["image"], width=72, clamp=True)
            colour = "green" if sample["label"] == sample["predicted"] else "red"
            col.markdown(f"says :{colour}[**{sample['predicted']}**]  \ntrue {sample['label']}")
        st.success("That is Deep Compression: prune, share, code, and the file still works.")
