"""The embedded default backend: an Optuna study in the spec's storage, run in this process.

Re-running the same space resumes its study: only the trials still missing are run. A trial that
was interrupted (Ctrl-C, or a worker that stopped sending heartbeats) is not counted as done.
"""

from __future__ import annotations

import copy
import os
import socket
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import optuna
from optuna.trial import TrialState

from autonorm.errors import SpecError
from autonorm.objective import make_objective, rerun_stopped
from autonorm.params import FilePath, Fixed, Ordered
from autonorm.registry import Registry
from autonorm.results import StudyResults, TrialRecord, is_run_again, place, results_of
from autonorm.space import searched_domains
from autonorm.spec import Candidate, SearchSpec
from autonorm.storage import alone, has_heartbeats, mask_url, open_storage
from autonorm.yamlfile import placed

Callback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def make_sampler(spec: SearchSpec, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The spec's sampler, seeded with ``seed`` (default: ``search.seed``)."""
    seed = spec.search.seed if seed is None else seed
    if spec.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, spec.search.trials // 4)))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(8, max(2, spec.search.trials // 3)))


class PlaceSeeded(optuna.samplers.BaseSampler):
    """The spec's sampler, made afresh for each trial and seeded by the search's seed and the trial's
    place in the search (:func:`~autonorm.results.place`). Optuna's samplers keep what they learn in
    the study; their random generator is the only state a process holds, and one seeded once per
    session would make a search depend on where it was interrupted. Seeded by place, a search
    interrupted and resumed proposes what it would have proposed uninterrupted; an extended search
    does not propose its first session's configurations again (a random sampler, or TPE's start-up
    trials, seeded anew with the same seed would repeat them exactly); and workers sharing a study,
    whose trials have different places, propose apart."""

    def __init__(self, spec: SearchSpec) -> None:
        self._spec = spec
        self._samplers: dict[int, optuna.samplers.BaseSampler] = {}  # by trial number, until it ends

    def _of(self, trial: optuna.trial.FrozenTrial) -> optuna.samplers.BaseSampler:
        return self._samplers.get(trial.number) or self._made(trial.number, trial.number)

    def _made(self, number: int, at: int) -> optuna.samplers.BaseSampler:
        seed = int(np.random.SeedSequence([self._spec.search.seed, at]).generate_state(1)[0])
        self._samplers[number] = make_sampler(self._spec, seed)
        return self._samplers[number]

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._made(trial.number, place(study, trial.number)).before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial
    ) -> dict[str, optuna.distributions.BaseDistribution]:
        return self._of(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial, search_space: dict
    ) -> dict[str, object]:
        return self._of(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        param_name: str,
        param_distribution: optuna.distributions.BaseDistribution,
    ) -> object:
        return self._of(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        state: optuna.trial.TrialState,
        values: Sequence[float] | None,
    ) -> None:
        sampler = self._of(trial)
        del self._samplers[trial.number]
        sampler.after_trial(study, trial, state, values)


#: Epochs a trial trains before the median pruner may stop it.
MEDIAN_WARMUP = 2


def first_rung(spec: SearchSpec) -> int:
    """ASHA's first rung, in epochs: a third of the training (earlier, slow starters that end best
    are cut; benchmarks/search_efficiency.py measured it). A trial reports its step as the number
    of epochs done, so Optuna's pruners and Ray's schedulers decide after the same epochs."""
    return max(1, round(spec.epochs / 3))


def make_pruner(spec: SearchSpec) -> optuna.pruners.BasePruner:
    if spec.search.multi_objective:  # Optuna does not prune multi-objective studies
        return optuna.pruners.NopPruner()
    return {
        "none": optuna.pruners.NopPruner,
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=MEDIAN_WARMUP),
        "asha": lambda: OncePerConfiguration(
            optuna.pruners.SuccessiveHalvingPruner(min_resource=first_rung(spec), reduction_factor=3)
        ),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=spec.epochs),
    }[spec.search.pruner]()


class OncePerConfiguration(optuna.pruners.BasePruner):
    """A pruner that sees each configuration once, in the latest trial that trained it. ASHA ranks a trial
    among every trial that reached its rung, failed and pruned ones included, and three kinds of trial
    would count a configuration's measurements twice there:

    - a failed trial that is run again (interrupted, or whose process stopped), beside its rerun: a
      resumed search would then prune otherwise than it would have uninterrupted;
    - a repeat that took an earlier trial's outcome (``repeat_of``), beside that trial: every proposal of
      a stopped configuration would add its values to the rung again;
    - a stopped trial that a later one judges again (``rejudges``: :func:`~autonorm.objective.promote_late`)
      and, if promoted, trains again: the later trial carries the configuration's measurements.

    (The median pruner looks at completed trials only; Hyperband judges within brackets it builds from the
    storage, and is left as it is.)"""

    def __init__(self, pruner: optuna.pruners.BasePruner) -> None:
        self.pruner = pruner

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return self.pruner.prune(Distinct(study), trial)


