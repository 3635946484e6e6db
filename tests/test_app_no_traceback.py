"""No traceback on any page (issue 26): every page of app.py's navigation opens with each demo model, the demo
detector and an RGB model uploaded while the grey digits are still the data; a model that does not fit its data
is refused in one line naming the problem and the fix (models/handle.check_model_fits), before anything is
measured, and never becomes the active model."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from complab.data import load_data
from complab.errors import CompressionLabError, MismatchError
from complab.models.handle import ModelHandle, check_model_fits, load_model
from complab.models.zoo import DEMO_MODELS
from streamlit.testing.v1 import AppTest
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
PAGES = re.findall(r'st\.Page\("(pages/\w+\.py)"', (ROOT / "app.py").read_text())


def test_the_page_list_is_app_pys():
    assert len(PAGES) >= 7 and "pages/model.py" in PAGES and all((ROOT / page).is_file() for page in PAGES)


# --- the check on its own: channels, classes, input size ------------------------------------------------------

def mismatch(handle, data) -> str:
    with pytest.raises(MismatchError) as caught:
        check_model_fits(handle, data)
    message = str(caught.value)
    assert "\n" not in message and ": " in message  # one line: the problem, then the fix
    return message


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("resnet") / "resnet18.pt"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    return path


def rgb_folder(folder: Path, classes: int = 10, per_class: int = 2, side: int = 32) -> Path:
    from PIL import Image

    for index in range(classes):
        (folder / f"c{index}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (side, side), (20 * index, 100 * i, 50)).save(folder / f"c{index}" / f"{i}.png")
    return folder


def bundle(data, channels: int, ref: str = "cifar10:/somewhere/cifar", **changes):
    """The digits' splits as a dataset of `channels`-channel images (the grey channel repeated)."""
    def repeat(split):
        images, labels = split.tensors
        return torch.utils.data.TensorDataset(images.repeat(1, channels, 1, 1), labels)

    return dataclasses.replace(data, ref=ref, train=repeat(data.train), val=repeat(data.val), test=repeat(data.test),
                               input_shape=(channels, *data.input_shape[1:]), **changes)


def test_an_rgb_model_on_the_grey_digits_is_named_with_the_fix(resnet18_file):
    handle = load_model("torchvision:resnet18", resnet18_file, input_size=32)
    digits = load_data("digits", input_size=32)
    message = mismatch(handle, digits)
    assert message.startswith("This model (resnet18) expects 3-channel (RGB) images but the digits are 1-channel")
    assert "RGB image folder" in message and "made for 1-channel input" in message
    check_model_fits(handle, bundle(digits, 3))  # the same images in three channels fit


def test_a_grey_model_on_rgb_images_is_named_with_the_fix(lenet5, digits28):
    message = mismatch(lenet5, bundle(digits28, 3))
    assert "expects 1-channel (grey) images but the images of cifar are 3-channel (RGB)" in message
    assert "made for 3-channel input" in message


def test_a_class_count_that_differs_is_named(lenet5, digits28):
    assert "predicts 10 classes but the dataset has 7" in mismatch(lenet5, dataclasses.replace(digits28,
                                                                                               num_classes=7))
    # a handle that says 10 classes but whose head gives 7 scores: the forward pass tells
    head = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 7))
    wrong = ModelHandle(head, {"kind": "demo", "name": "tiny"}, (1, 28, 28), 10, "tiny")
    assert "This model (tiny) outputs 7 scores per image but the digits have 10 classes" in mismatch(wrong, digits28)


def test_a_fixed_size_head_names_the_size(digits28):
    lenet300 = load_model("demo:lenet300")  # fully connected from the first layer: 28x28 only
    assert "reads 784 values per image" in mismatch(lenet300, load_data("digits", input_size=32))
    check_model_fits(lenet300, digits28)
    # convolutions, then a Linear after flatten: a fixed size hidden behind a convolutional stem
    fixed = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    handle = ModelHandle(fixed, {"kind": "demo", "name": "fixed"}, (1, 28, 28), 10, "fixed")
    check_model_fits(handle, digits28)
    message = mismatch(handle, load_data("digits", input_size=32))
    assert message.startswith("This model (fixed) cannot take 32x32 images of 1 channel") and "input size" in message


def test_adaptive_pooling_takes_any_size_and_the_check_leaves_the_model_as_it_was(resnet18_file):
    handle = load_model("torchvision:resnet18", resnet18_file, input_size=32)
    handle.model.train()
    before = {k: v.clone() for k, v in handle.model.state_dict().items()}
    for side in (20, 48):
        check_model_fits(handle, bundle(load_data("digits", input_size=side), 3))
    assert handle.model.training  # put back in the mode it was in
    assert all(torch.equal(before[k], v) for k, v in handle.model.state_dict().items())  # batch-norm stats too
    vgg_small = load_model("demo:vgg_small")
    check_model_fits(vgg_small, load_data("digits", input_size=20))


def test_a_source_spec_is_refused_when_loaded_and_fits_with_rgb_data(resnet18_file, tmp_path):
    from complab import sources

    spec = {"model": "torchvision:resnet18", "weights": str(resnet18_file), "data": "digits", "input_size": 32}
    with pytest.raises(CompressionLabError, match="expects 3-channel"):
        sources.load(spec)
    folder = rgb_folder(tmp_path / "rgb")
    handle, data = sources.load({**spec, "data": f"imagefolder:{folder}"})
    assert data.input_shape == (3, 32, 32) and handle.num_classes == data.num_classes == 10


# --- every page, in the app -----------------------------------------------------------------------------------

