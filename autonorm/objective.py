"""One trial, whatever the backend: sample a configuration, build, train, record.

Every outcome is recorded on the trial: metrics and the configuration as user attributes, a failure's
reason (and traceback for unexpected errors) as ``fail_reason``/``traceback``. Failures return NaN,
which Optuna records as a failed trial, and the search goes on; a trial that diverged, or whose
components rule each other out, is recorded as pruned with its reason, so that the sampler learns
from it (see :class:`Rejected`). A configuration the sampler proposes again is not trained again
(unless ``search.retrain_repeats``): the trial takes the earlier trial's outcome and records
``repeat_of``, so a search spends no epochs on what it has already measured. A repeat of a configuration
that the pruner stopped is judged again first, and trains if it would now go on (see :func:`promote_late`).
"""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Callable
from typing import Any

import optuna
import pluggy
import torch

from autonorm.build import build_model, build_training_methods
from autonorm.data import Data
from autonorm.errors import Incompatible, Rejected, TrialFailed
from autonorm.registry import Registry
from autonorm.results import METRIC_KEYS
from autonorm.space import sample_config
from autonorm.spec import SearchSpec
from autonorm.trainer import fit


def make_objective(
    spec: SearchSpec, data: Data, registry: Registry
) -> Callable[[optuna.Trial], float | tuple[float, ...]]:
    objectives = spec.search.objectives
    objective_key = objectives[0]
    # Optuna prunes single-objective studies only, and only on a metric reported every epoch.
    prunable = not spec.search.multi_objective
    failed = tuple(float("nan") for _ in objectives) if spec.search.multi_objective else float("nan")
    hook = registry.plugin_manager.hook

    def objective(trial: optuna.Trial) -> float | tuple[float, ...]:
        judged = 0  # epochs whose pruning decision was made on an earlier trial's measurements
        reported = 0  # epochs whose measurements this trial already reported (those of the earlier trial)
        history: list[dict[str, float]] = []  # kept for a trial the pruner stops (fit returns it otherwise)

        def finish(state: str, metrics: dict[str, Any]) -> None:
            notify(
                hook.autonorm_trial_finished, study_name=spec.name, number=trial.number, state=state, metrics=metrics
            )

        def report(epoch: int, metrics: dict[str, float]) -> None:
            step = epoch + 1  # the number of epochs done, as Ray's schedulers count
            history.append(metrics)
            if not isinstance(trial, optuna.Trial):  # replayed in a Ray actor: its attributes, in memory, go
                trial.set_user_attr("history", history)  # with each report, for a trial the scheduler stops
            measured = prunable and objective_key in metrics
            if measured and step > reported:
                trial.report(metrics[objective_key], step)
            notify(
                hook.autonorm_trial_reported, study_name=spec.name, number=trial.number, epoch=epoch, metrics=metrics
            )
            # after the last epoch stopping saves nothing, and the trial's result is complete
            if measured and judged < step < spec.epochs and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {step}")

        try:
            config = sample_config(trial, spec, data.input_shape, data.num_classes)
            dumped = config.model_dump(mode="json")
            earlier = earlier_trial(trial, spec, dumped)
            if earlier is not None:
                judged = reported = promote_late(trial, earlier) if prunable else 0
                if not judged:
                    return _repeat(trial, earlier, finish)
            trial.set_user_attr("config", dumped)
            notify(hook.autonorm_trial_started, study_name=spec.name, number=trial.number, config=dumped)
            torch.manual_seed(config.seed)
            n = int(config.train["batch_size"])
            try:
                model = build_model(config, data.x_train[:n], registry, sample_labels=data.y_train[:n])
            except ValueError as exc:  # the choices cannot make this model (8 channels in 3 groups): steer away
                raise Incompatible(f"incompatible: {exc}") from None
            trial.set_user_attr("params", float(sum(p.numel() for p in model.parameters() if p.requires_grad)))
            methods = build_training_methods(config, registry)
            result = fit(model, data, config.train, config.epochs, report, methods=methods)
            missing = [key for key in objectives if key not in result.metrics]
            if missing:
                raise TrialFailed(
                    f"objective {', '.join(missing)} not measured here (peak memory needs CUDA; latency, a model "
                    "that runs on a single sample)"
                )
            for key, value in result.metrics.items():  # inside the try: Ctrl-C while recording is an interruption
                trial.set_user_attr(key, value)
            trial.set_user_attr("history", result.history)
            finish("complete", result.metrics)
            if spec.search.multi_objective:
                return tuple(result.metrics[key] for key in objectives)
            return result.metrics[objective_key]
        except optuna.TrialPruned:
            if history:
                trial.set_user_attr("history", history)
            finish("pruned", {})
            raise
        except KeyboardInterrupt:
            record_interrupted(trial)
            raise
        except TrialFailed as exc:
            reason = str(exc)
            if isinstance(exc, Incompatible) and exc.summary:
                trial.set_user_attr("summary", exc.summary)
            if isinstance(exc, Rejected):  # recorded as pruned, multi-objective too: TPE counts it against its region
                trial.set_user_attr("fail_reason", reason)
                if history:  # the epochs before it diverged, as a pruned trial keeps them
                    trial.set_user_attr("history", history)
                finish("pruned", {"reason": reason})
                raise optuna.TrialPruned(reason) from None
        except Exception as exc:  # noqa: BLE001 - a plugin's bug fails its trial, not the search
            reason = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("traceback", traceback.format_exc())
        trial.set_user_attr("fail_reason", reason)
        finish("failed", {"reason": reason})
        return failed

    return objective


