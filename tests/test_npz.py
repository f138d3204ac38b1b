"""A user's own arrays: 1-D signals in an .npz file, with an explicit validation split."""

import numpy as np
import pytest

import autonorm
from autonorm import ComponentChoice, SpecError
from autonorm.data import load_data
from tests.conftest import run_cli, write


def make_signals(path, n=120, with_val=True):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n)
    t = np.linspace(0, 1, 32)
    x = np.sin(2 * np.pi * (y[:, None] + 1) * t)[:, None, :] + 0.1 * rng.normal(size=(n, 1, 32))
    arrays = {"x": x.astype(np.float32), "y": y}
    if with_val:
        arrays |= {"x_val": x[:30].astype(np.float32), "y_val": y[:30]}
    np.savez(path, **arrays)
    return path


def test_npz_1d_search(tmp_path):
    make_signals(tmp_path / "signals.npz")
    space = write(
        tmp_path / "sig.yaml",
        "data: {dataset: npz, path: signals.npz}\nmodel: {backbone: resnet, width: 8}\n"
        "space: {normalization: [groupnorm, batchnorm]}\ntrain: {epochs: 2, batch_size: 16}\nsearch: {trials: 2}\n",
    )
    results = autonorm.search(space)
    assert results.best.config.input_shape == (1, 32) and results.best.config.num_classes == 3


def test_a_relative_path_is_read_from_the_space_file_folder_whatever_the_working_directory(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    make_signals(project / "signals.npz")
    write(
        project / "sig.yaml",
        "data: {dataset: npz, path: signals.npz}\nmodel: {backbone: small_cnn, depth: 1, width: 4}\n"
        "train: {epochs: 1}\nsearch: {trials: 1, storage: 'sqlite:///sig.db'}\n",
    )
    proc = run_cli("search", "project/sig.yaml", "-q")  # from tmp_path, where signals.npz is not
    assert "1 complete" in proc.stdout
    config = autonorm.load_study("sig").best.config
    assert config.dataset.params["path"] == str(project / "signals.npz")
    spec = autonorm.load_spec({"data": {"dataset": "npz", "path": "signals.npz"}})  # from Python: the cwd
    assert spec.data_params == {"path": "signals.npz"}


def test_npz_explicit_validation_split_is_used(tmp_path):
    make_signals(tmp_path / "s.npz")
    data = load_data(ComponentChoice(name="npz", params={"path": "s.npz"}), 0.2, 0.2)
    assert len(data.x_val) == 30 and len(data.x_train) + len(data.x_test) == 120


def test_npz_errors_name_the_problem(tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 1, 8), np.float32))
    with pytest.raises(SpecError, match=r"missing array\(s\) \['y'\]"):
        load_data(ComponentChoice(name="npz", params={"path": "bad.npz"}), 0.2, 0.2)
    np.savez(tmp_path / "flat.npz", x=np.zeros((4, 8), np.float32), y=np.zeros(4, int))
    with pytest.raises(SpecError, match=r"shape \(N, C, L\) or \(N, C, H, W\)"):
        load_data(ComponentChoice(name="npz", params={"path": "flat.npz"}), 0.2, 0.2)
    with pytest.raises(SpecError, match="no such file"):
        load_data(ComponentChoice(name="npz", params={"path": "missing.npz"}), 0.2, 0.2)


def _arrays(**spoil):
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=(40, 1, 8)).astype(np.float32), "y": np.arange(40) % 4} | spoil


@pytest.mark.parametrize(
    ("case", "arrays", "message"),
    [
        ("nan", _arrays(x=np.full((40, 1, 8), np.nan)), "'x' holds 320 NaN or infinite value"),
        ("inf-in-val", _arrays(x_val=np.full((8, 1, 8), np.inf), y_val=np.arange(8) % 4), "'x_val' holds 64 NaN"),
        ("strings", _arrays(x=np.full((40, 1, 8), "a")), "'x' must hold real numbers, got dtype <U1"),
        ("complex", _arrays(x=np.ones((40, 1, 8), complex)), "'x' must hold real numbers, got dtype complex128"),
        ("empty", _arrays(x=np.zeros((0, 1, 8), np.float32), y=np.zeros(0, int)), "'x' holds no samples"),
        ("huge-labels", _arrays(y=np.arange(40) % 4 * 10**9), "labels up to 3000000000 but 4 distinct ones"),
        ("one-class", _arrays(y=np.zeros(40, int)), "'y' holds a single class"),
        ("float-labels", _arrays(y=np.zeros(40)), "'y' must hold non-negative integer class labels"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_arrays_are_refused_naming_the_file_and_key(tmp_path, case, arrays, message):
    np.savez(tmp_path / f"{case}.npz", **arrays)
    with pytest.raises(SpecError, match=message) as info:
        load_data(ComponentChoice(name="npz", params={"path": f"{case}.npz"}), 0.2, 0.2)
    assert str(info.value).startswith(f"data.path ({case}.npz): ")


def test_a_file_that_is_not_an_npz_archive_says_so(tmp_path):
    (tmp_path / "text.npz").write_text("x,y\n1,2\n")
    with pytest.raises(SpecError, match=r"data.path \(text.npz\): not an .npz file"):
        load_data(ComponentChoice(name="npz", params={"path": "text.npz"}), 0.2, 0.2)


def test_a_rewritten_file_or_the_same_relative_path_elsewhere_is_read_again(tmp_path, monkeypatch):
    choice = ComponentChoice(name="npz", params={"path": "arrays.npz"})
    for folder, rows in (("a", 100), ("b", 200)):
        (tmp_path / folder).mkdir()
        np.savez(tmp_path / folder / "arrays.npz", x=np.zeros((rows, 1, 4, 4), np.float32), y=np.arange(rows) % 5)
    monkeypatch.chdir(tmp_path / "a")
    assert len(load_data(choice, 0.2, 0.0).x_train) == 80
    monkeypatch.chdir(tmp_path / "b")
    assert len(load_data(choice, 0.2, 0.0).x_train) == 160
    np.savez(tmp_path / "b" / "arrays.npz", x=np.zeros((50, 1, 4, 4), np.float32), y=np.arange(50) % 5)
    assert len(load_data(choice, 0.2, 0.0).x_train) == 40


def test_too_few_samples_for_a_stratified_split_is_a_clear_error(tmp_path):
    np.savez(tmp_path / "few.npz", x=np.zeros((30, 1, 4, 4), np.float32), y=np.arange(30) % 10)
    with pytest.raises(SpecError, match=r"cannot split 30 samples of 10 classes by test_fraction 0.2") as info:
        load_data(ComponentChoice(name="npz", params={"path": str(tmp_path / "few.npz")}), 0.2, 0.2)
    assert info.value.path == "data.test_fraction"


def test_a_class_of_one_sample_makes_the_split_unstratified_and_says_so(tmp_path):
    """scikit-learn cannot stratify a class of one sample; the split used to drop stratification silently."""
    y = np.concatenate([np.arange(60) % 3, [3]])
    np.savez(tmp_path / "one.npz", x=np.zeros((61, 1, 4, 4), np.float32), y=y)
    with pytest.warns(UserWarning, match=r"dataset npz: class 3 has one sample, so the test_fraction split is not"):
        load_data(ComponentChoice(name="npz", params={"path": str(tmp_path / "one.npz")}), 0.2, 0.2)
