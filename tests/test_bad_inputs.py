"""A corpus of bad inputs, each run through the command a user would type: every one gets a clear
error naming its place (exit code 2, no traceback), and an existing study's storage stays byte for byte
as it was. The cases covered elsewhere (tests/test_spec.py, test_search.py, test_cli.py) are not repeated,
except where the storage left intact is the point."""

from __future__ import annotations

import json
import re
import shutil
from fractions import Fraction
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
import torch
import yaml
from sqlalchemy.engine import make_url

import autonorm
from autonorm.backends import optuna as optuna_backend
from autonorm.backends.optuna import open_search_study
from autonorm.backends.workers import worker_spec
from autonorm.cli import main
from tests.conftest import write
from tests.helpers import registry_with_test_components
from tests.pg import postgres_url  # noqa: F401 - a fixture

SECRET = "pw-never-printed"
GOOD = """name: intact
model: {backbone: small_cnn, depth: 1, width: 4}
train: {epochs: 1}
search: {trials: 2, pruner: none}
"""

#: (case id, space file text or None for GOOD, extra command arguments, what the error must say)
CORPUS = [
    ("malformed-yaml", "name: intact\nspace:\n  normalization: [batchnorm\n", (), "space.yaml:4:1: invalid YAML"),
    ("wrong-type", GOOD + "data: {val_fraction: half}\n", (), "data.val_fraction"),
    ("inverted-range", GOOD.replace("epochs: 1", "epochs: 1, lr: {uniform: [0.5, 0.1]}"), (), "train.lr"),
    ("empty-choices", GOOD + "space: {normalization: {groupnorm: {groups: []}}}\n", (), "groupnorm.groups"),
    ("unknown-component", GOOD + "space: {pooling: [avgg]}\n", (), "did you mean 'avg'"),
    ("python-object-tag", "name: !!python/object/apply:os.system ['touch executed']\n", (), "invalid YAML"),
    ("fractional-gpus-above-one", GOOD.replace("pruner: none", "ray: {resources_per_trial: {gpu: 1.5}}"), (), "gpu"),
    ("unknown-storage-scheme", None, ("--storage", "redis://localhost/0"), "unknown storage scheme 'redis'"),
    (
        "unreachable-database",
        None,
        ("--storage", f"postgresql+psycopg2://autonorm:{SECRET}@127.0.0.1:1/autonorm"),
        "cannot open storage postgresql+psycopg2://autonorm:***@127.0.0.1:1/autonorm",
    ),
    ("sqlite-for-many-workers", None, ("--workers", "3"), "cannot be shared by 3 worker processes"),
    ("zero-trials", None, ("--trials", "0"), "error: --trials: Input should be greater than 0"),
    ("in-memory-sqlite", None, ("--storage", "sqlite://"), "'sqlite://' keeps the study in memory"),
    ("negative-seed", GOOD.replace("pruner: none", "seed: -1"), (), "search.seed: Input should be greater than"),
    ("huge-seed", GOOD.replace("pruner: none", "seed: 4294967296"), (), "search.seed: Input should be less than"),
    ("zero-workers", None, ("--workers", "0"), "error: --workers: Input should be greater than 0"),
    ("workers-on-ray", GOOD.replace("pruner: none", "backend: ray"), ("--workers", "2"), "on Ray, trials run"),
    ("negative-imbalance", GOOD + "data: {imbalance: -5}\n", (), "data.imbalance: expected at least 1"),
    ("momentum-above-one", GOOD + "space: {normalization: {batchnorm: {momentum: 5}}}\n", (), "at most 1, got 5"),
    ("recursive-alias", GOOD + "space: {activation: &a [relu, *a]}\n", (), "used inside its own value"),
    ("empty-section", GOOD + "data:\n", (), "data: expected a mapping of keys to values (got None)"),
    ("long-name", GOOD.replace("name: intact", "name: " + "a" * 300), (), "name: String should have at most 120"),
    (
        "sqlite-in-the-file-for-workers",
        GOOD.replace("pruner: none", "workers: 2, storage: 'sqlite:///w.db'"),
        (),
        "space.yaml:4:",  # validate finds it, at the key
    ),
    (
        "searched-dataset-parameter",
        GOOD + "data: {dataset: digits, imbalance: {uniform: [1, 5]}}\n",
        (),
        "space.yaml:5:25: data.imbalance: a dataset's parameters are fixed, not searched: give one value",
    ),
    (
        "misspelt-key",
        GOOD.replace("pruner: none", "trails: 3"),
        (),
        "search.trails: unknown key; did you mean 'trials'?",
    ),
]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "500")


