"""Every hook autonorm calls, in one place: a plugin author reads this file.

A plugin is a module (or object) registered under the ``autonorm`` entry-point group and decorated
with :data:`autonorm.hookimpl`. The built-in methods in ``autonorm_plugins`` register the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from autonorm.registry import Component

hookspec = pluggy.HookspecMarker("autonorm")


@hookspec
def autonorm_components() -> list[Component]:
    """Return the components this plugin provides.

    Called once per process when the registry loads. Every plugin's list is collected; a plugin whose
    hook raises is reported (name and error) by ``autonorm plugins`` and the others still load. Two
    components of the same kind and name are an error reported for the later one.
    """


# The trial-lifecycle hooks below are for trackers; each plugin's implementation is called on its own,
# and one that raises is reported as a warning naming the plugin: the trial and the other trackers go on.


@hookspec
def autonorm_trial_started(study_name: str, number: int, config: dict[str, Any]) -> None:
    """A trial is about to train ``config`` (the resolved configuration, as plain data)."""


@hookspec
def autonorm_trial_reported(study_name: str, number: int, epoch: int, metrics: dict[str, float]) -> None:
    """A trial finished an epoch with these validation ``metrics``; ``epoch`` counts from 0 (the step the
    trial reports to Optuna, the number of epochs done, is ``epoch + 1``)."""


@hookspec
def autonorm_trial_finished(study_name: str, number: int, state: str, metrics: dict[str, Any]) -> None:
    """A trial ended: ``state`` is ``complete``, ``pruned`` or ``failed`` (then ``metrics["reason"]``). A
    trial that reuses the outcome of an earlier one with the same configuration, or that is rejected
    before it has a configuration, ends without having started."""
