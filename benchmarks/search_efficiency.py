"""Epochs a search spends to come within 0.5 points of the optimum: TPE + ASHA against random search.

The space is small enough to train exhaustively: 3 normalizations x 2 activations x 2 poolings x 6
learning rates on digits (small_cnn, 9 epochs). Every configuration is trained with several seeds
(``--table-seeds``, default 3) and its learning curves are cached as tables (in the temp directory), so
each search is then a replay: autonorm's own sampler and pruner (``PlaceSeeded``/``make_pruner``) and
its define-by-run sampling (``sample_config``) choose configurations, and each trial "trains" by
reading a curve epoch by epoch, reporting to the pruner as the trainer would. As in a real search, trial
n of a search with seed s trains with seed s + n (here: reads the table of seed (s + n) mod the number
of tables), and a configuration proposed again reuses its earlier outcome at no cost (one the pruner
stopped is judged again on its earlier measurements, and trains again if it would now go on).

The optimum is that of the mean final accuracy over the table seeds, and the targets are the
configurations whose mean is within ``--tolerance`` of it: on 288 validation images 0.5 points is
about one image, so one training run's noise would decide which configurations count. A search stops
at the first completed trial of a target configuration; the script prints the mean epochs spent by
random search at full budget (no pruning) and by TPE + ASHA over many seeds, and their ratio (target
<= 0.3); and, for reference, random search that trains a repeated configuration again. Random search's
mean is also known exactly (with K of N configurations good, it trains (N + 1) / (K + 1) distinct ones
on average), and a few seeds leave its sample mean far from it: the ratio against the exact figure is
printed too.

    python benchmarks/search_efficiency.py [--seeds 100] [--tolerance 0.005] [--max-trials 200] [--table-seeds 3]

Other settings of the model-based search, for comparison (autonorm's defaults otherwise):
``--startup N`` TPE start-up trials, ``--gp`` Optuna's GPSampler instead of TPE, ``--first-rung E``
and ``--reduction R`` for ASHA (first decision after E epochs, then every R times as many).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

import autonorm_plugins
import optuna
import torch

import autonorm
from autonorm import build_model, get_registry, load_spec
from autonorm.backends.optuna import PlaceSeeded, first_rung, make_pruner
from autonorm.build import build_training_methods
from autonorm.data import load_data
from autonorm.objective import earlier_trial, promote_late
from autonorm.space import sample_config
from autonorm.trainer import fit

NORMS, ACTS, POOLS = ["batchnorm", "groupnorm", "layernorm"], ["relu", "elu"], ["avg", "max"]
LRS = [0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
SPACE = {
    "name": "search_efficiency",
    "data": {"dataset": "digits"},
    "model": {"backbone": "small_cnn", "depth": 2, "width": 16},
    "space": {"normalization": NORMS, "activation": ACTS, "pooling": POOLS},
    "train": {"epochs": 9, "batch_size": 64, "lr": LRS},
    "search": {"trials": 72, "sampler": "tpe", "pruner": "asha", "seed": 0},
}


def key(config) -> str:
    c = config.components
    return f"{c['normalization'].name}|{c['activation'].name}|{c['pooling'].name}|{config.train['lr']}"


def configuration(spec, data, norm: str, act: str, pool: str, lr: float):
    # the learning rates are an ordered choice: the trial's parameter is the position in LRS
    choice = {"normalization": norm, "activation": act, "pooling": pool, "train.lr": LRS.index(lr)}
    return sample_config(optuna.trial.FixedTrial(choice), spec, data.input_shape, data.num_classes)


def source_digest() -> str:
    """A digest of autonorm's and its built-in plugins' source: a change to how models are built or trained
    (an initializer's default, say) trains the tables again."""
    roots = [Path(autonorm.__file__).parent, Path(autonorm_plugins.__file__).parent]
    digest = hashlib.sha256()
    for path in sorted(p for root in roots for p in root.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def exhaustive_table(spec, data, seed: int) -> dict[str, list[float]]:
    """Validation accuracy after each epoch for every configuration trained with ``seed`` (cached, by the
    space, the seed, torch's version, the source of autonorm and its plugins, and the full configuration a
    trial resolves, training defaults included)."""
    resolved = configuration(spec, data, NORMS[0], ACTS[0], POOLS[0], LRS[0]).model_dump(mode="json")
    identity = json.dumps([SPACE, seed, torch.__version__, source_digest(), resolved], sort_keys=True)
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    cache = Path(tempfile.gettempdir()) / f"autonorm_search_efficiency_{digest}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    table, start = {}, time.perf_counter()
    for norm, act, pool, lr in itertools.product(NORMS, ACTS, POOLS, LRS):
        config = configuration(spec, data, norm, act, pool, lr)
        torch.manual_seed(seed)
        model = build_model(config, data.x_train[:64], sample_labels=data.y_train[:64])
        result = fit(model, data, config.train, config.epochs, methods=build_training_methods(config))
        curve = [epoch["val_accuracy"] for epoch in result.history]
        table[key(config)] = curve
        print(f"  seed {seed} {key(config):28s} {' '.join(f'{a:.4f}' for a in curve)}", flush=True)
    seconds = time.perf_counter() - start
    print(f"exhaustive, seed {seed}: {len(table)} configurations in {seconds:.0f} s, cached in {cache}")
    cache.write_text(json.dumps(table))
    return table


def epochs_to_target(
    spec, data, tables, targets: set[str], max_trials: int, sampler=None, pruner=None
) -> tuple[int, bool]:
    """Run one search against the tables (with the spec's sampler and pruner unless given); epochs spent
    until a trial of a target configuration completes."""
    spent = 0

    def objective(trial: optuna.Trial) -> float:
        nonlocal spent
        config = sample_config(trial, spec, data.input_shape, data.num_classes)
        dumped = config.model_dump(mode="json")
        curve = tables[(spec.search.seed + trial.number) % len(tables)][key(config)]  # trial n's seed is s + n
        trial.set_user_attr("config", dumped)
        trial.set_user_attr("key", key(config))
        # as the search does: a repeated configuration is not trained again (unless retrain_repeats),
        # but one the pruner stopped is judged again and trains if it would now go on
        earlier = earlier_trial(trial, spec, dumped)
        judged = promote_late(trial, earlier) if earlier is not None else 0
        if earlier is not None and not judged:
            trial.set_user_attr("repeat_of", earlier.number)
            if earlier.state == optuna.trial.TrialState.PRUNED:
                raise optuna.TrialPruned()
            return earlier.value
        for epoch, accuracy in enumerate(curve):
            spent += 1
            if epoch + 1 <= judged:
                continue
            trial.report(accuracy, epoch + 1)  # as the objective: the step is the number of epochs done,
            if epoch + 1 < len(curve) and trial.should_prune():  # and the last epoch is never pruned
                raise optuna.TrialPruned()
        return curve[-1]

    def found(trial: optuna.trial.FrozenTrial) -> bool:
        return trial.state == optuna.trial.TrialState.COMPLETE and trial.user_attrs["key"] in targets

    def stop_at_target(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if found(trial):
            study.stop()

    sampler, pruner = sampler or PlaceSeeded(spec), pruner or make_pruner(spec)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    study.optimize(objective, n_trials=max_trials, callbacks=[stop_at_target])
    return spent, any(found(t) for t in study.trials)


def other_settings(args: argparse.Namespace, spec) -> tuple:
    """The sampler and pruner the command line asks for instead of autonorm's (None: autonorm's)."""
    seed, startup = spec.search.seed, args.startup
    sampler = None
    if args.gp:
        sampler = optuna.samplers.GPSampler(seed=seed, **({"n_startup_trials": startup} if startup else {}))
    elif startup is not None:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)
    pruner = None
    if args.first_rung or args.reduction:
        pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=args.first_rung or first_rung(spec), reduction_factor=args.reduction or 3
        )
    return sampler, pruner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--tolerance", type=float, default=0.005, help="accuracy below the optimum that counts")
    parser.add_argument("--max-trials", type=int, default=200, help="a search that has not reached it stops here")
    parser.add_argument("--table-seeds", type=int, default=3, help="training seeds of the exhaustive tables")
    parser.add_argument("--startup", type=int, help="TPE start-up trials (default: autonorm's)")
    parser.add_argument("--gp", action="store_true", help="Optuna's GPSampler instead of TPE")
    parser.add_argument("--first-rung", type=int, help="ASHA's first decision after this many epochs")
    parser.add_argument("--reduction", type=int, help="ASHA's reduction factor (default 3)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    spec = load_spec(SPACE, get_registry())
    data = load_data(spec.dataset_choice, spec.val_fraction, spec.test_fraction, spec.search.seed)
    tables = [exhaustive_table(spec, data, seed) for seed in range(args.table_seeds)]
    mean = {k: statistics.mean(table[k][-1] for table in tables) for k in tables[0]}
    best = max(mean.values())
    targets = {k for k, accuracy in mean.items() if accuracy >= best - args.tolerance}
    print(
        f"optimum {best:.4f} (mean final accuracy over {len(tables)} training seeds); {len(targets)} of {len(mean)} "
        f"configurations within {100 * args.tolerance:.1f} points: {', '.join(sorted(targets))}"
    )

    runs = {}
    model_based = ("GP" if args.gp else "TPE") + " + ASHA"
    variants = (
        ("random, full budget", "random", "none", False),
        ("random, retraining repeats", "random", "none", True),
        (model_based, "tpe", "asha", False),
    )
    for name, sampler, pruner, retrain in variants:
        spent, misses = [], 0
        for seed in range(args.seeds):
            settings = {**SPACE["search"], "sampler": sampler, "pruner": pruner, "seed": seed}
            settings["retrain_repeats"] = retrain
            seeded = load_spec({**SPACE, "search": settings}, get_registry())
            other = other_settings(args, seeded) if sampler == "tpe" else (None, None)
            epochs, reached = epochs_to_target(seeded, data, tables, targets, args.max_trials, *other)
            spent.append(epochs)
            misses += not reached
        runs[name] = statistics.mean(spent)
        print(
            f"{name:27s} epochs to target: mean {statistics.mean(spent):.1f}, median {statistics.median(spent):.0f} "
            f"over {args.seeds} seeds ({misses} did not reach it in {args.max_trials} trials)"
        )
    expected = SPACE["train"]["epochs"] * (len(mean) + 1) / (len(targets) + 1)
    ratio = runs[model_based] / runs["random, full budget"]
    print(f"ratio {model_based} / random: {ratio:.2f} (target <= 0.3)")
    print(f"ratio {model_based} / random's exact mean ({expected:.1f} epochs): {runs[model_based] / expected:.2f}")
    retrained = runs[model_based] / runs["random, retraining repeats"]
    print(f"ratio {model_based} / random retraining repeats: {retrained:.2f}")


if __name__ == "__main__":
    main()