@pytest.fixture
def intact(tmp_path) -> Path:
    """An existing study with one finished trial, in ``intact.db``."""
    spec = autonorm.load_spec(write(tmp_path / "good.yaml", GOOD))
    study = open_search_study(spec)
    study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs={"val_accuracy": 0.5}))
    return tmp_path / "intact.db"


@pytest.mark.parametrize("case, text, extra, message", CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_input_is_a_located_error_and_leaves_the_storage_intact(
    tmp_path, intact, capsys, case, text, extra, message
):
    before = intact.read_bytes()
    space = write(tmp_path / "space.yaml", text if text is not None else GOOD)
    command = "validate" if case in ("python-object-tag", "sqlite-in-the-file-for-workers") else "search"
    args = [command, str(space), *(extra if command == "search" else ())]
    assert main([*args, "-q"] if command == "search" else args) == 2
    out, err = capsys.readouterr()
    assert message in err and "Traceback" not in err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert SECRET not in out + err
    assert intact.read_bytes() == before
    assert not (tmp_path / "executed").exists()


def test_a_missing_data_file_is_named_with_the_space_file_that_names_it(tmp_path, capsys):
    space = write(tmp_path / "space.yaml", GOOD + "data: {dataset: npz, path: missing.npz}\n")
    for command in (["search", str(space), "-q"], ["validate", str(space)]):
        assert main(command) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert err == f"error: {space}:5:22: data.path ({tmp_path / 'missing.npz'}): no such file", err
    assert not (tmp_path / "intact.db").exists()  # stopped before it opened the study


def test_a_kind_the_backbone_has_no_slot_for_is_refused_before_the_study_opens(tmp_path, capsys):
    """resnet downsamples inside its blocks: searching (or comparing) downsampling there used to train one
    model again and again under different names; small_cnn fills the slot, and an initializer is no slot."""
    space = write(
        tmp_path / "space.yaml",
        "name: intact\nmodel: {backbone: resnet, depth: 8, width: 4}\nspace:\n"
        "  downsampling: [strided_conv, max]\ntrain: {epochs: 1}\n",
    )
    for command in (["search", str(space), "-q"], ["validate", str(space)]):
        assert main(command) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert err.startswith(f"error: {space}:4:3: space.downsampling: the resnet backbone builds the same "), err
        assert "model whichever of strided_conv, max is chosen" in err
    assert not (tmp_path / "intact.db").exists()
    text = space.read_text()
    for edited in (
        text.replace("backbone: resnet", "backbone: small_cnn"),
        text.replace("downsampling: [strided_conv, max]", "initializer: [kaiming, gradinit]"),
        text.replace("downsampling: [strided_conv, max]", "normalization: [frn, batchnorm]\n  activation: [relu, elu]"),
    ):
        assert main(["validate", str(write(tmp_path / "ok.yaml", edited))]) == 0
    protocol = write(
        tmp_path / "p.yaml",
        "name: c\nkind: downsampling\ncandidates: [strided_conv, max]\nmodel: {backbone: resnet, depth: 8, width: 4}"
        "\ntasks: [{name: d, data: {dataset: digits}}]\n",
    )
    for command in (["compare", str(protocol), "-q"], ["validate", str(protocol)]):  # a comparison of one model
        assert main(command) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"error: {protocol}:2:1: kind: the resnet backbone builds the same model" in err, err
    assert not list(tmp_path.glob("c.*.db"))


def test_a_comparison_checks_every_tasks_data_before_it_trains_anything(tmp_path, capsys):
    """A missing file in the last task, or a task without a test split, stops the comparison at once,
    placed in the protocol, and leaves no pair database behind; validate finds the same."""
    head = "name: c\nkind: normalization\ncandidates: [batchnorm]\nmodel: {backbone: small_cnn, depth: 1, width: 4}\n"
    for tasks, message in [
        (
            "tasks:\n  - {name: d, data: {dataset: digits}}\n  - {name: own, data: {dataset: npz, path: gone.npz}}\n",
            f"p.yaml:7:38: tasks.1.data.path ({tmp_path / 'gone.npz'}): no such file",
        ),
        (
            "tasks: [{name: d, data: {dataset: digits, test_fraction: 0}}]\n",
            "p.yaml:5:43: tasks.0.data.test_fraction: the comparison scores on a test split",
        ),
    ]:
        protocol = write(tmp_path / "p.yaml", head + tasks)
        for command in (["compare", str(protocol), "-q"], ["validate", str(protocol)]):
            assert main(command) == 2
            err = " ".join(capsys.readouterr().err.split())
            assert message in err and "Traceback" not in err, err
        assert not list(tmp_path.glob("*.db"))


@pytest.mark.parametrize(
    ("override", "message"),
    [({"trials": 1.5}, "search.trials: Input should be a valid integer"), ({"workers": -1}, "search.workers")],
)
def test_a_bad_override_from_python_is_a_located_error(override, message):
    with pytest.raises(autonorm.SpecError, match=message):
        autonorm.search(yaml.safe_load(GOOD), **override)


def test_impossible_combination_is_refused_before_any_trial(intact):
    before = intact.read_bytes()
    registry = registry_with_test_components()
    space = {"name": "intact", "model": {"backbone": "small_cnn"}, "space": {"pooling": ["needs_resnet"]}}
    with pytest.raises(autonorm.SpecError, match="space.pooling.needs_resnet: needs_resnet requires model 'resnet'"):
        autonorm.search(space, registry=registry)
    assert intact.read_bytes() == before


def test_worker_of_an_unknown_study_names_the_known_ones(tmp_path, capsys):
    url = f"journal:///{tmp_path / 'j.log'}"
    open_search_study(autonorm.load_spec({**yaml.safe_load(GOOD), "search": {"storage": url}}))
    assert main(["worker", "nope", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert "study: no study 'nope' in journal:" in err and "(studies there: intact)" in err
    missing = tmp_path / "missing.log"
    assert main(["worker", "nope", "--storage", f"journal:///{missing}"]) == 2
    assert "no study journal at" in capsys.readouterr().err and not missing.exists()  # nothing left behind
    assert main(["worker", "nope", "--storage", "journal:///missing.log"]) == 2
    assert f"no study journal at 'missing.log' in {tmp_path} (journal:///F is relative" in capsys.readouterr().err


def test_a_postgres_password_never_appears_in_any_command_output(tmp_path, capsys, postgres_url):  # noqa: F811
    password = make_url(postgres_url).password
    assert password
    space = write(tmp_path / "pg.yaml", GOOD.replace("trials: 2", f"trials: 1, storage: '{postgres_url}'"))
    wrong = make_url(postgres_url).set(password="wrong-" + password).render_as_string(hide_password=False)
    commands = [
        (["validate", str(space)], 0),
        (["search", str(space), "-q"], 0),
        (["results", "intact", "--storage", postgres_url], 0),
        (["results", str(space)], 0),
        (["best", "intact", "--storage", postgres_url], 0),
        (["worker", "intact", "--storage", postgres_url], 0),
        (["results", "nope", "--storage", postgres_url], 2),
        (["results", "intact", "--storage", wrong], 2),
    ]
    for args, code in commands:
        assert main(args) == code, args
        out, err = capsys.readouterr()
        assert password not in out + err, args
    assert "***" in out + err


# ---------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The folder ``autonorm train`` wrote for the best trial of a one-trial search."""
    root = tmp_path_factory.mktemp("trained")
    spec = {**yaml.safe_load(GOOD), "search": {"trials": 1, "pruner": "none", "storage": f"sqlite:///{root}/t.db"}}
    autonorm.train(autonorm.search(spec).best.config, root / "out")
    return root / "out"


def _truncated(state: dict, path: Path) -> None:
    torch.save(state, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _mismatched(state: dict, path: Path) -> None:
    state = dict(state)
    first, second = list(state)[:2]
    del state[first]
    state[second] = torch.zeros(*state[second].shape, 2)
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, path)


#: (case id, how to spoil ``model.pt`` given the real state_dict, what the error must say)
CHECKPOINTS = [
    ("truncated", _truncated, "the file is truncated, corrupted or not a checkpoint of plain tensors"),
    (
        "garbage-bytes",
        lambda state, path: path.write_bytes(bytes(range(256)) * 8),
        "the file is truncated, corrupted or not a checkpoint of plain tensors",
    ),
    ("empty", lambda state, path: path.write_bytes(b""), "truncated, corrupted"),
    (
        "pickled-object",
        lambda state, path: torch.save({"w": Fraction(1, 2)}, path),
        "not a checkpoint of plain tensors",
    ),
    ("a-tensor", lambda state, path: torch.save(torch.zeros(3), path), "holds a Tensor, not a state_dict of tensors"),
    ("missing", lambda state, path: path.unlink(), "cannot read the weights: No such file or directory"),
    (
        "mismatched-state-dict",
        _mismatched,
        "the weights do not match the model of config.yaml (missing 1 key(s): ",
    ),
]


@pytest.mark.parametrize("case, spoil, message", CHECKPOINTS, ids=[c[0] for c in CHECKPOINTS])
def test_a_bad_checkpoint_is_a_clear_error_naming_the_file(trained, tmp_path, case, spoil, message):
    out = shutil.copytree(trained, tmp_path / "out")
    weights = out / "model.pt"
    spoil(torch.load(weights, weights_only=True), weights)
    with pytest.raises(autonorm.SpecError) as info:
        autonorm.load_trained(out)
    text = str(info.value)
    assert info.value.file == str(weights) and text.startswith(f"{weights}: ")
    assert message in text and "expected a state_dict saved by `autonorm train`" in text
    assert "weights_only" not in text and "\n" not in text
    if case == "mismatched-state-dict":
        assert "unexpected 1 key(s): extra.weight" in text and "1 shape mismatch(es), e.g. " in text


def test_a_good_checkpoint_still_loads(trained):
    model = autonorm.load_trained(trained)
    state = torch.load(trained / "model.pt", weights_only=True)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


# ---------------------------------------------------------------- storage password in the study


def _stored_space(study_name: str, url: str) -> dict:
    return optuna.load_study(study_name=study_name, storage=url).user_attrs["space"]


def test_the_stored_space_masks_a_postgres_password_and_workers_still_join(postgres_url):  # noqa: F811
    password = make_url(postgres_url).password
    spec = autonorm.load_spec({**yaml.safe_load(GOOD), "search": {"trials": 1, "storage": postgres_url}})
    open_search_study(spec)
    stored = _stored_space("intact", postgres_url)
    assert stored["search"]["storage"] == make_url(postgres_url).render_as_string(hide_password=True)
    assert "***" in stored["search"]["storage"]
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:  # nothing the dashboard can show holds it, in any table
        rows = conn.execute(sa.text("SELECT value_json FROM study_user_attributes")).scalars().all()
        system = conn.execute(sa.text("SELECT value_json FROM study_system_attributes")).scalars().all()
    engine.dispose()
    assert rows and not any(password in value for value in [*rows, *system])
    # a worker gets the URL from its command line, not from the stored space
    assert worker_spec("intact", postgres_url, autonorm.get_registry()).storage == postgres_url


def test_the_stored_space_masks_the_password_of_any_storage_url(monkeypatch):
    """Without a database server: the storage is replaced by an in-memory one, the URL in the spec
    keeps a password, and what the study stores must not."""
    memory = optuna.storages.InMemoryStorage()
    monkeypatch.setattr(optuna_backend, "open_storage", lambda url: memory)
    url = f"mysql+pymysql://user:{SECRET}@db.example/autonorm"
    spec = autonorm.load_spec({**yaml.safe_load(GOOD), "search": {"storage": url}})
    study = open_search_study(spec)
    assert study.user_attrs["space"]["search"]["storage"] == "mysql+pymysql://user:***@db.example/autonorm"
    assert SECRET not in json.dumps(study.user_attrs)
    assert spec.storage == url and spec.raw["search"]["storage"] == url  # the spec itself keeps the real URL


def test_an_sqlite_url_has_no_password_and_is_stored_as_written(tmp_path):
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    open_search_study(autonorm.load_spec({**yaml.safe_load(GOOD), "search": {"storage": url}}))
    assert _stored_space("intact", url)["search"]["storage"] == url


def _edit(config: dict, dotted: str, value) -> dict:
    *parents, last = dotted.split(".")
    node = config
    for key in parents:
        node = node[key]
    node[last] = value
    return config


#: (what a user changed in best.yaml by hand, to what, what the error must say)
EDITED_CONFIGS = [
    ("components.normalization.params.groups", 3, "cannot build this configuration: "),
    ("epochs", 0, "epochs: expected at least 1 epoch, got 0"),
    ("train.lr", "fast", "train.lr: expected a finite number, got 'fast'"),
    ("train.batch_size", -16, "train.batch_size: expected at least 1, got -16"),
    ("train.weight_decay_on", "biases", "train.weight_decay_on: expected one of ['weights', 'all'], got 'biases'"),
    ("model.params.foo", 1, "model.params.foo: unknown hyperparameter of small_cnn 'foo'"),
    ("num_classes", 3, "num_classes: 3 does not match the data's 10"),
    ("dataset.name", "cifar11", "dataset.name: unknown dataset 'cifar11'; did you mean 'cifar10'?"),
    ("components.activation.name", "rellu", "components.activation.name: unknown activation 'rellu'; did you mean"),
    ("test_fraction", 0.0, "test_fraction: no test split to score the final model on"),
    ("seed", -5, "seed: Input should be greater than or equal to 0"),
    ("val_fraction", 1.5, "val_fraction: Input should be less than 1"),
    ("input_shape", [1, 1, 8, 8], "input_shape: Tuple should have at most 3 items"),
    ("components.training", {"name": "enorm"}, "components: incompatible: training enorm requires normalization:none"),
    (
        "components.training",
        {"name": "slimming"},
        "cannot train this configuration: incompatible: slimming: the model has no batch normalization",
    ),
]


@pytest.mark.parametrize(("key", "value", "message"), EDITED_CONFIGS, ids=[f"{c[0]}={c[1]}" for c in EDITED_CONFIGS])
def test_train_on_a_hand_edited_configuration_is_a_clear_error_before_training(
    trained, tmp_path, capsys, key, value, message
):
    config = yaml.safe_load((trained / "config.yaml").read_text())
    config["components"]["normalization"] = {"name": "groupnorm", "params": {"groups": 2}}
    write(tmp_path / "best.yaml", yaml.safe_dump(_edit(config, key, value)))
    assert main(["train", str(tmp_path / "best.yaml"), "-o", str(tmp_path / "out")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error: ") and message in err, err
    if message.startswith(key.split(".")[0]):  # an error at a key names the file, line and column too
        assert re.match(rf"error: {re.escape(str(tmp_path / 'best.yaml'))}:\d+:\d+: ", err), err
    assert not (tmp_path / "out" / "model.pt").exists()


def test_running_out_of_memory_in_train_is_a_clear_error(trained, tmp_path, capsys, monkeypatch):
    """A width edited far up: the CPU allocator's RuntimeError (here raised without allocating it)."""

    def fit(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1638400000000 bytes")

    monkeypatch.setattr("autonorm.final.fit", fit)
    assert main(["train", str(trained / "config.yaml"), "-o", str(tmp_path / "out")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error: cannot train this configuration: out of memory (DefaultCPUAllocator"), err


def test_output_paths_that_are_folders_or_files_are_clear_errors(trained, tmp_path, capsys):
    storage = f"sqlite:///{trained.parent}/t.db"
    (tmp_path / "a_folder").mkdir()
    for args in (
        ["best", "intact", "--storage", storage, "-o", str(tmp_path / "a_folder")],
        ["report", "intact", "--storage", storage, "-o", str(tmp_path / "a_folder")],
        ["train", str(trained / "config.yaml"), "-o", str(trained / "config.yaml")],
    ):
        assert main(args) == 2, args
        err = " ".join(capsys.readouterr().err.split())
        assert err.startswith("error: ") and ("is a folder" in err or "exists and is not a folder" in err), err
    assert main(["best", "intact", "--storage", storage, "-o", str(tmp_path / "new" / "dir" / "b.yaml")]) == 0
    assert (tmp_path / "new" / "dir" / "b.yaml").is_file()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_stops_the_search_before_any_trial(tmp_path, capsys):
    space = write(tmp_path / "space.yaml", GOOD.replace("train: {epochs: 1}", "train: {epochs: 1, device: cuda}"))
    assert main(["search", str(space), "-q"]) == 2
    assert "space.yaml:3:20: train.device: 'cuda', but this machine has no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "intact.db").exists()
