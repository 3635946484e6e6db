"""The command line: `complab analyze|run|eval|inspect|export|report|diff|submit|runs|cancel|sweep|sweeps|
cancel-sweep`.

Bad input (a missing or corrupt file, an impossible plan, a full or read-only disk) exits with code 2
and one line that names the problem and the fix; nothing the user made earlier is overwritten unless
they pass --force.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from complab import engine, service, sources
from complab.engine import ray_backend
from complab.engine.search import search
from complab.errors import CompressionLabError, first_line
from complab.paths import (
    check_output_file,
    describe_os_error,
    home_option,
    prepare_output_dir,
    replace_atomically,
    write_bytes_atomic,
)
from complab.plan import MAX_RECIPE_BYTES, Plan

RESULT_FILES = ("model.clab", "metrics.json")
EXPORT_SUFFIXES = (".onnx", ".pt", ".ts")
TRUST_HELP = ("load a model file that holds code: a detector:FILE.pt checkpoint (a pickle) or a torchscript:FILE "
              "(a program); only files you made or whose source you trust (never read from a file or run folder)")
PROGRESS_EVERY_S = 5.0  # a progress line this often when stderr is not a terminal (a log file, a CI job)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of numbers, e.g. 0.5,0.5,0.5") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of whole numbers, e.g. 2,4,8,16") from None


def _bits(text: str) -> tuple[int, ...]:
    """--bits: integer widths of the analysis' bits axis, or none (no bits axis)."""
    return () if text.strip().lower() == "none" else _ints(text)


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="demo:NAME (lenet300, lenet5, vgg_small), torchvision:ARCH, torchscript:FILE, "
                             "detector:demo or detector:FILE.pt (an Ultralytics YOLO checkpoint)")
    parser.add_argument("--weights", help="state dict (.pt/.pth) or .safetensors for torchvision:ARCH")
    parser.add_argument("--trust", action="store_true", help=TRUST_HELP)


