"""Local datasets the tests write themselves: ImageFolder (split or not) and CIFAR-10/100 python batches."""

import os
import pickle

import numpy as np
import pytest
from PIL import Image

from compression.data import load_data
from compression.errors import DataLoadError


def write_images(folder, classes=("cat", "dog", "fox"), per_class=4, size=20):
    rng = np.random.default_rng(0)
    for cls in classes:
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / cls / f"{i}.png")


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
