"""Torchvision's on-disk layouts read without torchvision: tiny files in the real formats, exact round trips."""

import gzip
import os
import pickle
import struct

import numpy as np
import pytest

import autonorm
from autonorm import ComponentChoice, SpecError
from autonorm.data import load_data
from plugins.torchvision_layouts import read_idx

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # 0x00000803: unsigned bytes, 3 dims; 0x00000801: 1 dim


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic (0, 0, 0x08, ndim), big-endian dims, then the data."""
    return struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist(root, folder="MNIST", n_train=40, n_test=20, gz=False, seed=0):
    """Random 28x28 images and labels in ``root/<folder>/raw``, as torchvision's download leaves them."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        arrays[prefix] = images, labels
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(array)
            name = raw / f"{prefix}-{kind}-ubyte"
            if gz:
                with gzip.open(f"{name}.gz", "wb") as f:
                    f.write(data)
            else:
                name.write_bytes(data)
    return arrays


def write_cifar(root, hundred=False, per_batch=6, n_test=8, seed=0):
    """CIFAR pickles (bytes keys, N x 3072 channel-major rows) in torchvision's extracted folder."""
    rng = np.random.default_rng(seed)
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    classes, key = (100, b"fine_labels") if hundred else (10, b"labels")
    files = (["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]), ["test" if hundred else "test_batch"]
    written = {}
    for split, names in zip(("train", "test"), files, strict=True):
        rows, labels = [], []
        for name in names:
            n = per_batch * (5 if hundred else 1) if split == "train" else n_test
            data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            y = [int(v) for v in rng.integers(0, classes, n)]
            entry = {b"batch_label": name.encode(), b"data": data, key: y}
            if hundred:
                entry[b"coarse_labels"] = [v // 5 for v in y]
            (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
            rows.append(data)
            labels += y
        written[split] = np.concatenate(rows), np.array(labels)
    return written


def dataset(name, **params):
    return autonorm.get_registry().get("dataset", name).bind(params)()


def test_idx_header_is_the_mnist_magic(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = idx_bytes(images)
    assert struct.unpack(">I", data[:4])[0] == IMAGES_MAGIC
    assert struct.unpack(">I", idx_bytes(images[:, 0, 0])[:4])[0] == LABELS_MAGIC
    (tmp_path / "a").write_bytes(data)
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), images)


@pytest.mark.parametrize(
    "name, folder, gz", [("mnist", "MNIST", False), ("fashion_mnist", "FashionMNIST", True), ("kmnist", "KMNIST", True)]
)
def test_mnist_family_round_trips_pixels_and_labels(tmp_path, name, folder, gz):
    written = write_mnist(tmp_path, folder, gz=gz)
    arrays = dataset(name, root=str(tmp_path))
    assert arrays.x.shape == (40, 1, 28, 28) and arrays.x_test.shape == (20, 1, 28, 28)
    assert arrays.x.dtype == np.float32 and arrays.num_classes == 10 and arrays.x_val is None
    np.testing.assert_array_equal(arrays.x[:, 0], written["train"][0].astype(np.float32) / 255)
    np.testing.assert_array_equal(arrays.x_test[:, 0], written["t10k"][0].astype(np.float32) / 255)
    np.testing.assert_array_equal(arrays.y, written["train"][1])
    np.testing.assert_array_equal(arrays.y_test, written["t10k"][1])


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_round_trips_channel_major_rows(tmp_path, hundred):
    written = write_cifar(tmp_path, hundred)
    arrays = dataset("cifar100" if hundred else "cifar10", root=str(tmp_path))
    x, y = written["train"]
    assert arrays.x.shape == (30, 3, 32, 32) and arrays.x_test.shape == (8, 3, 32, 32)
    assert arrays.num_classes == (100 if hundred else 10)
    # row i holds 1024 red, then 1024 green, then 1024 blue bytes, each plane row by row
    assert arrays.x[4, 1, 2, 3] == np.float32(x[4, 1024 + 2 * 32 + 3]) / 255
    np.testing.assert_array_equal(arrays.x.reshape(30, -1), x.astype(np.float32) / 255)
    np.testing.assert_array_equal(arrays.x_test.reshape(8, -1), written["test"][0].astype(np.float32) / 255)
    np.testing.assert_array_equal(arrays.y, y)
    np.testing.assert_array_equal(arrays.y_test, written["test"][1])


def test_official_test_split_is_held_out_and_validation_comes_from_train(tmp_path):
    write_mnist(tmp_path, n_train=50, n_test=20)
    data = load_data(ComponentChoice(name="mnist", params={"root": str(tmp_path)}), 0.2, 0.3)
    assert len(data.x_test) == 20  # the t10k files, whatever test_fraction says
    assert len(data.x_train) == 40 and len(data.x_val) == 10
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10


def test_limit_keeps_a_fixed_random_subset_of_the_training_images(tmp_path):
    written = write_mnist(tmp_path, n_train=40, n_test=20)
    small = dataset("mnist", root=str(tmp_path), limit=12)
    assert small.x.shape == (12, 1, 28, 28) and small.x_test.shape == (20, 1, 28, 28)
    train = written["train"][0].astype(np.float32) / 255
    rows = [int(np.flatnonzero((train == image[0]).all(axis=(1, 2)))[0]) for image in small.x]
    np.testing.assert_array_equal(small.y, written["train"][1][rows])
    assert max(rows) >= 12  # drawn from the whole training split, not its first 12 images
    np.testing.assert_array_equal(dataset("mnist", root=str(tmp_path), limit=12).x, small.x)
    assert dataset("mnist", root=str(tmp_path), limit=100).x.shape[0] == 40


def test_a_missing_dataset_names_the_expected_place_and_is_never_downloaded(tmp_path):
    with pytest.raises(SpecError, match=r"no MNIST at .*/MNIST/raw: missing train-images-idx3-ubyte\[\.gz\]") as exc:
        dataset("mnist", root=str(tmp_path))
    assert "never downloaded" in str(exc.value) and exc.value.path == f"data.root ({tmp_path})"
    with pytest.raises(SpecError, match=r"no cifar10 at .*cifar-10-batches-py: missing data_batch_1.*never downloaded"):
        dataset("cifar10", root=str(tmp_path))
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(SpecError, match=r"missing data_batch_3; datasets are never downloaded"):
        dataset("cifar10", root=str(tmp_path))
    assert not any(p.suffix in (".gz", ".tar") for p in tmp_path.rglob("*"))  # nothing was fetched


class Payload:
    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_cifar_pickle_that_names_a_function_is_refused_not_run(tmp_path):
    write_cifar(tmp_path)
    payload = Payload()
    payload.marker = tmp_path / "executed"
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(pickle.dumps({b"data": payload, b"labels": []}, protocol=2))
    with pytest.raises(SpecError, match=r"data_batch_2: it names (posix|os)\.system, which a CIFAR batch does not"):
        dataset("cifar10", root=str(tmp_path))
    assert not payload.marker.exists()


def test_a_file_that_is_not_idx_is_reported(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"<html>not found</html>")
    with pytest.raises(SpecError, match="is not an IDX file"):
        dataset("mnist", root=str(tmp_path))


def test_a_comparison_runs_on_an_on_disk_dataset(tmp_path):
    write_mnist(tmp_path, n_train=80, n_test=20)
    table = autonorm.compare(
        {
            "name": "tv_cmp",
            "kind": "normalization",
            "candidates": ["batchnorm", "groupnorm"],
            "tasks": [{"name": "mnist", "data": {"dataset": "mnist", "root": str(tmp_path), "limit": 60}}],
            "model": {"backbone": "small_cnn", "depth": 1, "width": 8},
            "train": {"epochs": 1, "batch_size": 16},
            "trials": 1,
            "seeds": 1,
        }
    )
    for cand in ("batchnorm", "groupnorm"):
        cell = table.cells["mnist", cand]
        assert cell.error is None and len(cell.accuracies) == 1 and 0 <= cell.mean <= 1