def _add_data_args(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--data", required=required,
                        help="digits, imagefolder:DIR, cifar10:DIR, cifar100:DIR; for detectors shapes (the demo's) "
                             "or yolo:PATH/data.yaml")
    parser.add_argument("--input-size", type=int, help="image side in pixels (default: what the model expects)")
    parser.add_argument("--mean", type=_floats, help="per-channel mean, e.g. 0.485,0.456,0.406 (ImageNet's default)")
    parser.add_argument("--std", type=_floats, help="per-channel std, e.g. 0.229,0.224,0.225")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="complab", description="Compress neural networks and measure them.")
    parser.add_argument("--ray", metavar="ADDRESS",
                        help="run the engine's jobs (submit) as Ray tasks on the cluster at ADDRESS (HOST:PORT or "
                             "auto; local: the local workers again); kept in the data folder's settings")
    sub = parser.add_subparsers(dest="command", required=True)
    an = sub.add_parser("analyze", help="sensitivity analysis: every layer alone at each sparsity and cluster count; "
                                        "writes the JSON report the Sensitivity page reads")
    _add_model_args(an)
    _add_data_args(an, required=True)
    an.add_argument("--mode", choices=["auto", "exact", "estimate"], default="auto",
                    help="exact: measure every point; estimate: a second-order estimate calibrated on a few points; "
                         "auto (default): estimate for models above the size the Sensitivity page states, else exact")
    an.add_argument("--calibration-seconds", type=float,
                    help="estimate mode: time spent measuring the exact calibration points (default 90)")
    an.add_argument("--val-size", type=int, help="validation images used (default 512, a detector's 64)")
    an.add_argument("--sparsities", type=_floats, help="pruning levels, e.g. 0,0.5,0.9 (default: 12 from 0 to 0.95)")
    an.add_argument("--clusters", type=_ints, help="cluster counts, e.g. 4,16,64 (default: 2 to 256)")
    an.add_argument("--bits", type=_bits, help="integer widths, e.g. 8,4,3, or none (default: 8,6,4,3,2; a detector's "
                                               "8,4,3)")
    an.add_argument("--bn-batches", type=int, help="training batches re-estimating batch norm at each point (0: off)")
    an.add_argument("--seed", type=int, help="seed of the validation subset and of k-means (default 0)")
    an.add_argument("--out", type=Path, required=True, help="the report to write (.json)")
    an.add_argument("--force", action="store_true", help="replace an existing report")
    run = sub.add_parser("run", help="run a recipe on a model; write the compact file and metrics.json")
    run.add_argument("recipe", type=Path, help="recipe JSON (a Plan)")
    _add_model_args(run)
    _add_data_args(run, required=True)
    run.add_argument("--out", type=Path, required=True, help="output folder")
    run.add_argument("--force", action="store_true", help="replace the results of an earlier run in --out")
    run.add_argument("--no-latency", action="store_true", help="skip the CPU latency measurement")
    ev = sub.add_parser("eval", help="decode a compact file and measure it")
    ev.add_argument("file", type=Path)
    _add_data_args(ev, required=False)
    ev.add_argument("--base", type=Path, help="the original TorchScript file (for TorchScript models; needs --trust)")
    ev.add_argument("--trust", action="store_true", help=TRUST_HELP)
    ev.add_argument("--split", default="test", choices=["val", "test"])
    ins = sub.add_parser("inspect", help="per-layer bits of a compact file: positions, indices, codebook")
    ins.add_argument("file", type=Path)
    ins.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    exp = sub.add_parser("export", help="decode a compact file and export it as TorchScript or ONNX")
    exp.add_argument("file", type=Path)
    exp.add_argument("out", type=Path, help="output file: .onnx for ONNX, .pt/.ts for TorchScript")
    exp.add_argument("--base", type=Path, help="the original TorchScript file (for TorchScript models; needs --trust)")
    exp.add_argument("--trust", action="store_true", help=TRUST_HELP)
    exp.add_argument("--force", action="store_true", help="replace an existing output file")
    exp.add_argument("--fp32", action="store_true",
                     help="ONNX of an int8 model with float weights and activations instead of QDQ integers")
    exp.add_argument("--data", help="calibration images for an int8 model's QDQ output quantizers (default: the "
                                    "dataset the file records)")
    rp = sub.add_parser("report", help="one self-contained HTML file on finished runs: headline, Pareto plots, "
                                       "where the bytes went, per-layer table, recipe (and a detector's boxes)")
    rp.add_argument("runs", nargs="*", metavar="RUN_DIR_OR_ID",
                    help="finished compression runs: ids in the data folder or run folders; the first is the "
                         "chosen one")
    rp.add_argument("--out", type=Path, required=True, help="the report to write (.html)")
    rp.add_argument("--pdf", action="store_true", help="also print it to PDF (same name, .pdf) with headless Chromium")
    rp.add_argument("--force", action="store_true", help="replace an existing report")
    rp.add_argument("--model", help="the original model, for a detector's boxes side by side (a run folder never "
                                    "names the model to load): the spec it was run with, e.g. detector:demo")
    rp.add_argument("--weights", help="the original's weights (with --model)")
    rp.add_argument("--data", help="the data to draw the original's and the compressed boxes on (with --model)")
    rp.add_argument("--trust", action="store_true", help="--model is a pickle you trust (detector:FILE.pt)")
    sm = sub.add_parser("submit", help="queue a compression run in the background engine")
    sm.add_argument("recipe", type=Path)
    _add_model_args(sm)
    _add_data_args(sm, required=True)
    sm.add_argument("--wait", action="store_true", help="wait for the run and print its metrics")
    sub.add_parser("runs", help="list the engine's runs")
    cn = sub.add_parser("cancel", help="cancel a queued or running run")
    cn.add_argument("run_id")
    df = sub.add_parser("diff", help="what compression changed in a model's answers: agreement, flips, per-class "
                                     "accuracy, calibration (two finished runs, or one against the original)")
    df.add_argument("run_a", metavar="RUN_A", help="a finished run's id or folder (the 'before' with RUN_B)")
    df.add_argument("run_b", metavar="RUN_B", nargs="?", help="a second finished run (the 'after'); without it, "
                                                                   "RUN_A is compared with the original model")
    df.add_argument("--json", action="store_true", help="print the diff as one JSON object (without images)")
    df.add_argument("--images", action="store_true", help="with --json: keep the flipped images (base64 PNG)")
    df.add_argument("--model", help="the original model to compare RUN_A with (default: the built-in demo model "
                                    "its file names; a run folder never names a model to load)")
    df.add_argument("--weights", help="the original's weights (with --model)")
    df.add_argument("--data", help="the dataset to compare on (default: the one the run's file records)")
    df.add_argument("--trust", action="store_true", help=TRUST_HELP)
    for command in (sm, sub.choices["runs"], cn, rp, df):
        command.add_argument("--home", help="data folder of the run store (default $COMPRESSION_LAB_HOME)")
    _add_sweep_parsers(sub)
    return parser


def _job_source(args) -> dict:
    return service.source_spec(args.model, args.weights, args.data, args.input_size, args.mean, args.std, args.trust)


def _read_recipe(path: Path) -> Plan:
    return Plan.from_file(path)  # a missing, huge, non-UTF-8 or malformed recipe is one PlanError


