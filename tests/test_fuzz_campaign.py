"""The fuzz campaign's harness (benchmarks/fuzz_campaign.py) measures what it says: every counter fires on a planted
failure, a file written outside the work folder is seen, and each door family builds its cases and runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from complab.errors import CompressionLabError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import fuzz_campaign as fc  # noqa: E402


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A work folder (the cases' cwd, data home inside it) and the OUTSIDE bait next to it."""
    work, outside = tmp_path / "work", tmp_path / "outside"
    (work / "failures").mkdir(parents=True)
    fc.prepare_bait(outside)
    monkeypatch.setattr(fc, "WORK", work)
    monkeypatch.setattr(fc, "OUTSIDE", outside)
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(work / "home"))
    monkeypatch.chdir(work)
    return work, outside


@pytest.mark.slow  # the fuzz harness's planted cases (32 s at load 10)
def test_selftest_fires_every_counter():
    """11 planted cases: each counter the issue's "done when" reads is nonzero exactly where a failure was planted."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "compression")}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fuzz_campaign.py"), "--selftest"], env=env,
                          capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    outcomes = result["outcomes"]["selftest"]
    assert result["cases"]["total"] == 11
    assert (outcomes["ok"], outcomes["error"]) == (4, 1)
    assert result["tracebacks"]["total"] == 3  # a plain exception, a two-line message, a worker that died
    assert result["hangs"]["total"] == 1
    assert result["memory_blowups"]["total"] == 1  # 400 MB held over the 350 MB bound
    assert result["executed_code"] == 1
    assert result["files_written_outside"] == 2  # the marker and a planted file, nothing else
    assert sorted(result["files_written_outside_paths"]) == ["markers/selftest", "planted.txt"]
    assert result["unsafe_accepts"]["total"] == 1
    assert 256 < result["worst_rss_growth_per_kb_mb"] < 350  # the 300 MB of a 100-byte input, freed at once
    assert result["small_inputs_over_256mb"]["total"] == 1
    assert result["harness_errors"] == 0


def test_outside_watch_sees_new_changed_and_victim_files(sandbox):
    _, outside = sandbox
    watch = fc.OutsideWatch(outside)
    assert watch.check("t", 0) == []
    (outside / "markers" / "payload").touch()
    assert watch.check("t", 1) == ["markers/payload"]
    assert (outside / "markers" / "case-t-1-payload").is_file()  # renamed: the same payload is seen again
    (outside / "markers" / "payload").touch()
    assert watch.check("t", 2) == ["markers/payload"]
    (outside / "victim.txt").write_bytes(b"changed!")
    (outside / "new.pth").write_text("import os")
    assert watch.check("t", 3) == ["new.pth", "victim.txt"]
    assert (outside / "victim.txt").read_bytes() == fc.VICTIM_TEXT  # restored for the next case
    assert watch.check("t", 4) == []


def test_signatures_group_failures_by_kind():
    one = fc._signature("traceback", "x: ValueError: invalid literal '²' at a.py:1 f; state.py:7 spec_from_link")
    two = fc._signature("traceback", "y: ValueError: invalid literal '³' at b.py:2 g; state.py:7 spec_from_link")
    assert one == two == "traceback: ValueError at state.py:7 spec_from_link"
    wrote = "wrote outside the work folder ['markers/case-yaml-3-x']: d"
    assert fc._signature("outside", wrote) == "outside: markers/x"


def test_link_cases_run_through_the_link_parser(sandbox):
    fc._STATE["links"] = fc._links_setup()
    outcomes = {fc.run_links(index, 11, "failures")[0] for index in range(300)}
    assert outcomes <= {"ok", "error", "traceback", "accepted"} and "ok" in outcomes


def test_links_follow_the_owners_roots(sandbox):
    """A folder under a root the owner shares (--data-root) is allowed; one outside every root is not."""
    ctx = fc._links_setup()
    assert fc._allowed_data(f"imagefolder:{ctx['shared']}", ctx)
    assert not fc._allowed_data(f"imagefolder:{sandbox[1]}/images", ctx)
    spec, problem = fc.door_links({"model": "upload:0123456789ab", "arch": "resnet18",
                                   "data": f"imagefolder:{sandbox[1]}/images"}, ctx)
    assert spec is None and problem and fc.SECRET not in problem


def test_key_cases_build_and_return_a_key_or_none(sandbox):
    fc._STATE["keys"] = fc._keys_setup()
    outcomes = [fc.run_keys(index, 11, "failures") for index in range(fc.KEYS_HEAVY + 60)]
    assert {outcome for outcome, _, _ in outcomes} == {"ok"}
    assert any("no key" in detail for _, detail, _ in outcomes) and any(": key" in detail for _, detail, _ in outcomes)


def test_sensitivity_cases_reach_the_solver(sandbox):
    fc._STATE["sensitivity"] = fc._sensitivity_setup()
    path = sandbox[0] / "report.json"
    path.write_text(json.dumps(fc._STATE["sensitivity"]["base"]))
    predicted = fc.door_sensitivity(path, fc._STATE["sensitivity"])  # the unmutated report solves
    assert 0 < predicted["accuracy"] <= 1
    outcomes = [fc.run_sensitivity(index, 11, str(sandbox[0] / "failures"))[0]
                for index in range(fc.SENSITIVITY_HEAVY, fc.SENSITIVITY_HEAVY + 100)]
    assert set(outcomes) <= {"ok", "error", "traceback", "accepted"} and "ok" in outcomes


def test_draft_cases_reach_the_plan_pages_reader(sandbox):
    fc._STATE["drafts"] = fc._drafts_setup()
    path = sandbox[0] / "draft.json"
    path.write_text(json.dumps(fc._STATE["drafts"]["base"]))
    draft, note = fc.door_drafts(path, fc._STATE["drafts"])  # the unmutated draft is read back whole
    assert note is None and draft["dropped"] == 0 and draft["target"] == {"kind": "ratio", "value": 40.0}
    outcomes = [fc.run_drafts(index, 11, str(sandbox[0] / "failures")) for index in range(150)]
    assert {outcome for outcome, _, _ in outcomes} == {"ok"}, [d for o, d, _ in outcomes if o != "ok"][:3]
    assert any("ignored" in detail for _, detail, _ in outcomes) and any("kept" in detail for _, detail, _ in outcomes)


def test_automaton_cases_are_deterministic_and_the_heavy_ones_match_a_layer():
    layers = fc._automaton_setup()["layers"]
    assert len(layers) == 121 and "features.conv0" in layers
    assert fc._automaton_case(3, 11) == fc._automaton_case(3, 11)
    text, what = fc._automaton_case(2, 11)
    keys = json.loads(text)["steps"][0]["sparsity"]
    assert what == "20 keys" and len(keys) == 20 and all(key.endswith("conv0") for key in keys)
    for index in range(fc.AUTOMATON_HEAVY, fc.AUTOMATON_HEAVY + 30):  # random keys: refused or accepted, quickly
        try:
            fc.door_automaton(fc._automaton_case(index, 11)[0], layers)
        except CompressionLabError as exc:
            assert "\n" not in str(exc)


def test_folder_cases_build_each_kind(sandbox):
    names = set()
    for index in range(fc.FOLDER_CASES):
        root = fc._case_dir("folders", index) / "data"
        root.mkdir()
        if index in (8, 9, 18):  # tens of thousands of files or folders, megabytes of labels: the campaign's
            continue
        what, ref = fc._folder_case(index, 11, root)
        assert ref.split(":", 1)[1] == str(root)
        names.add(what)
    assert len(names) == fc.FOLDER_CASES - 3
    assert any("cycle" in name for name in names)


def test_clab_cases_are_small_files_naming_big_models():
    """The memory reproductions: a few hundred bytes each, so their peak counts in worst_rss_growth_per_kb_mb."""
    from complab.storage import inspect_header

    seen = set()
    for index in range(16):
        data, what, door = fc._clab_case(index, 11)
        assert len(data) < fc.SMALL_INPUT_BYTES and door in ("load", "export")
        if index >= 2:
            seen.add(inspect_header(data)["meta"]["architecture"]["arch"])
    assert {"regnet_y_128gf", "vgg19", "squeezenet1_0", "vit_h_14"} <= seen


def test_lineage_cases_reach_the_map_and_the_recipe_diff():
    """Issue 28's family: mutated origins and sweeps into experiment_graph, mutated recipes into recipe_diff; the
    5,000-run chain and the 3,000-run cycle end quickly; an unmutated case draws and diffs."""
    ctx = fc._STATE["lineage"] = fc._lineage_setup()
    case = {"runs": ctx["runs"], "sweeps": ctx["sweeps"], "plan_a": ctx["plans"][0], "plan_b": ctx["plans"][0],
            "layers": None}
    graph, rows, refusal = fc.door_lineage(case)
    assert refusal is None and rows == [] and {e["kind"] for e in graph.edges} >= {"rerun", "recipe", "sweep", "lesson"}
    assert fc._lineage_unsafe(graph, rows, case) is None
    outcomes = [fc.run_lineage(index, 11, "") for index in range(120)]
    assert {outcome for outcome, _, _ in outcomes} <= {"ok", "error"}, [d for o, d, _ in outcomes if o not in
                                                                       ("ok", "error")][:3]
    assert [o for o, _, _ in outcomes].count("ok") >= 20 and "5,000-run chain" in outcomes[0][1]


def test_ctx_cases_reach_the_type_8_decoder(sandbox):
    """The storage family for shared version 3: its base file holds type-8 sections that decode, and its mutated
    cases end in a decoded file or a clear FormatError (no traceback, no accepted tensor that contradicts inspect)."""
    fc._STATE["ctx"] = fc._ctx_setup()
    meta, sections = fc._STATE["ctx"]["parsed"]
    assert sum(type_id == 8 for type_id, _ in sections) >= 3
    assert all(fc._ctx_index_start(body) is not None for type_id, body in sections if type_id == 8)
    assert any(fc._ctx_flags(body) & 6 == 6 for type_id, body in sections if type_id == 8)  # per-tap layout
    outcomes = [fc.run_ctx(index, 11, str(sandbox[0] / "failures")) for index in range(120)]
    kinds = {outcome for outcome, _, _ in outcomes}
    assert kinds <= {"ok", "error"}, [detail for outcome, detail, _ in outcomes if outcome not in ("ok", "error")]
    assert "error" in kinds
    assert any("level" in detail or "context" in detail or "gap class" in detail for _, detail, _ in outcomes)
    cases = [fc._ctx_case(index, 11, fc._STATE["ctx"])[1] for index in range(120)]
    assert any("adaptive stream" in what for what in cases)  # table mode 6 streams with hostile headers
