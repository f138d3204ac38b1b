"""Test helpers that need autonorm: a registry holding the built-ins plus the test components."""

from autonorm import Registry
from tests import testing_plugin


def registry_with_test_components() -> Registry:
    registry = Registry()
    registry.load_entry_points()
    registry.register(testing_plugin, "testing")
    return registry
