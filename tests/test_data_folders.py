"""Local datasets the tests write themselves: ImageFolder (split or not) and CIFAR-10/100 python batches."""

import io
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from complab.data import load_data
from complab.errors import DataLoadError
from PIL import Image


def write_images(folder, classes=("cat", "dog", "fox"), per_class=4, size=20):
    rng = np.random.default_rng(0)
    for cls in classes:
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / cls / f"{i}.png")


def test_imagefolder_with_splits(tmp_path):
    write_images(tmp_path / "train")
    write_images(tmp_path / "val", per_class=2)
    data = load_data(f"imagefolder:{tmp_path}", input_size=16)
    assert (len(data.train), len(data.val), len(data.test)) == (12, 6, 6)
    assert data.num_classes == 3 and data.class_names == ["cat", "dog", "fox"]
    images, labels = next(iter(data.loader("val", batch_size=2)))
    assert images.shape == (2, 3, 16, 16) and labels.tolist() == [0, 0]


def test_imagefolder_flat_is_split_and_greyscale(tmp_path):
    write_images(tmp_path, per_class=10)
    data = load_data(f"imagefolder:{tmp_path}", input_size=8, in_channels=1, mean=(0.5,), std=(0.5,))
    assert (len(data.train), len(data.val), len(data.test)) == (18, 6, 6)
    assert data.input_shape == (1, 8, 8)
    assert next(iter(data.loader("train", batch_size=4)))[0].shape == (4, 1, 8, 8)


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "has no class folders with images"),
    (lambda p: (p / "notes.txt").write_text("x"), "has no class folders with images"),
    (lambda p: (write_images(p / "train"), write_images(p / "val", classes=("cat", "emu"))),
     "every split needs the same class folders"),
])
def test_imagefolder_bad_input(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(DataLoadError, match=message):
        load_data(f"imagefolder:{tmp_path}", input_size=16)


def test_missing_folder():
    with pytest.raises(DataLoadError, match="does not exist"):
        load_data("cifar10:/no/such/folder")


def write_cifar10(folder, rows=6):
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 255, (rows, 3072), dtype=np.uint8), b"labels": list(range(rows))}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)


def test_cifar10_and_cifar100(tmp_path):
    write_cifar10(tmp_path / "c10" / "cifar-10-batches-py")
    data = load_data(f"cifar10:{tmp_path / 'c10'}", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert (len(data.train), len(data.val), len(data.test)) == (27, 3, 6)
    assert data.class_names[3] == "c3" and data.input_shape == (3, 32, 32)
    images, _ = data.train[0]
    assert -2.1 <= float(images.min()) and float(images.max()) <= 2.1
    c100 = tmp_path / "c100"
    c100.mkdir()
    rng = np.random.default_rng(2)
    for name in ("train", "test"):
        with open(c100 / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 255, (20, 3072), dtype=np.uint8),
                         b"fine_labels": list(range(0, 100, 5))}, f)
    data = load_data(f"cifar100:{c100}", input_size=16)
    assert data.num_classes == 100 and data.input_shape == (3, 16, 16) and len(data.test) == 20


class Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.target}",))


def test_malicious_cifar_batch_is_refused_without_running(tmp_path):
    write_cifar10(tmp_path)
    victim = tmp_path / "pwned.txt"
    with open(tmp_path / "data_batch_3", "wb") as f:
        pickle.dump({b"data": Evil(victim), b"labels": [0]}, f)
    with pytest.raises(DataLoadError, match="refusing to load .*data_batch_3: it asks to run code"):
        load_data(f"cifar10:{tmp_path}")
    assert not victim.exists()


@pytest.mark.parametrize("corrupt, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:50]), "cannot read CIFAR batch"),
    (lambda p: p.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})),
     "expected N x 3072 uint8 rows"),
    (lambda p: p.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]})),
     "labels outside"),
    (lambda p: p.unlink(), "is missing"),
])
def test_damaged_cifar_batches(tmp_path, corrupt, message):
    write_cifar10(tmp_path)
    corrupt(tmp_path / "data_batch_2")
    with pytest.raises(DataLoadError, match=message):
        load_data(f"cifar10:{tmp_path}")


# ---------------------------------------------------------------------------------------------- more cases


def write_constant(folder, colour, count=2, size=12):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (size, size), colour).save(folder / f"{i}.png")


