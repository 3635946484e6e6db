"""Issue 24's dataset and link doors, rebuilt: a YOLO yaml's `download:` script never runs (item 4), a symlink
cycle in an image folder is refused in bounded time (item 7), a link names only the demo data or folders under
the data folder / the owner's roots and no message lists a folder (item 8), link numbers are parsed strictly and
`--home ""` / `--home /proc` are refused as what they are (item 14)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from complab.errors import CompressionLabError, DataLoadError
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def one_line(exc) -> str:
    text = str(exc.value if hasattr(exc, "value") else exc)
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


def write_images(folder: Path, classes=("cat", "dog"), per_class=3, side=8):
    for index, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (side, side), (40 * index, 10 * i, 0)).save(folder / name / f"{i}.png")


# --- item 4: a dataset yaml's download: script ------------------------------------------------------------------

@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    """A small YOLO dataset (4 train / 6 val shapes images) and the demo detector as a compact file."""
    from complab.data.shapes import ShapesConfig, write_dataset
    from complab.models.detector import load_detector, save_detector

    folder = tmp_path_factory.mktemp("shapes")
    write_dataset(folder / "ds", train=4, val=6, config=ShapesConfig(seed=7))
    save_detector(load_detector(), folder / "det.clab")
    return folder


PYTHON_SCRIPT = "download: |\n  open({marker!r}, 'w').write('ran')\n"
SHELL_SCRIPT = "download: bash -c 'touch {marker}'\n"
NAMES = "names: {0: circle, 1: square, 2: triangle, 3: cross}\n"


def write_yaml(folder: Path, name: str, body: str, marker: Path, script: str = PYTHON_SCRIPT) -> Path:
    path = folder / name
    path.write_text(body + NAMES + script.format(marker=str(marker)))
    return path


def cli(*args, cwd=None, env=None):
    environ = {**os.environ, "PYTHONPATH": str(ROOT / "compression"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "complab.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=environ, timeout=600)


@pytest.mark.slow  # a detector evaluation per script (46-49 s each at load 10)
@pytest.mark.timeout(600)
@pytest.mark.parametrize("script", [PYTHON_SCRIPT, SHELL_SCRIPT])
def test_eval_never_runs_a_yaml_download_script(shapes_dir, tmp_path, script):
    """The reproduction: `val: [images/val, images/val_missing]` (only the first entry was checked) and a
    `download:` script; Ultralytics exec()s it when any val entry is missing. Now: one line, nothing ran."""
    marker = tmp_path / "MARKER"
    ds = shapes_dir / "ds"
    evil = write_yaml(ds, f"evil-{tmp_path.name}.yaml", f"path: {ds}\ntrain: images/train\n"
                      "val: [images/val, images/val_missing]\n", marker, script)
    proc = cli("eval", str(shapes_dir / "det.clab"), "--data", f"yolo:{evil}",
               env={"COMPRESSION_LAB_HOME": str(tmp_path / "home")})
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "images/val_missing" in err[0] and "never downloads" in err[0], err
    assert not marker.exists()


@pytest.mark.slow  # a detector evaluated and run (62 s at load 10)
@pytest.mark.timeout(600)
def test_a_complete_yaml_with_a_download_key_evaluates_and_runs_nothing(shapes_dir, tmp_path):
    """A real dataset's yaml often keeps its `download:` entry: the data is used, the script never seen by
    Ultralytics (it reads our checked copy, not the user's file)."""
    from complab.data.detection import load_detection_data

    marker = tmp_path / "MARKER"
    ds = shapes_dir / "ds"
    ok = write_yaml(ds, f"ok-{tmp_path.name}.yaml", "train: images/train\nval: [images/val]\n", marker)
    data = load_detection_data(f"yolo:{ok}")
    copy = yaml.safe_load(data.yaml_path.read_text())
    assert data.yaml_path != ok and data.source == ok
    assert set(copy) == {"path", "train", "val", "names", "nc"} and copy["nc"] == 4
    assert copy["val"] == [str(ds / "images" / "val")] and all(Path(p).is_absolute() for p in copy["train"])
    assert len(data.val_images()) == 6
    proc = cli("eval", str(shapes_dir / "det.clab"), "--data", f"yolo:{ok}",
               env={"COMPRESSION_LAB_HOME": str(tmp_path / "home")})
    assert proc.returncode == 0, proc.stderr
    assert '"map50"' in proc.stdout
    assert not marker.exists()


def bad_yamls(ds: Path):
    """(yaml text, what the one-line refusal says) for each way a dataset yaml is refused."""
    val = "val: images/val\n"
    return [
        (f"train: images/train\nval: [images/val, images/val_missing]\n{NAMES}", "are not at"),
        (f"train: images/train\n{val}test: [images/test]\n{NAMES}", "are not at"),
        (f"train: ../../etc\n{val}{NAMES}", "lies outside its dataset folder"),
        (f"train: /etc\n{val}{NAMES}", "lies outside its dataset folder"),
        (f"path: {ds}\ntrain: images/train\nval: [images/val, ../../..]\n{NAMES}", "lies outside"),
        (f"train: images/train\nval: 5\n{NAMES}", "must be a path or a list"),
        (f"train: images/train\nval: [images/val, [x]]\n{NAMES}", "must be a path or a list"),
        (f"train: images/train\n{NAMES}", "has no 'val' split"),
        (f"{val}names: []\n", "has no 'names'"),
        (f"{val}names: {{1: a, 2: b}}\n", "class numbers 0 to 1"),
        (f"{val}names: [a, [b]]\n", "must be a text"),
        (f"{val}names: [a, b]\nnc: 3\n", "'nc: 3' must be the number of names (2)"),
        (f"{val}names: [a, b]\nnc: true\n", "must be the number of names"),
        (f"{val}path: [1]\nnames: [a]\n", "'path' must be a folder name"),
        ("- just\n- a list\n", "is not a mapping"),
        ("[" * 20_000 + "]" * 20_000, "cannot read dataset yaml"),
        ("val: !!python/object/apply:os.system ['touch MARKER']\nnames: [a]\n", "cannot read dataset yaml"),
        (f"{val}names: [a]\n# " + "x" * (1 << 20) + "\n", "larger than 1024 KB"),
        (b"\xff\xfe val".decode("latin1"), "cannot read dataset yaml"),
        (f'train: images/train\nval: "images/val\\0x"\n{NAMES}', "must be a path or a list"),
        (f"train: images/train\nval: {'a' * 5000}\n{NAMES}", "must be a path or a list"),
        (f"path: ~nobody-xyz/ds\n{val}{NAMES}", "are not at"),
    ]


@pytest.mark.parametrize("case", range(len(bad_yamls(Path("/x")))))
def test_dataset_yamls_are_checked_entry_by_entry(shapes_dir, tmp_path, case):
    from complab.data.detection import check_dataset_yaml, load_detection_data

    ds = shapes_dir / "ds"
    text, message = bad_yamls(ds)[case]
    path = ds / f"bad-{tmp_path.name}.yaml"
    path.write_bytes(text.encode("latin1") if text.startswith("\xff") else text.encode())
    cwd = os.getcwd()
    os.chdir(tmp_path)  # where a `touch MARKER` would land
    try:
        with pytest.raises(DataLoadError) as caught:
            load_detection_data(f"yolo:{path}")
        with pytest.raises(DataLoadError) as direct:
            check_dataset_yaml(path)
    finally:
        os.chdir(cwd)
        path.unlink()
    assert message in one_line(caught) and str(direct.value) == str(caught.value)
    assert not (tmp_path / "MARKER").exists()


# --- item 7: symlink cycles and huge folders --------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("layout", ["flat", "splits", "nested"])
def test_a_symlink_cycle_in_an_image_folder_is_refused_quickly(tmp_path, layout):
    from complab.data import load_data

    root = tmp_path / "data"
    if layout == "splits":
        write_images(root / "train")
        write_images(root / "val")
        link = root / "val" / "cat" / "a"
    else:
        write_images(root)
        link = root / "cat" / ("deep/er" if layout == "nested" else "")
        link.mkdir(parents=True, exist_ok=True)
        link = link / "a"
    os.symlink("..", link)  # its parent folder: os.walk(followlinks=True) goes 40 links deep (246 samples, not 6)
    if layout == "flat":
        os.symlink("..", root / "dog" / "a")  # two such links: 2^40 paths, the loader never returns
    start = time.monotonic()
    with pytest.raises(DataLoadError) as caught:
        load_data(f"imagefolder:{root}", input_size=8)
    assert time.monotonic() - start < 10
    assert "symlink cycle" in one_line(caught) and str(link) in str(caught.value)


@pytest.mark.timeout(60)
def test_a_symlink_cycle_in_a_detection_folder_is_refused_quickly(shapes_dir, tmp_path):
    from complab.data.detection import load_detection_data

    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    os.symlink(shapes_dir / "ds" / "images" / "val", ds / "images" / "val")  # a link to real images: followed
    os.symlink(shapes_dir / "ds" / "images" / "train", ds / "images" / "train")
    (ds / "data.yaml").write_text(f"train: images/train\nval: images/val\n{NAMES}")
    assert len(load_detection_data(f"yolo:{ds / 'data.yaml'}").val_images()) == 6
    (ds / "images" / "more").mkdir()
    os.symlink("..", ds / "images" / "more" / "loop")
    (ds / "data.yaml").write_text(f"train: images/train\nval: [images/val, images/more]\n{NAMES}")
    start = time.monotonic()
    with pytest.raises(DataLoadError) as caught:
        load_detection_data(f"yolo:{ds / 'data.yaml'}")
    assert time.monotonic() - start < 10 and "symlink cycle" in one_line(caught)


def test_the_walk_reads_what_torchvision_read_and_follows_plain_links(tmp_path):
    """Without a cycle, the bounded walk gives torchvision's ImageFolder samples in the same order (nested folders,
    a class folder that is a link to images elsewhere), so splits and seeds are unchanged."""
    from complab.data.folders import BoundedImageFolder
    from torchvision.datasets import ImageFolder

    root = tmp_path / "data"
    write_images(root, classes=("b", "a"))
    write_images(root / "a" / "sub", classes=("x", "y"), per_class=2)
    write_images(tmp_path / "elsewhere", classes=("c",), per_class=4)
    os.symlink(tmp_path / "elsewhere" / "c", root / "c")
    (root / "a" / "notes.txt").write_text("not an image")
    ours = BoundedImageFolder(str(root)).samples
    assert ours == ImageFolder(str(root)).samples and len(ours) == 3 + 3 + 4 + 4
    assert sum(label == 2 for _, label in ours) == 4


def test_a_folder_with_too_many_files_is_refused(tmp_path, monkeypatch):
    from complab.data import load_data, walk

    write_images(tmp_path / "data", per_class=6)
    monkeypatch.setattr(walk, "MAX_FILES", 5)
    with pytest.raises(DataLoadError, match="more than 5 files and folders") as caught:
        load_data(f"imagefolder:{tmp_path / 'data'}", input_size=8)
    one_line(caught)
    monkeypatch.setattr(walk, "MAX_FILES", 1)
    with pytest.raises(DataLoadError, match="more than 1 files and folders"):
        load_data(f"imagefolder:{tmp_path / 'data'}", input_size=8)


# --- item 8: links name only shared folders; messages list no folder ---------------------------------------------

@pytest.fixture
def app_home(tmp_path, monkeypatch):
    """A data folder with one uploaded state dict (so a link gets as far as its dataset) and one dataset."""
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("COMPRESSION_LAB_DATA_ROOTS", raising=False)
    from complab.ui.state import save_upload

    upload = save_upload(b"state dict bytes", "resnet18.pt")
    write_images(tmp_path / "home" / "data" / "pets")
    return tmp_path / "home", upload


def link(upload, data, **extra):
    return {"model": f"upload:{upload.name[:12]}", "arch": "resnet18", "data": data, **extra}


def test_a_link_names_only_folders_under_the_data_folder(app_home, tmp_path):
    from complab.ui.state import link_params, spec_from_link, uploads_folder

    home, upload = app_home
    folder = uploads_folder()
    pets = f"imagefolder:{home / 'data' / 'pets'}"
    spec, problem = spec_from_link(link(upload, pets), folder)
    assert problem is None and spec["data"] == pets and spec["weights"] == str(upload)
    assert link_params(spec, folder)["data"] == pets

    (home / "data" / "escape").symlink_to("/etc")
    refusals = set()
    for data in ("imagefolder:/etc", "imagefolder:/nonexistent-folder-xyz", "cifar10:/root", "cifar100:/",
                 f"imagefolder:{home / 'data' / '..' / '..'}", f"imagefolder:{home / 'data' / 'escape'}",
                 "imagefolder:data/pets", "imagefolder:~", "imagefolder:", f"imagefolder:{home}",
                 "imagefolder:/etc\x00", "imagefolder:" + "/a" * 3000):
        linked, problem = spec_from_link(link(upload, data), folder)
        assert linked is None and "not under a folder this server shares" in problem, (data, problem)
        refusals.add(problem)
        assert link_params({"model": "torchvision:resnet18", "weights": str(upload), "data": data,
                            "input_size": None, "mean": None, "std": None}, folder) is None
    assert len(refusals) == 1  # the same words whether the folder exists or not: nothing about it is told
    refusal = refusals.pop()
    assert not any(name in refusal for name in os.listdir("/etc") if len(name) > 4)
    for model in (["upload:x"], {"a": 1}, 5):  # a URL's values are whatever the caller passes
        assert spec_from_link({"model": model, "data": "digits"}, folder)[0] is None
    for data in ("yolo:/etc/x.yaml", "shapes", 5, None, ["digits"]):
        linked, problem = spec_from_link(link(upload, data), folder)
        assert linked is None and "not digits or a dataset folder" in problem


def test_the_owner_shares_more_roots_by_flag_or_environment(tmp_path):
    from complab.ui.links import data_roots, link_data_problem

    shared, other = tmp_path / "shared", tmp_path / "other"
    write_images(shared / "set")
    write_images(other / "set")
    home = tmp_path / "home"
    argv = ["app.py", "--data-root", str(shared), "--data-root", "relative/ignored"]
    roots = data_roots(home, argv=argv, env={})
    assert roots == [(home / "data").resolve(), shared.resolve()]
    assert link_data_problem(f"imagefolder:{shared / 'set'}", roots) is None
    assert link_data_problem(f"imagefolder:{other / 'set'}", roots) is not None
    env = {"COMPRESSION_LAB_DATA_ROOTS": f"{other}{os.pathsep}{shared}", "COMPRESSION_LAB_DATA": str(tmp_path / "d")}
    roots = data_roots(home, argv=[], env=env)
    assert link_data_problem(f"cifar10:{other / 'set'}", roots) is None
    assert link_data_problem(f"cifar10:{tmp_path / 'd' / 'x'}", roots) is None
    assert link_data_problem(f"cifar10:{tmp_path}", roots) is not None
    assert link_data_problem("digits", []) is None


def test_dataset_messages_list_no_folder_contents(tmp_path):
    from complab.data import load_data

    (tmp_path / "a" / "train" / "secret_one").mkdir(parents=True)
    (tmp_path / "a" / "val" / "secret_two").mkdir(parents=True)
    write_images(tmp_path / "a" / "train", classes=("secret_one",))
    write_images(tmp_path / "a" / "val", classes=("secret_two",))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "secret_file.txt").write_text("x")
    write_images(tmp_path / "c", classes=("secret_three", "secret_four"))
    (tmp_path / "c" / "secret_empty").mkdir()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "data_batch_1").write_bytes(b"x")
    for ref in (f"imagefolder:{tmp_path / 'a'}", f"imagefolder:{tmp_path / 'b'}", f"imagefolder:{tmp_path / 'c'}",
                f"cifar10:{tmp_path / 'd'}"):
        with pytest.raises(DataLoadError) as caught:
            load_data(ref, input_size=8)
        message = one_line(caught)
        assert "secret" not in message.replace(str(tmp_path), ""), message
    with pytest.raises(DataLoadError, match="1 only in train, 1 only in val"):
        load_data(f"imagefolder:{tmp_path / 'a'}", input_size=8)


