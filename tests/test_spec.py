"""Every mistake in a space file gets a located, readable error."""

import pytest

from autonorm import SpecError, load_spec
from autonorm.backends.optuna import stored_space
from autonorm.params import Categorical, Fixed, IntRange, Ordered
from tests.conftest import TINY_SPACE, write
from tests.helpers import registry_with_test_components


def error_of(tmp_path, text: str) -> SpecError:
    path = write(tmp_path / "space.yaml", text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return info.value


def test_valid_space(tmp_path):
    spec = load_spec(write(tmp_path / "tiny.yaml", TINY_SPACE))
    assert spec.name == "tiny"
    assert [c.name for c in spec.space["normalization"]] == ["batchnorm", "groupnorm"]
    assert spec.space["normalization"][1].params["groups"] == Categorical((2, 4))
    assert spec.space["pooling"][0].name == "avg"  # kinds left out use their default component
    assert spec.train["batch_size"] == Fixed(64)
    assert spec.storage == "sqlite:///tiny.db"


def test_search_keyword_uses_the_declared_range(tmp_path):
    spec = load_spec(write(tmp_path / "s.yaml", "space: {normalization: {groupnorm: {groups: search}}}"))
    assert spec.space["normalization"][0].params["groups"] == Ordered((1, 2, 4, 8, 16, 32))  # declared values
    spec = load_spec(write(tmp_path / "s.yaml", "space: {normalization: {iternorm: {group_size: search}}}"))
    assert spec.space["normalization"][0].params["group_size"] == IntRange(1, 64, True)
    assert spec.name == "s"


def test_a_components_relative_file_path_is_read_from_the_space_files_folder(tmp_path, monkeypatch):
    """As for a dataset's: the space reads the same files from any working directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spaces").mkdir()
    registry = registry_with_test_components()
    cases = (("{}", "table.txt"), ("{table: other.txt}", "other.txt"), ("{table: /abs.txt}", "/abs.txt"))
    for given, expected in cases:
        path = write(tmp_path / "spaces" / "s.yaml", f"space: {{activation: {{reads_a_file: {given}}}}}")
        (candidate,) = load_spec(path, registry).space["activation"]
        assert candidate.params["table"] == Fixed(str(tmp_path / "spaces" / expected)), given


def test_the_stored_space_keeps_a_components_resolved_file_path_for_workers(tmp_path, monkeypatch):
    """A worker runs the space stored in the study, from its own working directory."""
    (tmp_path / "spaces").mkdir()
    registry = registry_with_test_components()
    path = write(tmp_path / "spaces" / "s.yaml", "space: {activation: [relu, reads_a_file], normalization: batchnorm}")
    stored = stored_space(load_spec(path, registry))
    table = str(tmp_path / "spaces" / "table.txt")
    assert stored["space"]["activation"] == {"relu": {}, "reads_a_file": {"table": table}}
    monkeypatch.chdir(tmp_path)
    reread = load_spec(stored, registry).space["activation"][1]
    assert reread.params["table"] == Fixed(table)


def test_yaml_syntax_error_has_line_and_column(tmp_path):
    err = error_of(tmp_path, "name: x\nspace:\n  normalization: [batchnorm\n  activation: relu\n")
    assert err.file.endswith("space.yaml")
    assert err.line == 4 and err.column is not None
    assert "invalid YAML" in str(err)


def test_unknown_component_suggests_the_closest(tmp_path):
    err = error_of(tmp_path, "space:\n  normalization:\n    gropnorm: {groups: [2]}\n")
    text = str(err)
    assert text.startswith(f"{tmp_path / 'space.yaml'}:3:5: space.normalization.gropnorm:")
    assert "unknown normalization 'gropnorm'; did you mean 'groupnorm'?" in text
    known = text.split("(known: ")[1].rstrip(")").split(", ")
    assert known == sorted(known) and {"batchnorm", "groupnorm", "instancenorm", "layernorm", "none"} <= set(known)


def test_unknown_component_in_a_list(tmp_path):
    err = error_of(tmp_path, "space:\n  activation: [relu, rleu]\n")
    assert "unknown activation 'rleu'; did you mean 'relu'?" in str(err)


def test_wrong_type_names_the_key(tmp_path):
    err = error_of(tmp_path, "train:\n  epochs: many\n")
    assert err.path == "train.epochs" and err.line == 2
    assert err.message == "expected a whole number (got 'many')"


def test_wrong_param_type_names_the_key(tmp_path):
    err = error_of(tmp_path, "space:\n  normalization:\n    groupnorm: {groups: [2, 4.5]}\n")
    assert err.path == "space.normalization.groupnorm.groups"
    assert "expected an integer, got 4.5" in err.message


def test_empty_range_names_the_key(tmp_path):
    err = error_of(tmp_path, "train:\n  lr: {loguniform: [0.5, 0.01]}\n")
    assert err.path == "train.lr" and err.line == 2
    assert "empty or inverted range" in err.message


def test_unknown_parameter_lists_the_known_ones(tmp_path):
    err = error_of(tmp_path, "space:\n  normalization:\n    groupnorm: {group: 4}\n")
    assert "groupnorm has no parameter 'group' (parameters: groups)" in str(err)


def test_unknown_key_and_unknown_kind(tmp_path):
    assert error_of(tmp_path, "serch: {trials: 3}\n").path == "serch"
    err = error_of(tmp_path, "space:\n  normalisation: [batchnorm]\n")
    assert "did you mean 'normalization'?" in str(err)


def test_python_object_tags_are_rejected_not_executed(tmp_path):
    marker = tmp_path / "executed"
    err = error_of(tmp_path, f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    assert "invalid YAML" in str(err) and err.line == 1
    assert not marker.exists()


def test_unknown_backend_and_bad_trials(tmp_path):
    assert "optuna" in error_of(tmp_path, "search: {backend: nni}\n").message
    assert error_of(tmp_path, "search: {trials: 0}\n").path == "search.trials"


def test_top_level_must_be_a_mapping(tmp_path):
    assert "expected a mapping" in error_of(tmp_path, "- a\n- b\n").message


def test_missing_file(tmp_path):
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "nope.yaml")


def test_mapping_source_without_a_file():
    spec = load_spec({"name": "m", "space": {"activation": "elu"}})
    assert [c.name for c in spec.space["activation"]] == ["elu"]
    with pytest.raises(SpecError, match="space.activation.eluu: unknown activation"):
        load_spec({"space": {"activation": "eluu"}})


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("train: {batch_size: -16}", "train.batch_size", "expected at least 1, got -16"),
        ("train: {batch_size: [16, 0, 32]}", "train.batch_size", "expected at least 1, got 0"),
        ("train: {lr: -0.1}", "train.lr", "expected at least 0, got -0.1"),
        ("train: {weight_decay: -1.0}", "train.weight_decay", "expected at least 0, got -1.0"),
        ("train: {momentum: {uniform: [0.5, 1.5]}}", "train.momentum", "expected at most 1, got 1.5"),
        ("model: {backbone: small_cnn, width: 0}", "model.width", "expected at least 1, got 0"),
        ("model: {backbone: resnet, width: -8}", "model.width", "expected at least 1, got -8"),
        ("space: {normalization: {groupnorm: {groups: [0, 2]}}}", "groups", "expected at least 1, got 0"),
    ],
)
def test_values_no_model_can_take_are_refused_when_the_file_is_read(tmp_path, text, where, message):
    err = error_of(tmp_path, text)
    assert where in err.path and message in err.message


def test_a_storage_url_is_checked_when_the_file_is_read(tmp_path):
    err = error_of(tmp_path, "search:\n  storage: notaurl\n")
    assert str(err).endswith("space.yaml:2:3: search.storage: not a storage URL: 'notaurl'")
    assert "keeps the study in memory" in error_of(tmp_path, "search: {storage: 'sqlite:///:memory:'}").message


def test_pydantic_errors_read_as_plain_words_at_the_wrong_item(tmp_path):
    err = error_of(tmp_path, "search: {objective: [val_accuracy, latncy]}")
    assert err.path == "search.objective.1" and err.message.endswith("(got 'latncy')")
    err = error_of(tmp_path, "search: {objective: [val_accuracy, val_accuracy]}")
    assert err.message.startswith("objective: repeated metrics") and "Value error" not in err.message


def test_a_study_name_is_a_plain_file_name(tmp_path):
    assert "name" in error_of(tmp_path, "name: '-q'").path
    assert "name" in error_of(tmp_path, "name: '..'").path
    assert load_spec(write(tmp_path / "-q.yaml", "train: {epochs: 1}")).name == "q"
    assert load_spec(write(tmp_path / "étude.yaml", "train: {epochs: 1}")).name == "etude"  # not "tude"


def test_a_count_is_not_a_boolean_or_text(tmp_path):
    err = error_of(tmp_path, "train: {epochs: true}")
    assert err.path == "train.epochs" and err.message == "expected a whole number, not true or false (got True)"
    err = error_of(tmp_path, "search: {trials: '5'}")  # as a hyperparameter's '0.1' is refused
    assert err.path == "search.trials" and err.message.startswith("expected a whole number, not text: write it")