def test_imagefolder_test_split_normalisation_and_determinism(tmp_path):
    for split, count in (("train", 3), ("val", 2), ("test", 1)):
        write_constant(tmp_path / split / "red", (255, 0, 0), count)
        write_constant(tmp_path / split / "grey", (128, 128, 128), count)
    data = load_data(f"imagefolder:{tmp_path}", input_size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert (len(data.train), len(data.val), len(data.test)) == (6, 4, 2)
    assert data.class_names == ["grey", "red"] and data.input_shape == (3, 8, 8)
    images, labels = next(iter(data.loader("test", batch_size=2)))
    assert images.shape == (2, 3, 8, 8) and labels.tolist() == [0, 1]
    red = images[1].mean(dim=(1, 2))  # (1 - 0.5) / 0.5 = 1 in red, (0 - 0.5) / 0.5 = -1 elsewhere
    assert torch.allclose(red, torch.tensor([1.0, -1.0, -1.0]), atol=1e-3)
    assert abs(float(images[0].mean()) - (128 / 255 - 0.5) / 0.5) < 1e-3


def test_flat_imagefolder_split_is_seeded(tmp_path):
    write_images(tmp_path, classes=("a", "b"), per_class=5)
    first = load_data(f"imagefolder:{tmp_path}", input_size=8)
    second = load_data(f"imagefolder:{tmp_path}", input_size=8)
    assert (len(first.train), len(first.val), len(first.test)) == (6, 2, 2)
    assert first.class_names == ["a", "b"] and first.num_classes == 2
    assert first.test.indices == second.test.indices
    everything = set(first.train.indices) | set(first.val.indices) | set(first.test.indices)
    assert everything == set(range(10))


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "no class folders with images.*expected class sub-folders like DIR/train/cat"),
    (lambda p: (p / "notes.txt").write_text("x"), "no class folders with images"),
    (lambda p: write_images(p / "train"), "has train/ but no val/"),
    (lambda p: ((p / "train" / "cat").mkdir(parents=True), (p / "val" / "cat").mkdir(parents=True)),
     "images in every class folder"),
    (lambda p: (write_images(p / "train"), write_images(p / "val"),
                write_images(p / "test", classes=("cat",))),
     r"2 only in train, 0 only in test"),
])
def test_imagefolder_errors_name_the_folder(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(DataLoadError, match=message) as caught:
        load_data(f"imagefolder:{tmp_path}", input_size=16)
    assert str(tmp_path) in str(caught.value)


def test_imagefolder_missing_folder_calls_into_loader_directly(tmp_path):
    from complab.data.folders import load_imagefolder

    with pytest.raises(DataLoadError, match="does not exist"):
        load_data(f"imagefolder:{tmp_path / 'nope'}")
    with pytest.raises(DataLoadError, match=f"{tmp_path / 'nope'} does not exist"):
        load_imagefolder(tmp_path / "nope", 16, (0.5,), (0.5,))


class Py2Pickler(pickle._Pickler):
    """Writes bytes and str the way Python 2's cPickle wrote the real CIFAR files (BINSTRING opcodes)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_string(self, obj):
        raw = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_py2_string
    dispatch[str] = save_py2_string


def dump_py2(obj, path):
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    # Python 2 / numpy 1 named the array constructor numpy.core.multiarray.
    path.write_bytes(buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))


def test_cifar10_python2_style_files_resized(tmp_path):
    rng = np.random.default_rng(3)
    rows = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows[name] = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        dump_py2({b"batch_label": b"x", b"data": rows[name], b"labels": [0, 1, 2, 9],
                  b"filenames": [b"a.png"] * 4}, tmp_path / name)
    dump_py2({b"label_names": [b"airplane", b"automobile"] + [b"c%d" % i for i in range(2, 10)],
              b"num_vis": 3072}, tmp_path / "batches.meta")
    assert b"cnumpy.core.multiarray\n_reconstruct" in (tmp_path / "test_batch").read_bytes()
    data = load_data(f"cifar10:{tmp_path}", input_size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert (len(data.train), len(data.val), len(data.test)) == (18, 2, 4)
    assert data.class_names[:2] == ["airplane", "automobile"] and data.num_classes == 10
    images, labels = next(iter(data.loader("test", batch_size=4)))
    assert images.shape == (4, 3, 16, 16) and labels.tolist() == [0, 1, 2, 9]
    # Bilinear resizing keeps the per-channel average of each image (up to edge effects).
    original = torch.from_numpy(rows["test_batch"].reshape(4, 3, 32, 32)).float() / 255
    assert torch.allclose(images.mean(dim=(2, 3)), original.mean(dim=(2, 3)), atol=0.02)
    single, label = data.test[3]
    assert torch.allclose(single, images[3]) and int(label) == 9


def test_cifar_constant_image_is_normalised_and_split_is_seeded(tmp_path):
    write_cifar10(tmp_path, rows=10)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.full((2, 3072), 51, np.uint8), b"labels": [4, 5]}, f)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.5, 0.5)
    data = load_data(f"cifar10:{tmp_path}", mean=mean, std=std)
    images, labels = next(iter(data.loader("test", batch_size=2)))
    expected = torch.tensor([(0.2 - m) / s for m, s in zip(mean, std, strict=True)])
    assert torch.allclose(images.mean(dim=(0, 2, 3)), expected, atol=1e-5) and labels.tolist() == [4, 5]
    again = load_data(f"cifar10:{tmp_path}", mean=mean, std=std)
    assert torch.equal(data.val.labels, again.val.labels) and torch.equal(data.val.images, again.val.images)
    assert (len(data.train), len(data.val)) == (45, 5)
    assert data.class_names == [f"c{i}" for i in range(10)]


def test_cifar100_with_meta_in_subfolder(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    rng = np.random.default_rng(4)
    for name, count in (("train", 30), ("test", 6)):
        with open(root / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                         b"fine_labels": [i % 100 for i in range(0, 3 * count, 3)],
                         b"coarse_labels": [0] * count}, f)
    with open(root / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"k{i}".encode() for i in range(100)],
                     b"coarse_label_names": [b"x"] * 20}, f)
    data = load_data(f"cifar100:{tmp_path}")
    assert (len(data.train), len(data.val), len(data.test)) == (27, 3, 6)
    assert data.num_classes == 100 and data.class_names[99] == "k99" and data.input_shape == (3, 32, 32)
    images, labels = next(iter(data.loader("val", batch_size=2)))
    assert images.shape == (2, 3, 32, 32) and labels.dtype == torch.int64


@pytest.mark.parametrize("target", ["test_batch", "batches.meta"])
def test_malicious_top_level_pickle_is_refused(tmp_path, target):
    write_cifar10(tmp_path)
    victim = tmp_path / "pwned.txt"
    for protocol in (0, 2, 4, 5):
        (tmp_path / target).write_bytes(pickle.dumps(Evil(victim), protocol=protocol))
        with pytest.raises(DataLoadError, match=f"refusing to load .*{target}.*GLOBAL (posix|os).system"):
            load_data(f"cifar10:{tmp_path}")
        assert not victim.exists()


@pytest.mark.parametrize("payload, message", [
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images but 1"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "float32 array"),
    ({b"data": [[0] * 3072], b"labels": [0]}, "'data' is a list"),
    ({b"labels": [0]}, "no 'data' entry"),
    ([1, 2, 3], "holds a list, not the dict"),
    ({b"data": np.zeros((1, 3072), np.uint8), b"labels": ["cat"]}, "not a list of integers"),
])
def test_bad_cifar_contents_name_the_file(tmp_path, payload, message):
    write_cifar10(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(payload))
    with pytest.raises(DataLoadError, match=message) as caught:
        load_data(f"cifar10:{tmp_path}")
    assert str(tmp_path / "test_batch") in str(caught.value)


def test_truncated_and_empty_cifar_files_name_the_file(tmp_path):
    write_cifar10(tmp_path)
    batch = tmp_path / "data_batch_5"
    full = batch.read_bytes()
    for cut in (0, 1, len(full) // 2, len(full) - 1):
        batch.write_bytes(full[:cut])
        with pytest.raises(DataLoadError, match="cannot read CIFAR batch .*data_batch_5"):
            load_data(f"cifar10:{tmp_path}")


def test_missing_cifar_files_say_what_the_folder_needs(tmp_path):
    """The message names the files a CIFAR folder holds, never which of them this one has (issue 24: a link's
    `cifar10:/root` told which files existed)."""
    write_cifar10(tmp_path)
    (tmp_path / "data_batch_4").unlink()
    (tmp_path / "test_batch").unlink()
    with pytest.raises(DataLoadError, match="missing cifar10 batch files: a cifar10 folder holds data_batch_1, "
                                            "data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch"):
        load_data(f"cifar10:{tmp_path}")
    with pytest.raises(DataLoadError, match="missing cifar100 batch files: a cifar100 folder holds train, test"):
        load_data(f"cifar100:{tmp_path}")