def record_interrupted(trial: optuna.Trial) -> None:
    """Record that ``trial`` was interrupted, and queue a copy of its parameters for the study's next
    trial to take (with ``retry_of``): resumed, the search runs the same configuration in the same
    place (:func:`~autonorm.results.place`), and so with the same seed, as it would have uninterrupted
    (the pruner no longer sees the interrupted trial: :class:`~autonorm.backends.optuna.OncePerConfiguration`)."""
    trial.set_user_attr("fail_reason", "interrupted")
    queue_rerun(trial.study, trial.study._storage.get_trial(trial._trial_id))


def queue_rerun(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue a copy of ``trial``'s parameters, which the study's next trial takes (with ``retry_of``),
    and its genetic sampler's generation: NSGA-II counts a trial with fixed parameters in no
    generation, and every later generation would shift."""
    generation = {key: value for key, value in trial.system_attrs.items() if key.endswith(":generation")}
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.WAITING,
            system_attrs={"fixed_params": dict(trial.params), **generation},
            user_attrs={"retry_of": trial.number},
        )
    )


#: How many times in a row the configuration of a trial whose process was killed runs again: one that
#: kills every worker that takes it (memory) must not take the search down with it.
MAX_RERUNS = 3


def rerun_stopped(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue the configuration of a trial whose process stopped (killed; its heartbeats, or its process
    on this machine, gone) to run again in its place, as an interrupted trial's is, up to
    :data:`MAX_RERUNS` times in a row."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    reruns, earlier = 0, trial
    while (number := earlier.user_attrs.get("retry_of")) is not None and number in trials:
        reruns, earlier = reruns + 1, trials[number]
    if reruns < MAX_RERUNS:
        queue_rerun(study, trial)


def notify(caller: pluggy.HookCaller, **kwargs: Any) -> None:
    """Call each plugin's implementation of a trial-lifecycle hook (a tracker's) on its own: one that
    raises is reported as a warning naming it, and neither the trial nor the other trackers suffer."""
    for impl in caller.get_hookimpls():
        try:
            impl.function(**{name: kwargs[name] for name in impl.argnames})
        except Exception as exc:  # noqa: BLE001 - a tracker's bug must not fail a trained trial
            warnings.warn(
                f"plugin {impl.plugin_name!r}: {caller.name} raised {type(exc).__name__}: {exc}", stacklevel=2
            )


def earlier_trial(trial: optuna.Trial, spec: SearchSpec, config: dict[str, Any]) -> optuna.trial.FrozenTrial | None:
    """The latest finished trial of the same study that chose exactly the same parameters and trained
    exactly the same resolved ``config`` (all but its seed: the same epochs, data, model and fixed
    settings, which a resumed space file may have changed), whose outcome ``trial`` reuses; None if
    there is none or ``search.retrain_repeats`` asks to train it again. Repeats are passed over: the
    trial they copied speaks for them, and a configuration promoted late speaks through its latest
    training, not the one the pruner stopped.

    A trial replayed away from its study (a Ray actor's ``FixedTrial``) has none to look in.
    """
    study = getattr(trial, "study", None)
    if study is None or spec.search.retrain_repeats:
        return None
    setup = _without_seed(config)
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    for earlier in reversed(study.get_trials(deepcopy=False, states=states)):
        trained = "repeat_of" not in earlier.user_attrs
        if trained and earlier.number != trial.number and earlier.params == trial.params:
            if _without_seed(earlier.user_attrs.get("config")) == setup:
                return earlier
    return None


def _without_seed(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """A trial's configuration less its training seed, which differs from trial to trial."""
    return None if config is None else {key: value for key, value in config.items() if key != "seed"}


def _repeat(
    trial: optuna.Trial, earlier: optuna.trial.FrozenTrial, finish: Callable[[str, dict[str, Any]], None]
) -> float | tuple[float, ...]:
    """Record a repeated configuration with the earlier trial's outcome, without training it again."""
    copy_outcome(trial, earlier)
    if earlier.state == optuna.trial.TrialState.PRUNED:
        raise optuna.TrialPruned(f"same configuration as trial {earlier.number}, which was pruned")
    metrics = {key: earlier.user_attrs[key] for key in METRIC_KEYS if key in earlier.user_attrs}
    finish("complete", metrics)
    return tuple(earlier.values) if len(earlier.values) > 1 else earlier.values[0]


def promote_late(trial: optuna.Trial, earlier: optuna.trial.FrozenTrial) -> int:
    """Asynchronous successive halving promotes late (Li et al. 2020, arXiv:1810.05934): a configuration
    stopped at a rung is promoted once it ranks among the best there. Optuna's pruners stop a trial for
    good, and one stopped while few trials had reached its rung may rank well now; so when the sampler
    proposes it again, its earlier measurements are reported on ``trial`` and the pruner asked again.
    Returns the last epoch so judged if the pruner lets it go on (it then trains from the start, as no
    weights were kept, and is next judged after that epoch), or 0 to reuse the earlier outcome.
    A trial rejected for a reason (diverged, incompatible) is not judged again."""
    stopped = earlier.state == optuna.trial.TrialState.PRUNED and "fail_reason" not in earlier.user_attrs
    if not stopped or not earlier.intermediate_values:
        return 0
    trial.set_user_attr("rejudges", earlier.number)  # the pruner no longer counts the earlier trial's values
    for step, value in sorted(earlier.intermediate_values.items()):
        trial.report(value, step)
    if trial.should_prune():
        return 0
    trial.set_user_attr("promoted_from", earlier.number)
    return max(earlier.intermediate_values)


def copy_outcome(trial: optuna.Trial, earlier: optuna.trial.FrozenTrial) -> None:
    """Give ``trial`` the recorded outcome of ``earlier`` (metrics, history, configuration), and ``repeat_of``."""
    for key, value in earlier.user_attrs.items():
        if key not in ("worker", "ray_node", "retry_of", "rejudges", "promoted_from"):  # about that trial only
            trial.set_user_attr(key, value)
    trial.set_user_attr("repeat_of", earlier.number)
