"""Test helpers that need autonorm: a registry holding the built-ins plus the test components."""

import autonorm
from autonorm import Registry
from tests import testing_plugin


class InterruptOnce:
    """A tracker that presses Ctrl-C once, in the second epoch of the first trial from ``number`` on."""

    def __init__(self, number: int) -> None:
        self.number: int | None = number

    @autonorm.hookimpl
    def autonorm_trial_reported(self, number: int, epoch: int) -> None:
        if self.number is not None and number >= self.number and epoch == 1:
            self.number = None
            raise KeyboardInterrupt


def registry_with_test_components(interrupt_from: int | None = None) -> Registry:
    """The built-ins and the test components; with ``interrupt_from``, an :class:`InterruptOnce` too."""
    registry = Registry()
    registry.load_entry_points()
    registry.register(testing_plugin, "testing")
    if interrupt_from is not None:
        registry.register(InterruptOnce(interrupt_from), "interrupt_once")
    return registry
