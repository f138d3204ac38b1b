"""Discovery through real entry points: built-ins, an installed third-party package, a broken one."""

import re

import pytest
import torch

import autonorm
from autonorm import Component, Float, Registry
from tests import testing_plugin
from tests.conftest import pip_install, run_cli, write


def test_builtins_come_through_the_entry_point_group():
    registry = autonorm.get_registry(refresh=True)
    bn = registry.get("normalization", "batchnorm")
    assert bn.package == "autonorm" and bn.version == autonorm.__version__
    assert bn.plugin == "baseline_norms" and bn.batch_dependent
    assert set(registry.names("normalization")) >= {"batchnorm", "groupnorm", "layernorm", "instancenorm", "none"}
    assert set(registry.names("activation")) >= {"elu", "relu", "and_ail", "or_ail", "xnor_ail"}
    assert set(registry.names("model")) >= {"resnet", "small_cnn"}
    assert set(registry.names("dataset")) >= {"digits", "npz"}
    assert "Ioffe" in bn.doc or "Batch Normalization" in bn.summary


def test_third_party_package_is_discovered_and_broken_one_reported(with_plugins):
    registry = with_plugins
    comp = registry.get("normalization", "sample_rms")
    assert (comp.package, comp.version, comp.plugin) == ("autonorm-example-plugin", "1.2.3", "example")
    assert comp.params["eps"].default == 1e-5
    (failure,) = [f for f in registry.failures if f.plugin == "broken"]
    assert failure.package == "autonorm-broken-plugin 0.0.1"
    assert "ImportError: this plugin needs a library that is not installed" in failure.error
    assert "batchnorm" in registry.names("normalization")  # the others still load


def test_third_party_component_can_be_searched(with_plugins, tmp_path):
    path = write(
        tmp_path / "s.yaml",
        "space: {normalization: [sample_rms]}\nmodel: {backbone: small_cnn, depth: 1, width: 4}\n"
        "train: {epochs: 1}\nsearch: {trials: 1, pruner: none}\n",
    )
    results = autonorm.search(path)
    assert results.best.config.components["normalization"].name == "sample_rms"


def test_hook_that_raises_is_reported():
    class Bad:
        @autonorm.hookimpl
        def autonorm_components(self):
            raise ValueError("cannot build")

    registry = Registry()
    registry.register(Bad(), "bad", "bad-pkg 1.0")
    assert registry.failures[0].error == "ValueError: cannot build"


class Tracker:
    @autonorm.hookimpl
    def autonorm_trial_started(self, study, number, config):  # autonorm passes study_name
        pass


class Misspelt:
    @autonorm.hookimpl
    def autonorm_component(self):
        return []


class Unmarked:
    def autonorm_components(self):
        return []


class ReturnsOne:
    @autonorm.hookimpl
    def autonorm_components(self):
        return Component(kind="activation", name="lonely", factory=lambda: None)


class Exits:
    @autonorm.hookimpl
    def autonorm_components(self):
        raise SystemExit("plugin gives up")


@pytest.mark.parametrize(
    ("plugin", "message"),
    [
        (Tracker(), "Argument(s) {'study'} are declared in the hookimpl but can not be found in the hookspec"),
        (Misspelt(), "unknown hook 'autonorm_component'; did you mean 'autonorm_components'?"),
        (Unmarked(), "autonorm_components is not marked with @autonorm.hookimpl, so autonorm never calls it"),
        (ReturnsOne(), "autonorm_components returned a Component, not a list"),
        (Exits(), "SystemExit: plugin gives up"),
    ],
)
def test_a_plugin_autonorm_cannot_call_is_its_failure_and_the_others_load(plugin, message):
    registry = Registry()
    registry.register(testing_plugin, "testing")
    registry.register(plugin, "mistaken", "mistaken-pkg 1.0")
    (failure,) = registry.failures
    assert (failure.plugin, failure.package) == ("mistaken", "mistaken-pkg 1.0")
    assert message in failure.error
    assert "raises" in registry.names("activation")


