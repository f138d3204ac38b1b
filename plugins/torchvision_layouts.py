"""MNIST, FashionMNIST, KMNIST, CIFAR-10 and CIFAR-100 read from the folders torchvision leaves on disk.

``torchvision.datasets.MNIST(root, download=True)`` (and its siblings) leave the files in a fixed
layout under ``root``; these datasets read that layout themselves, with numpy, gzip and pickle, so
they need neither torchvision nor network access, and they never download anything:

- ``mnist``, ``fashion_mnist``, ``kmnist``: ``root/MNIST/raw/``, ``root/FashionMNIST/raw/``,
  ``root/KMNIST/raw/`` holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each may be gzip'd, ``.gz``), in the IDX
  format of LeCun et al.'s MNIST distribution;
- ``cifar10``: ``root/cifar-10-batches-py/data_batch_1`` .. ``data_batch_5`` and ``test_batch``;
  ``cifar100``: ``root/cifar-100-python/train`` and ``test`` (fine labels): Krizhevsky's Python
  pickles of ``data`` (N x 3072 bytes, channel-major) and ``labels`` / ``fine_labels``. A pickle
  can name any function to call while it loads; these are loaded with only what a NumPy array
  needs (:class:`ArraysOnly`), so a file that names anything else is refused, not run.

Images are (N, 1, 28, 28) or (N, 3, 32, 32) with pixel values in [0, 1]. The official test split is
the held-out test split (so ``data.test_fraction`` does not apply); validation is carved from the
training split by autonorm's usual stratified split. ``limit`` > 0 keeps that many images of the
official training split before validation is carved from it, so it caps training and validation
images together (``limit: 5000`` with ``val_fraction`` 0.2 trains on 4,000); the test split is never
limited. The subset is random (the same one every run) but not balanced across classes. Small limits
keep comparisons on a CPU small. A relative ``root`` is read from the space file's folder, like every
path in a space file.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

import autonorm
from autonorm import Arrays, Component, FilePath, Int, SpecError

#: IDX type codes (third byte of the magic number) -> big-endian numpy dtypes.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

#: Dataset name -> torchvision's folder under root (the dataset class name for the MNIST family).
MNIST_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}
CIFAR_LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100),
}

TITLES = {
    "mnist": "MNIST",
    "fashion_mnist": "Fashion-MNIST",
    "kmnist": "KMNIST",
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
}

_NEVER = "datasets are never downloaded: fetch it once, e.g. with torchvision's download=True, and give its root"


def _where(root: str) -> str:
    return f"data.root ({root})"


def read_idx(path: Path, where: str | None = None) -> np.ndarray:
    """An IDX file (optionally gzip'd) as a numpy array of its own type and shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise SpecError(f"cannot read {path}: {exc}", path=where) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise SpecError(f"{path} is not an IDX file (magic number {raw[:4].hex()})", path=where)
    ndim, dtype = raw[3], np.dtype(_IDX_TYPES[raw[2]])
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise SpecError(f"{path} is truncated: its header names {ndim} dimensions", path=where)
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    body = raw[header:]
    if len(body) != int(np.prod(shape)) * dtype.itemsize:
        raise SpecError(f"{path} holds {len(body)} data bytes, not the {shape} {dtype} of its header", path=where)
    return np.frombuffer(body, dtype, offset=0).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _idx_split(root: str, folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images_path = _idx_file(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_path, _where(root)), read_idx(labels_path, _where(root))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise SpecError(
            f"{images_path.name} and {labels_path.name} should hold (N, H, W) images and N labels, "
            f"got {images.shape} and {labels.shape}",
            path=_where(root),
        )
    return images[:, None], labels.astype(np.int64)


def load_mnist_family(name: str, root: str, limit: int = 0) -> Arrays:
    """One of the MNIST family from ``root/<Name>/raw`` (IDX files, plain or gzip'd)."""
    folder = Path(root).expanduser() / MNIST_FOLDERS[name] / "raw"
    stems = [f"{p}-{k}" for p in ("train", "t10k") for k in ("images-idx3-ubyte", "labels-idx1-ubyte")]
    missing = [s for s in stems if _idx_file(folder, s) is None]
    if missing:
        raise SpecError(
            f"no {MNIST_FOLDERS[name]} at {folder}: missing {', '.join(f'{m}[.gz]' for m in missing)}; {_NEVER}",
            path=_where(root),
        )
    x, y = _idx_split(root, folder, "train")
    x_test, y_test = _idx_split(root, folder, "t10k")
    return _arrays(x, y, x_test, y_test, 10, limit, root)


class ArraysOnly(pickle.Unpickler):
    """An unpickler that finds only the globals a NumPy array's pickle names (Krizhevsky's batches
    hold a dict of strings, lists and one array): any other, ``os.system`` or a class, is an error."""

    ALLOWED = frozenset(
        [(f"numpy.{core}.multiarray", "_reconstruct") for core in ("core", "_core")]
        + [(f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")]
        + [("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")]
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR batch does not: not loaded")
        return super().find_class(module, name)


def _unpickle(path: Path, where: str) -> dict[str, object]:
    try:
        with open(path, "rb") as f:
            entry = ArraysOnly(f, encoding="latin1").load()  # the official files were pickled by Python 2
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise SpecError(f"cannot read {path}: {exc}", path=where) from None
    if not isinstance(entry, dict):
        raise SpecError(f"{path} should hold a dict of 'data' and labels, not a {type(entry).__name__}", path=where)
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _cifar_split(root: str, folder: Path, files: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in files:
        entry = _unpickle(folder / name, _where(root))
        if "data" not in entry or label_key not in entry:
            raise SpecError(
                f"{folder / name} has keys {sorted(entry)}, expected 'data' and {label_key!r}", path=_where(root)
            )
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
            raise SpecError(
                f"{folder / name} should hold N rows of 3072 bytes and N labels, got {data.shape} and {labels.shape}",
                path=_where(root),
            )
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys)


def load_cifar(name: str, root: str, limit: int = 0) -> Arrays:
    """CIFAR-10 or CIFAR-100 from torchvision's extracted ``cifar-10-batches-py`` / ``cifar-100-python``."""
    base, train_files, test_files, label_key, classes = CIFAR_LAYOUTS[name]
    folder = Path(root).expanduser() / base
    missing = [f for f in train_files + test_files if not (folder / f).is_file()]
    if missing:
        raise SpecError(f"no {name} at {folder}: missing {', '.join(missing)}; {_NEVER}", path=_where(root))
    x, y = _cifar_split(root, folder, train_files, label_key)
    x_test, y_test = _cifar_split(root, folder, test_files, label_key)
    return _arrays(x, y, x_test, y_test, classes, limit, root)


def _arrays(x, y, x_test, y_test, classes: int, limit: int, root: str) -> Arrays:
    if limit < 0:
        raise SpecError(f"limit must be 0 (every training image) or positive, got {limit}", path="data.limit")
    if 0 < limit < len(x):
        keep = np.sort(np.random.default_rng(0).permutation(len(x))[:limit])
        x, y = x[keep], y[keep]
    if max(y.max(initial=0), y_test.max(initial=0)) >= classes:
        raise SpecError(f"labels should lie in 0..{classes - 1}", path=_where(root))

    def pixels(a: np.ndarray) -> np.ndarray:
        return a.astype(np.float32) / np.float32(255.0)

    return Arrays(x=pixels(x), y=y, x_test=pixels(x_test), y_test=y_test, num_classes=classes)


def _factory(name: str):
    loader = load_mnist_family if name in MNIST_FOLDERS else load_cifar

    def load(root: str = "data", limit: int = 0) -> Arrays:
        return loader(name, root, limit)

    folder = MNIST_FOLDERS[name] + "/raw" if name in MNIST_FOLDERS else CIFAR_LAYOUTS[name][0]
    load.__doc__ = (
        f"{TITLES[name]} from torchvision's layout, root/{folder}/ (never downloaded); official test split.\n\n"
        "``limit`` > 0 keeps that many images of the official training split, training and validation together\n"
        "(a fixed random subset, not class-balanced); the test split is never limited."
    )
    load.__name__ = name
    return load


@autonorm.hookimpl
def autonorm_components() -> list[Component]:
    params = {"root": FilePath("data"), "limit": Int(0, 0, 60000, minimum=0)}
    return [
        Component(kind="dataset", name=name, factory=_factory(name), params=params)
        for name in (*MNIST_FOLDERS, *CIFAR_LAYOUTS)
    ]