# --- item 14: link numbers, --home ------------------------------------------------------------------------------

def test_link_numbers_are_ascii_digits_in_range(app_home):
    from complab.ui.links import link_image_index, link_int, link_presenting, link_run_id
    from complab.ui.state import spec_from_link, uploads_folder

    home, upload = app_home
    pets = f"imagefolder:{home / 'data' / 'pets'}"
    for size in ("²", "٣٢", "３２", "-1", "+32", " 32", "32 ", "1e3", "0x20", "7", "1025", "999999", "", [32], 32):
        linked, problem = spec_from_link(link(upload, pets, size=size), uploads_folder())
        assert linked is None and "is not a number of pixels from 8 to 1024" in problem, size
    assert spec_from_link(link(upload, pets, size="0032"), uploads_folder())[0]["input_size"] == 32
    assert [link_int(v, 0, 99) for v in ("²", "5", "99", "100", "05", None, "")] == [None, 5, 99, None, 5, None,
                                                                                      None]
    assert [link_image_index(v, 10) for v in ("²", "3", "999", None, "-2", "٣")] == [0, 3, 9, 0, 0, 0]
    assert link_image_index("3", 0) == 0
    assert link_run_id("20261201-101500-ab12") == "20261201-101500-ab12"
    assert [link_run_id(v) for v in ("../x", "", "a/b", "²", None, "a" * 101)] == [None] * 6
    assert link_presenting("1") and not link_presenting("１") and not link_presenting(None)