def test_a_bad_declaration_says_where_in_the_plugin_it_is(tmp_path, monkeypatch):
    """The declaration's own error names neither the component nor the hyperparameter: the line does."""
    write(
        tmp_path / "declaring.py",
        "import autonorm\n\n\n@autonorm.hookimpl\ndef autonorm_components():\n"
        "    return [autonorm.Component(kind='activation', name='a', factory=lambda alpha=0.5: None,\n"
        "                               params={'alpha': autonorm.Float(5.0, 0.0, 1.0)})]\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry()
    registry.register(__import__("declaring"), "declaring")
    (failure,) = registry.failures
    assert "default 5.0 is outside [0.0, 1.0]" in failure.error
    assert failure.where == f"{tmp_path / 'declaring.py'}, line 7"


def test_duplicate_names_are_refused():
    registry = Registry()
    registry.register(testing_plugin, "first")

    class Again:
        @autonorm.hookimpl
        def autonorm_components(self):
            return [Component(kind="activation", name="raises", factory=lambda c: None)]

    registry.register(Again(), "again")
    assert "already registered by plugin 'first'" in registry.failures[0].error


def test_a_plugin_reusing_built_in_names_is_the_one_reported(tmp_path, monkeypatch):
    """Whatever the install order, the built-ins keep their names; each clash is the newcomer's failure,
    and its other components still load."""
    monkeypatch.syspath_prepend(str(pip_install(tmp_path / "site", "clashing_plugin")))
    try:
        registry = autonorm.get_registry(refresh=True)
        bn = registry.get("normalization", "batchnorm")
        assert (bn.plugin, bn.package) == ("baseline_norms", "autonorm") and bn.batch_dependent
        assert {"groupnorm", "layernorm", "after_the_clash"} <= set(registry.names("normalization"))
        assert registry.get("dataset", "npz").plugin == "npz"
        assert "behind_a_taken_name" not in registry.names("normalization")
        failures = {f.plugin: f.error for f in registry.failures}
        assert failures["reuses_names"] == (
            "ValueError: normalization 'batchnorm' is already registered by plugin 'baseline_norms' (autonorm); "
            "this one is left out"
        )
        assert failures["npz"] == (
            "entry point 'npz' is already the name of plugin module 'autonorm_plugins.npz'; left out"
        )
        assert {f.package for f in registry.failures} == {"autonorm-clashing-plugin 0.0.1"}
    finally:
        monkeypatch.undo()
        autonorm.get_registry(refresh=True)


def gn_without_eps(num_channels):
    """A normalization whose factory has no eps."""


@pytest.mark.parametrize(
    ("factory", "params", "message"),
    [
        (gn_without_eps, {"eps": Float(1e-5, 0, 1)}, "its factory 'gn_without_eps' takes no keyword argument 'eps'"),
        (lambda c, eps=1e-5: None, {"eps": 1e-5}, "hyperparameter 'eps' is declared as 1e-05; expected autonorm.Float"),
    ],
)
def test_a_component_declaring_what_its_factory_cannot_take_is_refused(factory, params, message):
    with pytest.raises(ValueError, match=message):
        Component(kind="normalization", name="bad", factory=factory, params=params)
    Component(kind="normalization", name="fine", factory=lambda c, **kw: None, params={"eps": Float(0, 0, 1)})


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"requires": ("activaton:relu",)}, "requires 'activaton:relu': unknown kind 'activaton'; did you mean 'act"),
        ({"excludes": ("normalisation",)}, "excludes 'normalisation': unknown kind 'normalisation'; did you mean"),
        ({"requires": ("train.optimiser:adam",)}, "unknown training setting 'optimiser'; did you mean 'optimizer'?"),
        ({"requires": ("train.optimizer",)}, "requires 'train.optimizer': name the value: train.KEY:VALUE"),
        ({"excludes": ("train.optimizer:sgd",)}, "a training setting can be required, not excluded"),
        ({"requires": "model:resnet"}, "requires must be a tuple of rules, not a string"),
    ],
)
def test_a_misspelt_rule_is_refused_rather_than_never_matching(rules, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Component(kind="pooling", name="bad", factory=lambda: None, **rules)
    Component(kind="pooling", name="fine", factory=lambda: None, requires=("model:resnet", "train.optimizer:sgd"))


def test_a_bad_declaration_is_its_plugins_failure():
    class Declares:
        @autonorm.hookimpl
        def autonorm_components(self):
            return [Component(kind="normalization", name="bad", factory=gn_without_eps, params={"eps": Float(0, 0, 1)})]

    registry = Registry()
    registry.register(Declares(), "declares", "declares-pkg 1.0")
    (failure,) = registry.failures
    assert (failure.plugin, failure.package) == ("declares", "declares-pkg 1.0")
    assert failure.error.startswith("ValueError: component 'bad': its factory 'gn_without_eps' takes no keyword")


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown kind 'normalisation'"):
        Component(kind="normalisation", name="x", factory=lambda c: None)


def test_unknown_lookup_suggests():
    with pytest.raises(KeyError, match="did you mean 'batchnorm'") as info:
        autonorm.get_registry(refresh=True).get("normalization", "batchnrom")
    assert "failed to load" not in str(info.value)  # no plugin failed: no note


BROKEN_NOTE = "(plugin 'broken' failed to load: ImportError: this plugin needs a library that is not installed)"


def test_unknown_name_says_which_plugin_failed_to_load(with_plugins, tmp_path):
    space = {"model": {"backbone": "small_cnn"}, "space": {"normalization": ["broken_norm"]}}
    with pytest.raises(autonorm.SpecError) as info:
        autonorm.load_spec(space)
    assert str(info.value).startswith("space.normalization.broken_norm: unknown normalization 'broken_norm'")
    assert str(info.value).endswith(BROKEN_NOTE)

    path = write(tmp_path / "s.yaml", "model: {backbone: small_cnn}\nspace: {normalization: [broken_norm]}\n")
    for args in (["validate", str(path)], ["check-plugin", "broken_norm"]):
        proc = run_cli(*args, check=False)
        err = " ".join(proc.stderr.split())  # the console wraps long lines at its width
        assert proc.returncode == 2 and err.startswith("error: ") and err.count("error:") == 1, args
        assert "Traceback" not in err and BROKEN_NOTE in err, args


def test_failure_note_keeps_each_failure_on_one_line():
    class Bad:
        @autonorm.hookimpl
        def autonorm_components(self):
            raise ValueError("first line\nsecond line")

    registry = Registry()
    registry.register(Bad(), "bad")
    with pytest.raises(KeyError) as info:
        registry.get("pooling", "avg")
    assert info.value.args[0] == (
        "unknown pooling 'avg' (known: none installed) (plugin 'bad' failed to load: ValueError: first line)"
    )


def test_failure_note_shows_the_failures_that_name_the_component_and_counts_the_others():
    def failing(message: str) -> object:
        class Bad:
            @autonorm.hookimpl
            def autonorm_components(self):
                raise ValueError(message)

        return Bad()

    registry = Registry()
    for i, message in enumerate(["normalization 'mine' is already registered", "x", "y", "z"]):
        registry.register(failing(message), f"bad{i}")
    assert registry.failure_note("mine") == (
        " (plugin 'bad0' failed to load: ValueError: normalization 'mine' is already registered; "
        "3 other plugins failed to load: `autonorm plugins` says why)"
    )
    assert registry.failure_note("other") == " (4 plugins failed to load: `autonorm plugins` says why)"


def test_an_error_about_a_name_another_plugin_took_says_so():
    class First:
        @autonorm.hookimpl
        def autonorm_components(self):
            return [Component(kind="activation", name="softclip", factory=lambda num_channels: None)]

    class Second:
        @autonorm.hookimpl
        def autonorm_components(self):
            factory = lambda num_channels, beta=1.0: None  # noqa: E731
            return [Component(kind="activation", name="softclip", factory=factory, params={"beta": Float(1, 0.1, 10)})]

    registry = Registry()
    registry.load_entry_points()
    registry.register(First(), "first", "first-pkg 1.0")
    registry.register(Second(), "second", "second-pkg 1.0")
    with pytest.raises(autonorm.SpecError) as info:
        autonorm.load_spec({"space": {"activation": {"softclip": {"beta": 2}}}}, registry)
    assert str(info.value) == (
        "space.activation.softclip.beta: softclip has no parameter 'beta' (parameters: none) (plugin 'second' "
        "failed to load: ValueError: activation 'softclip' is already registered by plugin 'first' (first-pkg); "
        "this one is left out)"
    )


def test_a_component_without_a_docstring_has_no_summary_rather_than_its_base_classs():
    class Undocumented(torch.nn.Identity):
        pass

    assert Component(kind="normalization", name="u", factory=Undocumented).summary == ""
    assert "Batch Normalization" in autonorm.get_registry().get("normalization", "batchnorm").summary


def test_a_summary_is_the_docstrings_first_paragraph_not_its_first_line():
    def wrapped(num_channels):
        """A first sentence that goes on
        past its first line.

        The rest."""

    assert Component(kind="normalization", name="w", factory=wrapped).summary == (
        "A first sentence that goes on past its first line."
    )


def test_a_second_name_for_a_hook_is_no_failure():
    class Aliased:
        @autonorm.hookimpl
        def autonorm_components(self):
            return [Component(kind="pooling", name="aliased_pool", factory=lambda: None)]

        _orig = autonorm_components

    registry = Registry()
    registry.register(Aliased(), "aliased")
    assert registry.failures == [] and ("pooling", "aliased_pool") in registry
