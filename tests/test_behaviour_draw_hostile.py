"""A behaviour diff read back from a cache file is untrusted: whatever the cache reader (behaviour_cache.check_diff)
accepts, the page's figures, the gallery and the report's section draw without an exception, and no text from
the file reaches the report's HTML unescaped. Seeded mutations of a real diff of the demo LeNet-5 (a planted
change, so it has flips, a gallery and a trace) and of a hand-made detector diff."""

import copy
import json
import random

import pytest
import torch
from complab.analysis import behaviour
from complab.analysis.behaviour_cache import check_diff
from complab.ui import behaviour_figures as bf
from complab.ui.behaviour_report import behaviour_block
from complab.ui.report import _Figures, json_for_html

HOSTILE = "</script><script>alert(1)</script><img src=x onerror=alert(2)>"
CASES = 300


@pytest.fixture(scope="module")
def real_diff(lenet5):
    from complab import sources

    data = sources.load_data({"model": "demo:lenet5", "data": "digits"}, lenet5)
    planted = lenet5.clone()
    with torch.no_grad():
        planted.model.fc2.bias[3] -= 100.0
    diff = behaviour.classifier_diff(lenet5, planted, data, gallery=6)
    return json.loads(json.dumps(diff))


def paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:4]):
            yield from paths(item, (*prefix, index))


def mutated(diff: dict, rng: random.Random) -> dict:
    out = copy.deepcopy(diff)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(list(paths(out))[1:])
        parent = out
        for step in path[:-1]:
            parent = parent[step]
        old = parent[path[-1]]
        if rng.random() < 0.3:  # anything at all
            parent[path[-1]] = rng.choice([None, 0, -1, 1, 0.5, 1e9, -1e9, True, "", HOSTILE, "x" * 5000, [], {},
                                           [0, 0], [1.0, 0.0], [[0, 1.0], [1, 0.0], [2, 0.0]], 2**40])
        elif isinstance(old, bool):  # the same type, another value: what a reader that checks types lets through
            parent[path[-1]] = not old
        elif isinstance(old, str):
            parent[path[-1]] = rng.choice(["", HOSTILE, "\u202e\x00" * 40])
        elif isinstance(old, int):
            parent[path[-1]] = rng.choice([0, 1, 2, 9, old + 1])
        elif isinstance(old, float):
            parent[path[-1]] = rng.choice([0.0, 1.0, rng.random(), 1e-300])
        elif isinstance(old, list):
            parent[path[-1]] = old[: rng.randint(0, len(old))] if old else []
    return out


def draw_all(diff: dict) -> str:
    """Everything the page and the report draw of a diff (the report's section draws every figure the page does);
    the section's HTML."""
    if diff["task"] == "classify":
        bf.summary(diff)
        names = bf.class_names(diff)
        for item in bf.gallery_items(diff):
            bf.gallery_caption(item, names, diff)
            bf.thumbnail(item.get("image_png_b64"))
    return behaviour_block(diff, lambda fig: fig.to_html(full_html=False, include_plotlyjs=False), json_for_html)


def check_escaped(page: str) -> None:
    # the one <script> that is not plotly.js is the JSON numbers block; a hostile name never opens an element
    assert "<script>alert(1)" not in page and "<img src=x" not in page


def test_classifier_diffs_the_reader_accepts_are_drawn(real_diff):
    assert check_diff(real_diff) is not None
    check_escaped(behaviour_block(real_diff, _Figures(), json_for_html))  # as the report draws it (plotly.js inline)
    rng = random.Random(0)
    accepted = 0
    for _ in range(CASES):
        diff = mutated(real_diff, rng)
        if check_diff(diff) is None:
            continue
        accepted += 1
        check_escaped(draw_all(diff))
    assert accepted >= 40  # the mutations reach the drawing, not only the reader


def test_detector_diffs_the_reader_accepts_are_drawn(tmp_path):
    from complab.ui.behaviour import detector_pairs

    class Data:  # two real images under the names the diff uses
        names = {0: "circle", 1: HOSTILE}

        def val_images(self):
            return paths_made

    from PIL import Image

    paths_made = []
    for name in ("a.png", "b.png"):
        Image.new("RGB", (40, 30), (200, 200, 200)).save(tmp_path / name)
        paths_made.append(tmp_path / name)
    base = {"schema": "behaviour/1", "task": "detect", "split": "val", "n": 2, "seconds": 1.0,
            "a": {"label": "the original", "file": None, "bytes": None, "sha256": "0" * 64},
            "b": {"label": HOSTILE, "file": "model.clab", "bytes": 10, "sha256": "1" * 64},
            "map50_a": 0.9, "map50_b": 0.5, "map50_95_a": 0.6, "map50_95_b": 0.3,
            "per_class": [{"class": 0, "name": "circle", "ap50_a": 0.9, "ap50_b": None, "ap50_95_a": 0.6,
                           "ap50_95_b": 0.3, "n_boxes": 3}],
            "images": [{"path": name, "vanished": 1, "new": 1, "moved": 0, "kept": 0, "change": 2.0,
                        "boxes_a": [[30, 20, 2, 3, 0, 0.9]], "boxes_b": [[-1e6, 5, 1e6, 6, 1, 0.4]]}
                       for name in ("a.png", "b.png")]}
    assert check_diff(base) is not None
    check_escaped(draw_all(base))
    assert [name for name, *_ in detector_pairs(base, Data(), 4)] == ["a.png", "b.png"]
    rng = random.Random(1)
    for _ in range(CASES):
        diff = mutated(base, rng)
        if check_diff(diff) is None:
            continue
        check_escaped(draw_all(diff))
        detector_pairs(diff, Data(), 4)