@pytest.mark.timeout(300)
def test_the_app_shows_a_bad_link_as_a_warning(app_home):
    """`size=²` raised ValueError on every page; `data=imagefolder:/etc` listed the server's folders."""
    from streamlit.testing.v1 import AppTest

    _, upload = app_home
    for query in (link(upload, "digits", size="²"), link(upload, "imagefolder:/etc")):
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
        for key, value in query.items():
            at.query_params[key] = value
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        warnings = " ".join(w.value for w in at.warning)
        assert "Opened the demo model instead" in warnings
        assert at.session_state["active"]["model"] == "demo:lenet5"
        assert "passwd" not in warnings and "hosts" not in warnings


@pytest.mark.timeout(300)
def test_the_app_refuses_an_empty_home(monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["app.py", "--home", ""])
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("--home is empty" in e.value for e in at.error)
    assert list(tmp_path.iterdir()) == []  # the working folder did not become a data folder


@pytest.mark.parametrize("home, message", [
    ("", "--home is empty"),
    ("  ", "--home is empty"),
    ("/proc", "on /proc, a kernel file system"),
    ("/proc/self/x", "on /proc, a kernel file system"),
    ("/sys/kernel", "on /sys, a kernel file system"),
])
def test_cli_home_is_refused_as_what_it_is(tmp_path, home, message):
    proc = cli("runs", "--home", home, cwd=tmp_path)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and message in err[0], proc.stderr
    assert "disk full" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written in the working folder