class Distinct:
    """``study`` with each configuration once, as :class:`OncePerConfiguration` shows it (and the report's
    importances use it)."""

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    def __getattr__(self, name: str) -> object:
        return getattr(self._study, name)

    def get_trials(self, deepcopy: bool = True, states: Sequence[TrialState] | None = None) -> list:
        kept = [
            t
            for t in self._study.get_trials(deepcopy=False)
            if not is_run_again(t) and "repeat_of" not in t.user_attrs
        ]
        superseded = {t.user_attrs["rejudges"] for t in kept if "rejudges" in t.user_attrs}
        shown = [t for t in kept if t.number not in superseded and (states is None or t.state in states)]
        return copy.deepcopy(shown) if deepcopy else shown


def open_search_study(spec: SearchSpec, worker: bool = False) -> optuna.Study:
    """Create the spec's study, or load it to resume, with a :class:`PlaceSeeded` sampler."""
    study = optuna.create_study(
        study_name=spec.name,
        storage=open_storage(spec.storage),
        pruner=make_pruner(spec),
        directions=spec.search.directions,
        load_if_exists=True,
    )
    study.sampler = PlaceSeeded(spec)
    if "objective" not in study.user_attrs:
        study.set_user_attr("objective", spec.search.objectives[0])
        study.set_user_attr("objectives", spec.search.objectives)
        with warnings.catch_warnings():  # experimental in Optuna; optuna-dashboard labels the values with it
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(spec.search.objectives)
    stored = study.user_attrs.get("objectives", [study.user_attrs["objective"]])
    if stored != spec.search.objectives:
        raise SpecError(
            f"study {spec.name!r} optimizes {stored}, not {spec.search.objectives}; give the search a new name",
            path="search.objective",
        )
    check_distributions(study, spec)
    stored_ordered = study.user_attrs.get(ORDERED_ATTR)
    ordered = {**(stored_ordered or {}), **ordered_choices(spec)}
    if ordered != stored_ordered:  # an ordered choice this session adds (earlier ones stay)
        study.set_user_attr(ORDERED_ATTR, ordered)
    if not worker:  # the space as it is now: workers started for this session (or joining it) run it
        study.set_user_attr("space", stored_space(spec))
    return study


#: Study attribute: the values of each ordered choice, whose trials record positions in them.
ORDERED_ATTR = "ordered_choices"


def ordered_choices(spec: SearchSpec) -> dict[str, list]:
    return {name: list(d.choices) for name, (d, _) in searched_domains(spec).items() if isinstance(d, Ordered)}


def check_distributions(study: optuna.Study, spec: SearchSpec) -> None:
    """Refuse to resume a study whose trials suggested a parameter in a way this space cannot
    continue: Optuna fails every new trial whose parameter has another kind of distribution, other
    categorical choices or another log setting; and where an ordered choice of numbers (searched
    by position) changed its values, or a parameter became or stopped being one, earlier positions
    would stand for other values."""
    domains = searched_domains(spec)
    ordered_before = study.user_attrs.get(ORDERED_ATTR, {})
    used = dict.fromkeys((n, d) for t in study.get_trials(deepcopy=False) for n, d in t.distributions.items())
    for name, before in used:
        if name not in domains:
            continue
        domain, path = domains[name]
        now = domain.distribution()
        was, is_ = ordered_before.get(name), list(domain.choices) if isinstance(domain, Ordered) else None
        try:
            optuna.distributions.check_distribution_compatibility(before, now)
        except ValueError:
            problem = f"searched {name} as {_described(before, was)}, this space as {_described(now, is_)}"
        else:
            if was == is_:
                continue
            if was is None:
                problem = f"searched {name} as {_described(before)}; this space makes it an ordered choice of {is_}"
            else:
                now_text = f"lists {is_}" if is_ is not None else f"searches it as {_described(now)}"
                problem = f"searched {name} by position in the ordered values {was}; this space {now_text}"
        message = f"study {spec.name!r} {problem}; resume searching it as before, or give the search a new name"
        raise placed(SpecError(message, path=path), spec.source)


def _described(distribution: optuna.distributions.BaseDistribution, ordered: list | None = None) -> str:
    """A parameter's distribution as the space file says it: a choice of [...], an ordered choice of
    [...] (whose positions Optuna sees as integers), a (log) range."""
    if ordered is not None:
        return f"an ordered choice of {ordered}"
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return f"a choice of {list(distribution.choices)}"
    integer = isinstance(distribution, optuna.distributions.IntDistribution)  # else a FloatDistribution
    kind = f"{'a log' if distribution.log else 'an' if integer else 'a'} {'integer' if integer else 'number'}"
    return f"{kind} range [{distribution.low}, {distribution.high}]"