@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESSION_LAB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def app() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=240)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def no_exception(at: AppTest, where: str) -> None:
    assert not at.exception, (where, [e.value for e in at.exception])


def every_page(at: AppTest, model: str) -> None:
    """Open each page of the navigation with the active model `model`; none shows an exception element. The Lesson
    page makes its own model active while it is open; the sidebar's way back then makes `model` active again."""
    from complab.analysis.lesson import LESSON_SPEC

    for page in PAGES:
        at.switch_page(page).run()
        no_exception(at, f"{page} with {model}")
        expected = LESSON_SPEC["model"] if page == "pages/lesson.py" else model
        assert at.session_state["active"]["model"] == expected, page
    if "pages/lesson.py" in PAGES and model != LESSON_SPEC["model"]:
        at.switch_page("pages/model.py").run()
        at.sidebar.button(key="back_from_lesson").click().run()
        no_exception(at, f"back from the lesson to {model}")
        assert at.session_state["active"]["model"] == model


def test_every_page_with_the_default_demo_model(home):
    every_page(app(), "demo:lenet5")


@pytest.mark.slow  # 7 pages x 3 more models, 15 s here: the quick loop keeps every page on the default model,
# on the refused upload and on the uploaded RGB model (below)
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", [name for name in DEMO_MODELS if name != "lenet5"] + ["detector"])
def test_every_page_with_each_demo_model(home, name):
    at = app()
    if name == "detector":
        at.radio(key="model_source").set_value("Demo detector (YOLO)").run()
        model = "detector:demo"
    else:
        at.selectbox(key="demo_model").select(name).run()
        model = f"demo:{name}"
    no_exception(at, f"choosing {model}")
    assert not at.error, [e.value for e in at.error]
    every_page(at, model)


@pytest.mark.timeout(900)
def test_an_rgb_upload_on_the_digits_is_one_line_and_clears_on_a_fitting_folder(home, resnet18_file, tmp_path):
    at = app()
    upload(at, resnet18_file)
    no_exception(at, "the upload")
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert "expects 3-channel (RGB) images but the digits are 1-channel" in errors[0]
    assert at.session_state["active"]["model"] == "demo:lenet5"  # never made active
    assert any("Still using demo:lenet5" in c.value for c in at.caption)
    assert {m.label for m in at.metric} >= {"Test accuracy", "Parameters"}  # the active model is still measured

    at.run()  # a rerun with the upload still there says it again, without a traceback
    no_exception(at, "a rerun")
    assert [e.value for e in at.error] == errors

    at.radio(key="data_source").set_value("Local folder").run()  # no folder typed yet: still the digits
    assert [e.value for e in at.error] == errors
    at.text_input(key="data_folder").input(str(rgb_folder(tmp_path / "rgb"))).run()
    no_exception(at, "the RGB folder")
    assert not at.error, [e.value for e in at.error]
    assert at.session_state["active"]["model"] == "torchvision:resnet18"
    assert at.session_state["active"]["data"] == f"imagefolder:{tmp_path / 'rgb'}"
    assert "%" in {m.label: m.value for m in at.metric}["Test accuracy"]

    at.radio(key="data_source").set_value("Demo digits").run()  # back to the digits: refused again, still active
    assert "expects 3-channel" in " ".join(e.value for e in at.error)
    assert at.session_state["active"]["model"] == "torchvision:resnet18"
    at.radio(key="model_source").set_value("Demo model").run()  # a fitting model: the message goes away
    no_exception(at, "back to a demo model")
    assert not at.error, [e.value for e in at.error]
    assert at.session_state["active"]["model"].startswith("demo:")


def upload(at: AppTest, resnet18_file: Path) -> None:
    at.radio(key="model_source").set_value("Upload a file").run()
    at.number_input(key="upload_size").set_value(32).run()
    at.file_uploader(key="upload_file").set_value(("resnet18.pt", resnet18_file.read_bytes(),
                                                    "application/octet-stream")).run()


@pytest.mark.timeout(900)
def test_every_page_after_a_refused_upload_and_with_the_uploaded_model(home, resnet18_file, tmp_path):
    at = app()
    upload(at, resnet18_file)
    assert "expects 3-channel" in " ".join(e.value for e in at.error)
    every_page(at, "demo:lenet5")  # the refused upload left the demo active: every page works on it
    at.switch_page("pages/model.py").run()  # (leaving the page dropped the upload, as a browser does)
    at.radio(key="data_source").set_value("Local folder").run()  # the folder first this time, then the model
    at.text_input(key="data_folder").input(str(rgb_folder(tmp_path / "rgb"))).run()
    assert at.session_state["active"]["model"] == "demo:lenet5"  # a grey model reads the folder as grey
    upload(at, resnet18_file)
    assert not at.error, [e.value for e in at.error]
    every_page(at, "torchvision:resnet18")


def test_a_page_whose_active_data_is_gone_says_so_in_one_line(home, tmp_path):
    """An active model whose data folder disappears (after the cache let it go): st.error, no traceback."""
    from complab.ui import state

    folder = rgb_folder(tmp_path / "grey-ok")
    at = app()
    at.radio(key="data_source").set_value("Local folder").run()
    at.text_input(key="data_folder").input(str(folder)).run()
    assert at.session_state["active"]["data"] == f"imagefolder:{folder}"
    for path in sorted(folder.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    folder.rmdir()
    state._loaded.clear()
    for page in ("pages/plan.py", "pages/sensitivity.py"):
        at.switch_page(page).run()
        no_exception(at, page)
        assert any("does not exist" in e.value for e in at.error), page