def test_home_checks_in_process(tmp_path, monkeypatch):
    from complab import engine
    from complab.paths import HomeError, check_home, home_option

    with pytest.raises(HomeError, match="--home is empty"):
        home_option("")
    assert home_option(str(tmp_path)) == tmp_path
    assert check_home(tmp_path / "new" / "folder") == tmp_path / "new" / "folder"
    with pytest.raises(CompressionLabError, match="kernel file system") as caught:
        engine.list_runs(root="/proc")
    one_line(caught)
    monkeypatch.setenv("COMPRESSION_LAB_HOME", "/proc/x")
    with pytest.raises(CompressionLabError, match="kernel file system"):
        engine.list_runs()


@pytest.mark.timeout(60)
def test_a_cifar_batch_that_is_a_device_or_huge_is_refused_unread(tmp_path, monkeypatch):
    from complab.data import folders, load_data

    os.symlink("/dev/zero", tmp_path / "data_batch_1")
    for name in ("data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        (tmp_path / name).write_bytes(b"x" * 64)
    start = time.monotonic()
    with pytest.raises(DataLoadError, match="missing cifar10 batch files") as caught:  # not a plain file
        load_data(f"cifar10:{tmp_path}")
    assert time.monotonic() - start < 10 and one_line(caught)
    (tmp_path / "data_batch_1").unlink()
    (tmp_path / "data_batch_1").write_bytes(b"x" * 64)
    monkeypatch.setattr(folders, "MAX_CIFAR_FILE_BYTES", 32)
    with pytest.raises(DataLoadError, match="at most 0 MB"):
        load_data(f"cifar10:{tmp_path}")


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_an_image_that_is_a_fifo_or_a_device_is_refused_unopened(tmp_path, kind):
    """The fuzz campaign's folders family: a FIFO named pipe.png blocked Image.open forever (a hang)."""
    from complab.data import load_data

    write_images(tmp_path)
    if kind == "fifo":
        os.mkfifo(tmp_path / "dog" / "pipe.png")
    else:
        os.symlink("/dev/zero", tmp_path / "cat" / "zero.png")
    start = time.monotonic()
    with pytest.raises(DataLoadError, match="not a regular file") as caught:
        load_data(f"imagefolder:{tmp_path}", input_size=8)
    assert time.monotonic() - start < 10 and one_line(caught)


def test_an_unreadable_image_after_ultralytics_is_a_one_line_error(tmp_path):
    """Ultralytics replaced PIL.Image.open process-wide with one that answers an unidentified file by installing
    pi-heif: an image folder loaded after a detector raised ModuleNotFoundError (the fuzz campaign's folders
    family). offline_ultralytics gives Pillow's open back."""
    from complab.data import load_data
    from complab.models.yolo_env import offline_ultralytics

    offline_ultralytics()
    import ultralytics.utils.patches  # noqa: F401 - what patched Image.open on import
    from PIL import Image as PILImage

    assert PILImage.open is ultralytics.utils.patches._image_open
    write_images(tmp_path)
    (tmp_path / "cat" / "bad.png").write_bytes(b"\x89PNG not an image" * 10)
    with pytest.raises(DataLoadError, match="not a readable image") as caught:
        load_data(f"imagefolder:{tmp_path}", input_size=8)
    one_line(caught)