def stored_space(spec: SearchSpec) -> dict:
    """The space file as kept in the study (what ``autonorm worker`` runs), its ``search.storage``
    password masked: the study is readable by anyone with the database (optuna-dashboard shows it), and
    workers are given the URL (``autonorm worker --storage``) rather than reading it back; its data
    files' paths resolved."""
    raw = copy.deepcopy(spec.raw)
    search = raw.get("search")
    if isinstance(search, dict) and isinstance(search.get("storage"), str):
        search["storage"] = mask_url(search["storage"])
    files = {key: spec.data_params[key] for key, p in spec.dataset.params.items() if isinstance(p, FilePath)}
    if files:  # resolved from the space file's folder: a worker reads the same files from anywhere
        data = raw.get("data") if isinstance(raw.get("data"), dict) else {"dataset": spec.dataset.name}
        raw["data"] = {**data, **files}
    for kind, candidates in spec.space.items():  # and so are the components' files
        for cand in candidates:
            paths = _resolved_paths(cand)
            if paths:  # the kind's names, as a mapping of each to its parameters (a default: not in the file)
                given = raw.setdefault("space", {}).get(kind, cand.name)
                names = [given] if isinstance(given, str) else given
                named = given if isinstance(given, dict) else {n: {} for n in names}
                raw["space"][kind] = {**named, cand.name: {**(named.get(cand.name) or {}), **paths}}
    model_paths = _resolved_paths(spec.model)
    if model_paths:
        raw["model"] = {**raw.get("model", {}), **model_paths}
    return raw


def _resolved_paths(cand: Candidate) -> dict[str, str]:
    """A candidate's file and folder hyperparameters, as resolved when the space was read."""
    declared = cand.component.params
    return {k: d.value for k, d in cand.params.items() if isinstance(declared[k], FilePath) and isinstance(d, Fixed)}


#: User attribute naming the process that runs a trial, ``host:pid`` (see :func:`fail_orphans`).
WORKER_ATTR = "worker"


def this_process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_orphans(study: optuna.Study, every: bool = False) -> None:
    """A storage without heartbeats (a journal file) never learns that a process died, and its trial would
    stay running, and taken, for good: a running trial whose process (:data:`WORKER_ATTR`) was one of
    this machine that no longer exists is marked failed (its reason: the process stopped) and a copy with
    its parameters is queued, as heartbeats would have it. Processes on other machines cannot be checked
    from here. With ``every``, every running trial is an orphan: so it is when a search starts on an
    SQLite file, which one process uses at a time, where heartbeats find a killed process's trial only
    after their grace period, and a trial stopped inside Optuna (Ctrl-C while it asks the sampler or
    records the result) before it had a process recorded, never."""
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        where, _, pid = str(t.user_attrs.get(WORKER_ATTR, "")).rpartition(":")
        if not every and (where != host or not pid.isdigit() or _alive(int(pid))):
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except ValueError:  # another process got there first
            continue
        rerun_stopped(study, t)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def done_count(study: optuna.Study) -> int:
    return sum(TrialRecord.from_frozen(t).counts_as_done for t in study.get_trials(deepcopy=False))


#: Study user attribute holding the number of finished trials the search aims for, which a worker that
#: joins it (``autonorm worker``) aims for too: the file's ``search.trials``, or ``--trials``.
TARGET_ATTR = "trials"


def set_target(study: optuna.Study, trials: int) -> None:
    if study.user_attrs.get(TARGET_ATTR) != trials:
        study.set_user_attr(TARGET_ATTR, trials)


def run_optuna(spec: SearchSpec, registry: Registry, callbacks: Sequence[Callback] = ()) -> StudyResults:
    """Run the trials the study still lacks and return its results."""
    data = spec.load_data(registry)
    study = open_search_study(spec)
    set_target(study, spec.search.trials)
    sole = alone(spec.storage)
    if sole or not has_heartbeats(spec.storage):  # a search killed or stopped left its trial running
        fail_orphans(study, every=sole)
    missing = spec.search.trials - done_count(study)
    objective, me = make_objective(spec, data, registry), this_process()

    def owned(trial: optuna.Trial) -> float | tuple[float, ...]:
        trial.set_user_attr(WORKER_ATTR, me)
        return objective(trial)

    def stop_at_target(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Workers that joined (``autonorm worker``) finish trials too: stop when the study has enough."""
        if done_count(study) >= spec.search.trials:
            study.stop()

    if missing > 0:
        study.optimize(
            owned,
            n_trials=missing,
            timeout=spec.search.timeout,
            callbacks=[*callbacks, stop_at_target],
            gc_after_trial=False,
        )
    return results_of(study, spec.storage)