class _ProgressLine:
    """The analysis's progress on stderr: one line redrawn in place on a terminal, else a line every few seconds."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last = 0.0
        self.drawn = False

    def __call__(self, stage: str, fraction: float, values: dict) -> None:
        eta = values.get("eta_s")
        eta_text = "" if eta is None else f" ETA {int(eta) // 3600}:{int(eta) % 3600 // 60:02d}:{int(eta) % 60:02d}"
        line = (f"{stage} {100 * fraction:5.1f}% ({values.get('done', '?')}/{values.get('total', '?')} points) "
                f"{values.get('layer', '')} {values.get('point', '')}{eta_text}")
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + line[:119].ljust(119))
            self.drawn = True
        elif now - self.last >= PROGRESS_EVERY_S or fraction >= 1.0:
            self.stream.write(line + "\n")
            self.last = now
        self.stream.flush()

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def _analysis_config(args, task: str, handle=None):
    """SensitivityConfig from the flags (a detector's defaults when none given), checked as an engine job's is.
    `--mode auto` is decided from the loaded model (`handle`); before it is loaded, auto checks as exact."""
    return service.analysis_config(task, handle, args.mode, val_size=args.val_size, sparsities=args.sparsities,
                                   n_clusters=args.clusters, bits=args.bits, bn_batches=args.bn_batches, seed=args.seed,
                                   calibration_seconds=args.calibration_seconds)


def cmd_analyze(args) -> int:
    from complab.analysis.sensitivity import analyze  # imports torch: not at start-up (`complab runs` stays quick)

    out = check_output_file(args.out, (".json",), args.force)
    _analysis_config(args, sources.task_of({"model": args.model}))  # bad flags fail before anything loads
    handle, data = sources.load(sources.check(_job_source(args), compress=True))  # (no TorchScript: it prunes)
    config = _analysis_config(args, handle.task, handle)
    progress = _ProgressLine()
    started = time.monotonic()
    try:
        report = analyze(handle, data, config, on_progress=progress).to_dict()
    finally:
        progress.close()
    replace_atomically(out, json.dumps(report))  # written whole: an interrupted analysis leaves nothing
    if (report.get("noise") or {}).get("message"):  # a validation subset too small to resolve a plan's drops
        print(report["noise"]["message"], file=sys.stderr)
    print(json.dumps({"file": str(out), "layers": len(report["layers"]), "base_accuracy": report["base_accuracy"],
                      "mode": config.mode, "seconds": round(time.monotonic() - started, 1),
                      "prefix_cache": (report["config"].get("prefix_cache") or {}).get("used")}))
    return 0


def cmd_run(args) -> int:
    from complab.pipeline import compress  # imports torch

    plan = _read_recipe(args.recipe)
    source = sources.check(_job_source(args), compress=True)  # untrusted or TorchScript: refused before --out
    prepare_output_dir(args.out, RESULT_FILES, args.force)
    handle, data = sources.load(source)
    bar = tqdm(total=100, unit="%", file=sys.stderr, dynamic_ncols=True)

    def progress(stage: str, fraction: float, values: dict) -> None:
        bar.set_description(stage[:40])
        bar.n = round(100 * fraction)
        bar.refresh()

    try:
        result = compress(handle, plan, data, args.out, on_progress=progress,
                          on_log=lambda message: tqdm.write(message, file=sys.stderr), latency=not args.no_latency)
    finally:
        bar.close()
    m = result.metrics
    print(json.dumps({"file": str(result.path), "compressed_bytes": m["after"]["compressed_bytes"],
                      "fp32_bytes": m["before"]["fp32_bytes"], "ratio": round(m["compression_ratio"], 2),
                      "accuracy_before": m["before"]["accuracy"], "accuracy_after": m["after"]["accuracy"],
                      "weights_kept": round(m["weights_kept"], 4)}))
    return 0


def cmd_eval(args) -> int:
    from complab import metrics  # imports torch

    handle = sources.load_file(args.file, args.base, trust=args.trust)
    data = sources.data_for_file(handle, args.data, args.input_size, args.mean, args.std)
    note = sources.override_note(handle, args.data, args.input_size, args.mean, args.std)
    if note:
        print(note, file=sys.stderr)  # stdout stays one JSON line
    scores = handle.measure(data, args.split, latency=False)
    out = {"file": str(args.file), "compressed_bytes": metrics.file_bytes(args.file),
           "data": data.ref, **({"split": args.split} if handle.kind.chooses_split else {}), **scores}
    print(json.dumps(out))
    return 0


def cmd_inspect(args) -> int:
    from complab.storage import inspect_bytes  # the codec imports torch

    if not args.file.is_file():
        raise CompressionLabError(f"file {args.file} does not exist: check the path")
    rows = inspect_bytes(args.file.read_bytes())
    if args.json:
        print(json.dumps(rows, default=str))
        return 0
    header = f"{'tensor':32} {'encoding':9} {'shape':>16} {'nonzero':>9} {'k':>4} {'pos bits':>9} " \
             f"{'idx bits':>9} {'cb bits':>8} {'raw bits':>9} {'bytes':>8} {'bits/w':>7} {'paper bits':>10}"
    print(header)
    total = 0
    for row in rows:
        total += row["bytes_total"]
        k = row.get("n_clusters") or ""
        shape = "x".join(str(s) for s in row.get("shape") or []) or "-"
        nonzero = row.get("nonzeros")
        encoding = row.get("encoding", "") + (f":{row['quantizer']}" if row.get("quantizer") else "")
        per_weight = f"{row['bits_per_weight']:.3f}" if row.get("bits_per_weight") is not None else ""
        paper = row.get("formula_bits") or ""  # vq layers: Gong et al.'s codes + 32-bit codebooks
        print(f"{row['name'][:32]:32} {encoding:9} {shape:>16} {'' if nonzero is None else nonzero:>9} "
              f"{k:>4} {8 * (row.get('bytes_positions') or 0):>9} {8 * (row.get('bytes_indices') or 0):>9} "
              f"{8 * (row.get('bytes_codebook') or 0):>8} {8 * (row.get('bytes_raw') or 0):>9} {row['bytes_total']:>8} "
              f"{per_weight:>7} {paper:>10}")
    print(f"total {total} bytes (file {args.file.stat().st_size} bytes)")
    return 0


def cmd_export(args) -> int:
    check_output_file(args.out, EXPORT_SUFFIXES, args.force)
    handle = sources.load_file(args.file, args.base, trust=args.trust)  # a foreign file: refused before torch
    from complab.export import export  # imports torch

    if args.out.suffix != ".onnx":
        size = export(handle, args.out)
        print(json.dumps({"file": str(args.out), "bytes": size}))
        return 0
    from complab import deploy

    calibration, note = None, None
    if deploy.is_int8(handle) and not args.fp32:
        calibration, note = _export_calibration(handle, args.data)
    size, int8 = deploy.export_onnx(handle, args.out, int8=not args.fp32, calibration=calibration)
    form = "QDQ int8 (int8 weights, uint8 activations)" if int8 else "fp32"
    print(json.dumps({"file": str(args.out), "bytes": size, "form": form, "int8": int8,
                      **({"note": note} if note else {})}))
    return 0


def _export_calibration(handle, ref: str | None):
    """A few training images for an int8 export's output quantizers, and a note where there are none."""
    from complab.pipeline import CALIBRATION_IMAGES, calibration_batches

    try:
        data = sources.data_for_file(handle, ref)
        return calibration_batches(handle, data), None
    except CompressionLabError as exc:
        return None, (f"no calibration images ({exc}): only the layers' inputs are quantized, so ONNX Runtime "
                      f"fuses fewer int8 kernels; pass --data to calibrate on {CALIBRATION_IMAGES} images")


def _report_run(ref: str, home: Path | None):
    """A run folder (a path that is a folder) or a run id of the data folder, finished; else CompressionLabError."""
    from complab.ui.report import ReportRun  # plotly and torch

    if Path(ref).is_dir():
        return ReportRun.from_dir(Path(ref))
    if "/" in ref or os.sep in ref:  # meant as a folder: say that, not "no run id"
        raise CompressionLabError(f"no run folder {ref}: give a finished run's folder or its id "
                                  "(`complab runs` lists them)")
    row = engine.status(ref, root=home)  # an unknown id: "no run ... list runs with `complab runs`"
    if row["state"] != "succeeded":
        reason = f" ({first_line(row['error'])})" if row.get("error") else ""
        raise CompressionLabError(f"run {ref} is {row['state']}{reason}: a report needs finished runs; "
                                  "list them with `complab runs`")
    return ReportRun.from_dir(Path(row["dir"]), ref)


def _demo_original(label) -> tuple | None:
    """(handle, data) of a built-in demo model named by `label` (ours, so it may be loaded by its name, with its
    own data), for the report's behaviour section; None for any other label (a run folder never names a model to
    load: the person gives it with --model)."""
    demos = sources.demo_sources()
    reference = BUILT_IN_ORIGINALS.get(label, label) if isinstance(label, str) else None
    if reference not in demos:
        return None
    return sources.load({"model": reference, "data": demos[reference]})


def cmd_report(args) -> int:
    from complab.ui.report import DamagedRun, print_pdf, report_diff, report_html, require_chromium  # plotly, torch

    if not args.runs:
        raise CompressionLabError("no runs given: name finished runs by id (`complab runs` lists them) or "
                                  "by folder, e.g. complab report RUN_ID --out report.html")
    out = check_output_file(args.out, (".html", ".htm"), args.force)
    pdf = out.with_suffix(".pdf")
    if args.pdf:
        check_output_file(pdf, (".pdf",), args.force)
        require_chromium()  # said before any work, and before the HTML is written
    if not os.access(out.parent, os.W_OK):
        raise CompressionLabError(f"cannot write in {out.parent}: choose a folder you can write to")
    runs, left_out = [], []
    for ref in args.runs:
        try:
            runs.append(_report_run(ref, args.home))
        except DamagedRun as exc:  # the chosen (first) run must be sound; another damaged one is left out, said so
            if not runs:
                raise
            left_out.append(str(exc))
    original = None
    if args.model:  # the original the person names here: for a detector's boxes side by side (never from job.json)
        original = sources.load({"model": args.model, "weights": args.weights, "data": args.data,
                                 **({"trust": True} if args.trust else {})})
    elif args.data or args.weights or args.trust:
        raise CompressionLabError("--data, --weights and --trust go with --model (the original detector to draw "
                                  "beside the compressed one): add --model")
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    behaviour = report_diff(runs, original or _demo_original(runs[0].metrics.get("model")),
                            cache_dir=(args.home or engine.default_root()) / "behaviour")
    size = write_bytes_atomic(out, report_html(runs, generated=now, original=original, left_out=left_out,
                                               behaviour=behaviour))
    result = {"file": str(out), "bytes": size, "runs": [run.id for run in runs],
              **({"left_out": left_out} if left_out else {})}
    if args.pdf:
        print_pdf(out, pdf)
        result["pdf"] = str(pdf)
    print(json.dumps(result))
    return 0


BUILT_IN_ORIGINALS = {"demo:detector": "detector:demo"}  # a file's label -> the reference that loads it


def _diff_original(args):
    """The original model for `diff RUN_A`: --model as the person gives it, else the built-in demo model the file's
    label names (ours, safe to load by name); a CompressionLabError when neither applies."""
    if args.model:
        spec = {"model": args.model, "weights": args.weights, "data": args.data or sources.default_data(args.model),
                **({"trust": True} if args.trust else {})}
        return sources.load_model(sources.check(spec))
    if args.weights or args.trust:
        raise CompressionLabError("--weights and --trust go with --model (the original to compare with): add --model")
    from complab.storage import inspect_header

    path = service.finished_model_file(args.run_a, args.home)
    label = str(inspect_header(path.read_bytes()).get("meta", {}).get("label", ""))
    reference = BUILT_IN_ORIGINALS.get(label, label)
    if reference not in sources.demo_sources():
        raise CompressionLabError(f"run {args.run_a} is not of a built-in demo model: name its original with --model "
                                  "(and --weights), or compare two runs: complab diff RUN_A RUN_B")
    return sources.load_model(sources.check({"model": reference, "data": sources.demo_sources()[reference]}))


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _interval_text(pair) -> str:
    return f"[{100 * pair[0]:.1f}, {100 * pair[1]:.1f}]"


def _flip_text(count: int, n: int, interval) -> str:
    """A flip count with its share of the split and that share's 95% interval (a rate of images, not points)."""
    return f"{count} ({_pct(count / max(1, n))} of images, 95% {_pct(interval[0])}-{_pct(interval[1])})"


def _direction_text(diff: dict) -> str:
    """'; mean confidence C against accuracy A: under-/over-confident' for the second model, or ''."""
    from complab.analysis.behaviour import calibration_direction

    found = calibration_direction(diff)
    return "" if found is None else (f"; {diff['b']['label']}'s mean confidence {_pct(found[0])} against its "
                                     f"accuracy {_pct(found[1])}: {found[2]}")


def _diff_summary(diff: dict) -> list[str]:
    """A few lines a person reads: agreement, flips, accuracies, calibration, the classes that changed, the trace."""
    lines = [f"{diff['a']['label']} -> {diff['b']['label']} on {diff['n']} {diff['split']} images"]
    from complab.models.tasks import finds_boxes  # imports torch: not at CLI start-up

    if finds_boxes(diff["task"]):
        lines.append(f"mAP50 {_pct(diff['map50_a'])} -> {_pct(diff['map50_b'])}; mAP50-95 "
                     f"{_pct(diff['map50_95_a'])} -> {_pct(diff['map50_95_b'])}")
        lines += [f"  {row['name']}: AP50 {_pct(row['ap50_a'] or 0)} -> {_pct(row['ap50_b'] or 0)} "
                  f"({row['n_boxes']} boxes)" for row in diff["per_class"]]
        lines += [f"  {row['path']}: {row['vanished']} vanished, {row['new']} new, {row['moved']} moved"
                  for row in diff["images"][:5] if row["change"] > 0]
        return lines
    flips = diff["flips"]
    lines += [f"accuracy {_pct(diff['accuracy_a'])} -> {_pct(diff['accuracy_b'])} (change, 95% paired interval: "
              f"{_interval_text(flips['net_ci'])} points)",
              f"agreement {_pct(diff['agreement'])} {_interval_text(diff['agreement_ci'])}",
              f"flips right->wrong {_flip_text(flips['right_to_wrong'], diff['n'], flips['right_to_wrong_ci'])}, "
              f"wrong->right {_flip_text(flips['wrong_to_right'], diff['n'], flips['wrong_to_right_ci'])}, "
              f"wrong->other wrong {flips['wrong_to_other_wrong']}",
              f"ECE {_pct(diff['calibration']['ece_a'])} -> {_pct(diff['calibration']['ece_b'])}"
              + _direction_text(diff)]
    changed = [row for row in diff["per_class"] if not row["within_noise"]]
    lines.append("classes beyond noise: " + ("none (every class's change is within its interval)" if not changed
                                             else ""))
    lines += [f"  {row['name']}: {_pct(row['accuracy_a'])} -> {_pct(row['accuracy_b'])} of {row['n']} "
              f"(change {_interval_text(row['diff_ci'])} points)" for row in changed]
    trace = diff["trace"]
    lines.append(f"trace ({trace['method'] or 'none'}): {trace['note']}")
    for row in trace["layers"][:3]:
        what = (f"reproduces {row['flips_reproduced']} flips" if "flips_reproduced" in row
                else f"predicted drop {_pct(row['predicted_drop'])}")
        lines.append(f"  {row['layer']}: {what} ({_pct(row['share'])})")
    return lines


def cmd_diff(args) -> int:
    original = _diff_original(args) if args.run_b is None else None
    if args.run_b is not None and (args.model or args.weights or args.trust):
        raise CompressionLabError("--model compares RUN_A with an original: drop it, or drop RUN_B")
    diff = service.behaviour_diff(args.run_a, args.run_b, root=args.home, original=original, data=args.data)
    if args.json:
        if not args.images:
            diff = {**diff, "gallery": [{k: v for k, v in item.items() if k != "image_png_b64"}
                                        for item in diff.get("gallery", [])]}
        print(json.dumps(diff))
    else:
        print("\n".join(_printable(line) for line in _diff_summary(diff)))
    return 0


def cmd_submit(args) -> int:
    plan = _read_recipe(args.recipe)
    run_id, _ = service.submit_run(service.compress_job(_job_source(args), plan), root=args.home)
    print(run_id)
    if args.wait:
        row = engine.wait(run_id, 24 * 3600, root=args.home)
        print(json.dumps({"state": row["state"], "error": row["error"], "metrics": row["metrics"]}))
        return 0 if row["state"] == "succeeded" else 1
    return 0


def _printable(text: str) -> str:
    """Text from a run folder (a name, a model spec) with control characters replaced: one line, no terminal escapes."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def cmd_runs(args) -> int:
    print(f"{'run':24} {'kind':12} {'state':10} {'model':24} {'progress':>8} {'accuracy':>9} {'bytes':>10} "
          f"{'ratio':>7}")
    for row in engine.list_runs(root=args.home):  # rows checked by complab/runfolder.py: a damaged one says so
        metrics = row.get("metrics") or {}
        after = metrics.get("after") or {}
        progress = (row.get("progress") or {}).get("progress") or 0.0
        accuracy = f"{after['accuracy']:.4f}" if after.get("accuracy") is not None else ""
        size = f"{after['compressed_bytes']:,}" if after.get("compressed_bytes") is not None else ""
        ratio = f"{metrics['compression_ratio']:.1f}x" if metrics.get("compression_ratio") is not None else ""
        state = "damaged" if row.get("damaged") and not row["damaged"].startswith("gone") else \
            "gone" if row.get("damaged") else row["state"]
        model = _printable(str(row["job"].get("model") or ""))[:24]
        line = (f"{_printable(row['id']):24} {row['kind']:12} {state:10} {model:24} {100 * progress:7.0f}% "
                f"{accuracy:>9} {size:>10} {ratio:>7}")
        print(line + (f"  {_printable(row['damaged'])[:160]}" if row.get("damaged") else ""))
    return 0


def cmd_cancel(args) -> int:
    engine.cancel(args.run_id, root=args.home)
    state = engine.status(args.run_id, root=args.home)["state"]
    print(f"{args.run_id}: {state}" + (" (cancel requested: it stops at its next check)" if state == "running" else ""))
    return 0


# --- sweeps: one axis turned into N plans submitted as one group (complab/engine/sweeps.py) ------------------

SWEEP_WAIT_S = 24 * 3600.0  # --wait's default bound


def _add_sweep_parsers(sub) -> None:
    sw = sub.add_parser("sweep", help="submit one group of runs: a target axis solved into N plans, or a list of "
                                      "recipes; members identical to finished runs are reused, not rerun")
    _add_model_args(sw)
    _add_data_args(sw, required=True)
    what = sw.add_mutually_exclusive_group(required=True)
    what.add_argument("--targets", help="AXIS:V1,V2,...: ratio:10,20,40,80 (compression ratio), flops:2,4 (FLOPs "
                                        "reduction) or accuracy:0.5,1,2 (accuracy budget in points); at most 50")
    what.add_argument("--recipes", type=Path, help="a JSON file holding a list of plans (recipes), one run each")
    what.add_argument("--search", type=int, metavar="N",
                      help="let NSGA-II (Optuna's multi-objective sampler) propose per-layer plans near the current "
                           "front, N runs in all (bytes against accuracy, measured); waits for every generation")
    sw.add_argument("--batch", type=int, default=4, help="--search: runs per generation (default 4)")
    sw.add_argument("--seed", type=int, default=0, help="--search: the sampler's seed (default 0)")
    sw.add_argument("--sensitivity", type=Path,
                    help="the sensitivity report the targets are solved on (`complab analyze --out`); "
                         "default: the newest finished analysis of this model and data in the run store, else "
                         "one run now in the engine with the settings `complab analyze` uses when given no flags")
    sw.add_argument("--base-recipe", type=Path,
                    help="take the fine-tuning settings (prune rounds, epochs, learning rates, auto-k tolerance, seed) "
                         "from this recipe; the solver sets the per-layer values (default: the steps' defaults)")
    sw.add_argument("--name", default="sweep", help="plan name prefix of the target plans (default sweep)")
    sw.add_argument("--no-latency", action="store_true", help="skip each run's CPU latency measurement")
    sw.add_argument("--no-reuse", action="store_true", help="run every member, even one identical to a finished run")
    sw.add_argument("--wait", action="store_true", help="wait for every member and print its ratio and accuracy")
    sw.add_argument("--timeout", type=float, default=SWEEP_WAIT_S, help="--wait gives up after this many seconds")
    sub.add_parser("sweeps", help="list the engine's sweeps and their members' states")
    cs = sub.add_parser("cancel-sweep", help="cancel a sweep's queued members and stop its running one")
    cs.add_argument("sweep_id")
    for name in ("sweep", "sweeps", "cancel-sweep"):
        sub.choices[name].add_argument("--home", help="data folder of the run store (default $COMPRESSION_LAB_HOME)")


def _read_plans(path: Path) -> list:
    """A recipes file: a JSON list of plans, each checked as a recipe is (PlanError naming the bad one)."""
    from complab.analysis.targets import MAX_TARGETS  # imports torch

    if not path.is_file():
        raise CompressionLabError(f"recipes file {path} does not exist: check the path")
    if path.stat().st_size > MAX_TARGETS * MAX_RECIPE_BYTES:
        raise CompressionLabError(f"recipes file {path} is too large for {MAX_TARGETS} recipes: check the file")
    try:
        items = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested thousands deep
        reason = "nested too deeply" if isinstance(exc, RecursionError) else first_line(exc)
        raise CompressionLabError(f"recipes file {path} is not JSON ({reason}): it must hold a list of "
                                  "plans") from None
    if not isinstance(items, list) or not items:
        raise CompressionLabError(f"recipes file {path} must hold a non-empty JSON list of plans")
    if len(items) > MAX_TARGETS:
        raise CompressionLabError(f"{len(items)} recipes: a sweep takes at most {MAX_TARGETS}; split it in two")
    plans = []
    for index, item in enumerate(items, 1):
        try:
            plans.append(Plan.from_json(json.dumps(item)))
        except CompressionLabError as exc:
            raise CompressionLabError(f"recipe {index} of {path}: {exc}") from None
    return plans


def _sweep_report(args, source: dict, handle) -> dict:
    """The sensitivity report the targets are solved on: --sensitivity, else the newest succeeded analysis of this
    model, weights, data and input size in the run store, else one run now in the engine (a run computing the same
    analysis is reused by its content key), its progress on stderr."""
    progress = _ProgressLine()

    def started(run_id: str, reused: bool) -> None:
        doing = f"reusing run {run_id}, which computes the same one" if reused else f"running one (run {run_id})"
        print(f"no sensitivity analysis of {args.model} on {args.data} in the run store: {doing} to solve the "
              "targets on", file=sys.stderr, flush=True)

    def analysing(stage: str, fraction: float, values: dict) -> None:
        if values:  # the engine's own start and done events carry none: no line for them
            progress(stage, fraction, values)

    try:
        return service.sweep_analysis(source, args.home, handle, args.sensitivity, on_start=started,
                                      on_progress=analysing, timeout=args.timeout,
                                      on_problem=lambda message: print(f"warning: {message}", file=sys.stderr))
    finally:
        progress.close()


def _step_options(args) -> tuple[Plan | None, dict, dict]:
    """(--base-recipe's plan or None, its prune options, its cluster options): the fine-tuning settings it gives."""
    from complab.analysis.targets import step_options  # imports torch

    base = _read_recipe(args.base_recipe) if args.base_recipe is not None else None
    return (base, *step_options(base)) if base is not None else (None, {}, {})


def _target_jobs(args, axis: str, values: list[float], source: dict) -> tuple[list[dict], list[str]]:
    """One compress job per target: the solver's plan, with the predicted accuracy riding along."""
    from complab.analysis.estimate import model_stats  # imports torch

    base, prune_options, cluster_options = _step_options(args)
    handle = sources.load_model(source)
    report = _sweep_report(args, source, handle)
    return service.plan_sweep(source, model_stats(handle), report, axis, values, args.name,
                              service.prediction_history(source, args.home), prune_options, cluster_options,
                              base=base, latency=not args.no_latency)


def _member_line(member: dict) -> str:
    metrics = member.get("metrics") or {}
    after = metrics.get("after") or {}
    parts = [f"{member['target']:16}", member["run"], f"{member['state']:9}"]
    if "compression_ratio" in metrics:
        parts.append(f"ratio {metrics['compression_ratio']:.1f}x")
    if "accuracy" in after:
        parts.append(f"accuracy {after['accuracy']:.4f}")
    if member.get("reused"):
        parts.append("(reused)")
    if member.get("error"):
        parts.append(f"error: {str(member['error']).splitlines()[0][:120]}")
    return " ".join(parts)


def _member_summary(member: dict) -> dict:
    metrics = member.get("metrics") or {}
    after = metrics.get("after") or {}
    return {"target": member["target"], "run": member["run"], "reused": member["reused"], "state": member["state"],
            "ratio": metrics.get("compression_ratio"), "accuracy": after.get("accuracy"),
            "compressed_bytes": after.get("compressed_bytes")}


def cmd_sweep(args) -> int:
    from complab.analysis.targets import parse_targets  # imports torch

    source = _job_source(args)
    if args.search is not None:
        return _cmd_search(args, source)
    if args.targets is not None:
        axis, values = parse_targets(args.targets)  # bad targets fail before anything loads
        sources.check(source, compress=True)
        jobs, labels = _target_jobs(args, axis, values, source)
    else:
        axis = "plans"
        sources.check(source, compress=True)
        plans = _read_plans(args.recipes)
        jobs = [service.compress_job(source, plan, latency=not args.no_latency) for plan in plans]
        labels = [plan.name or f"plan {i + 1}" for i, plan in enumerate(plans)]
    sweep = service.submit_sweep(jobs, labels, root=args.home, axis=axis, name=args.name, reuse=not args.no_reuse)
    sweep_id = sweep["id"]
    print(f"{sweep['label']}: {sweep_id}")
    for member in sweep["members"]:
        print(_member_line(member))
    if args.wait:
        print("waiting for the members...", file=sys.stderr)
        sweep = engine.wait_sweep(sweep_id, args.timeout, root=args.home,
                                  on_finish=lambda member: print(_member_line(member), file=sys.stderr, flush=True))
    print(json.dumps({"sweep": sweep_id, "axis": axis, "members": [_member_summary(m) for m in sweep["members"]]}))
    if args.wait:
        return 0 if all(m["state"] == "succeeded" for m in sweep["members"]) else 1
    return 0


def _cmd_search(args, source: dict) -> int:
    sources.check(source, compress=True)
    _, prune_options, cluster_options = _step_options(args)
    report = _sweep_report(args, source, sources.load_model(source))

    def generation(done: dict) -> None:
        print(f"generation {done['generation']}: {done['evaluated']} of {args.search} runs measured", file=sys.stderr)
        for member in done["members"]:
            print(_member_line(member), file=sys.stderr, flush=True)

    name = args.name if args.name != "sweep" else "search"
    result = search(source, report, args.search, args.batch, root=args.home, name=name, seed=args.seed,
                    prune_options=prune_options, cluster_options=cluster_options, latency=not args.no_latency,
                    timeout=args.timeout, on_generation=generation)
    print(json.dumps(result))
    return 0


def cmd_sweeps(args) -> int:
    print(f"{'sweep':22} {'name':28} {'model':20} {'members':>7} {'done':>5} {'active':>6} {'failed':>6} "
          f"{'reused':>6}")
    for sweep in engine.list_sweeps(root=args.home):
        counts = sweep["counts"]
        print(f"{sweep['id']:22} {sweep['label'][:28]:28} {str(sweep.get('model') or '')[:20]:20} "
              f"{len(sweep['members']):>7} {counts['succeeded']:>5} {counts['queued'] + counts['running']:>6} "
              f"{counts['failed'] + counts['cancelled']:>6} {sum(m['reused'] for m in sweep['members']):>6}")
    return 0


def cmd_cancel_sweep(args) -> int:
    asked = engine.cancel_sweep(args.sweep_id, root=args.home)
    print(f"sweep {args.sweep_id}: cancelled {len(asked)} member(s)" if asked
          else f"sweep {args.sweep_id}: nothing queued or running")
    return 0


SWEEP_HANDLERS = {"sweep": cmd_sweep, "sweeps": cmd_sweeps, "cancel-sweep": cmd_cancel_sweep}


def _use_ray(args) -> None:
    """--ray ADDRESS: this process and the dispatcher it starts use it, and so does every later one (a setting)."""
    os.environ[ray_backend.ENV] = args.ray
    if hasattr(args, "home"):
        engine.settings(root=args.home, ray_address=args.ray)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"analyze": cmd_analyze, "run": cmd_run, "eval": cmd_eval, "inspect": cmd_inspect, "export": cmd_export,
                "report": cmd_report, "diff": cmd_diff, "submit": cmd_submit, "runs": cmd_runs, "cancel": cmd_cancel,
                **SWEEP_HANDLERS}
    try:
        if getattr(args, "home", None) is not None:  # as typed: Path("") would be the current folder
            args.home = home_option(args.home)
        if args.ray is not None:
            _use_ray(args)
        return handlers[args.command](args)
    except CompressionLabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written in place of earlier results", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`complab runs | head -3`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        print(f"error: {describe_os_error(exc, exc.filename or '.')}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a bug of ours: one line for the user, the traceback on request
        if os.environ.get("COMPRESSION_LAB_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {first_line(exc)}. This is a bug in Compression Lab; "
              "set COMPRESSION_LAB_DEBUG=1 to see the traceback and report it", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
