"""The default is trial 0: every search evaluates its experiment's own train configuration
first (enqueued in the Optuna study, so TPE learns from it), ASHA never stops it, and
`search results` marks it (issue 34)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from search.experiment import experiment_from_dict
from search.searcher import DefaultKeepingASHA, create_searcher, create_trial_scheduler


def experiment(space: dict | None = None, **search) -> object:
    return experiment_from_dict(
        {
            "name": "x",
            "task": "cls",
            "train": {
                "model": {"arch": "resnet18"},
                "optimizer": {"name": "adamw", "lr": 1e-3},
                "input": {"mode": "crop", "crop_margin": 0.2},
            },
            "space": space
            or {
                "input.mode": {"choice": ["full", "crop", "dual"]},
                "input.crop_margin": {"uniform": [0.05, 0.5], "when": {"input.mode": ["crop"]}},
                "optimizer.lr": {"loguniform": [1e-4, 1e-2]},
            },
            "search": {"num_samples": 4, "max_epochs": 4, **search},
        }
    )


def test_the_first_suggestion_is_the_experiments_own_configuration():
    exp = experiment()
    assert exp.default_params == {
        "input.mode": "crop",
        "input.crop_margin": 0.2,
        "optimizer.lr": 1e-3,
    }
    searcher = create_searcher(exp, "x")
    assert searcher.suggest("t0") == exp.default_params
    assert searcher.study.trials[0].user_attrs == {"default": True}
    later = [searcher.suggest(f"t{i}") for i in range(1, 4)]
    assert exp.default_params not in later  # then the sampler's own


def test_a_resumed_study_is_not_given_its_default_twice(tmp_path):
    exp = experiment()
    journal = str(tmp_path / "study.log")
    first = create_searcher(exp, "x", journal)
    assert first.suggest("t0") == exp.default_params
    again = create_searcher(exp, "x", journal)  # the same study, read back from its journal
    assert again.suggest("t1") != exp.default_params
    marked = [t for t in again.study.trials if t.user_attrs.get("default")]
    assert len(marked) == 1


def test_an_experiment_may_opt_out_and_a_default_outside_its_space_stays_inside_it():
    exp = experiment(default_first=False)
    assert exp.default_params is None
    assert create_searcher(exp, "x").suggest("t0") != {"input.mode": "crop"}  # sampled
    # A number outside its range is the user's own setting (--set train.optimizer.lr=...):
    # evaluated as given. A choice the space does not offer cannot be: refused.
    wide = experiment({"optimizer.lr": {"loguniform": [1e-2, 1e-1]}})
    assert wide.default_params == {"optimizer.lr": 1e-3}
    assert create_searcher(wide, "x").suggest("t0") == {"optimizer.lr": 1e-3}
    # A choice the space does not offer: its first choice (a one-choice space overrides
    # the train value for the whole search).
    other = experiment({"input.mode": {"choice": ["dual", "full"]}})
    assert other.default_params == {"input.mode": "dual"}
    assert (
        experiment({"input.mode": {"choice": ["dual"]}}, default_first=False).default_params is None
    )


def _trial(trial_id: str, config: dict):
    return SimpleNamespace(trial_id=trial_id, config=config, evaluated_params=config)


def test_asha_never_stops_the_default_but_it_still_fills_the_rungs():
    """The sequence plain ASHA stops the default on, DefaultKeepingASHA continues."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    exp = experiment(scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2})
    kept = create_trial_scheduler(exp)
    assert isinstance(kept, DefaultKeepingASHA) and kept.default == exp.default_params
    settings = {"time_attr": "epoch", "metric": "m", "mode": "max", "max_t": 4}
    plain = ASHAScheduler(**settings, grace_period=1, reduction_factor=2)
    decisions = {}
    for name, scheduler in (("plain", plain), ("kept", kept)):
        scheduler.set_search_properties("m", "max")
        good = [_trial(f"g{i}", {"input.mode": "full", "optimizer.lr": 0.005}) for i in range(3)]
        default = _trial("d", dict(exp.default_params))
        for t in [*good, default]:
            scheduler.on_trial_add(None, t)
        for t in good:
            scheduler.on_trial_result(None, t, {"epoch": 1, "m": 0.9})
        decisions[name] = scheduler.on_trial_result(None, default, {"epoch": 1, "m": 0.1})
    assert decisions == {"plain": TrialScheduler.STOP, "kept": TrialScheduler.CONTINUE}


def test_the_default_hand_off_is_the_default_trial_and_the_best_others_at_equal_weights(
    monkeypatch, capsys
):
    """`cascade build --cls SEARCH` without --top-k takes a third of the search's trials
    (1 to 5): by default (--handoff anchored) the default trial and the best others, at
    equal weights; --handoff best the best few, --ensemble-size auto then 2k - 1 rounds."""
    import search.results as results
    import search.store as store
    from melanoma_cli import cascade as cli

    assert [cli.handoff_size(n) for n in (1, 2, 3, 4, 8, 16, 40)] == [1, 1, 1, 2, 3, 5, 5]
    assert [cli.ensemble_rounds(k) for k in (1, 2, 3, 5, 8)] == [1, 3, 5, 9, 9]
    # Eight trials best first; the default trial ranks sixth on validation.
    ranked = [(f"/s/{i}/checkpoint.pt", f"s/{i}", 0.9 - i / 100, i == 5) for i in range(8)]
    monkeypatch.setattr(store, "load_search_experiment", lambda name, storage: None)
    monkeypatch.setattr(results, "ranked_checkpoints", lambda name, task, storage: ranked)
    monkeypatch.setattr(
        "melanoma.cascade.members.load_candidates",
        lambda path, task, origin=None, value=None: [origin],
    )
    resolve = cli.resolve_candidates
    assert resolve(["s"], "cls", cli.AUTO, "runs", "best") == ["s/0", "s/1", "s/2"]
    assert "the best 3 of its 8 trials" in capsys.readouterr().out
    assert resolve(["s"], "cls", cli.AUTO, "runs", "anchored") == ["s/0", "s/1", "s/5"]
    assert "the default trial and the best 2 others of its 8 trials" in capsys.readouterr().out
    assert resolve(["s"], "cls", 1, "runs", "anchored") == ["s/5"]
    assert "the default trial alone" in capsys.readouterr().out
    assert resolve(["s"], "cls", 1, "runs", "best") == ["s/0"]
    # A search whose default trial kept no checkpoint hands on its best, and says so.
    ranked[5] = (*ranked[5][:3], False)
    assert resolve(["s"], "cls", 2, "runs", "anchored") == ["s/0", "s/1"]
    assert "no default trial with a checkpoint" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"--handoff must be one of \['anchored', 'best'\]"):
        resolve(["s"], "cls", 2, "runs", "first")
    # The weights: equal for an anchored search hand-off under auto, greedy otherwise.
    three = ["a", "b", "c"]
    assert cli.weighting(cli.AUTO, ["s"], three, "anchored") == (5, "equal")  # 5: segmenters
    assert cli.weighting(cli.AUTO, ["s"], three, "best") == (5, "greedy")
    assert cli.weighting(4, ["s"], three, "anchored") == (4, "greedy")
    assert cli.weighting(cli.EQUAL, ["s"], three, "best") == (5, "equal")
    # Run folders are not a search: auto stays greedy for them.
    assert cli.weighting(cli.AUTO, [str(Path(__file__).parent)], three, "anchored") == (
        5,
        "greedy",
    )


def test_expected_best_of_n_trials_equals_the_brute_force_mean_over_subsets():
    import itertools

    import numpy as np

    from melanoma.metrics.budget import expected_best

    rng = np.random.default_rng(4)
    val = rng.random(7)
    held = rng.random(7)
    rows = expected_best(val, held)
    for n in range(1, 8):
        subsets = list(itertools.combinations(range(7), n))
        best = [max(s, key=lambda i: val[i]) for s in subsets]
        assert rows[n - 1]["validation"] == pytest.approx(np.mean([val[i] for i in best]))
        assert rows[n - 1]["held_out"] == pytest.approx(np.mean([held[i] for i in best]))
    assert (
        rows[0]["validation"] == pytest.approx(val.mean()) and rows[-1]["validation"] == val.max()
    )
    with pytest.raises(ValueError, match="between 1 and 7"):
        from melanoma.metrics.budget import pick_weights

        pick_weights(7, 0)


def test_trials_tied_on_validation_are_picked_among_at_random():
    import itertools

    import numpy as np

    from melanoma.metrics.budget import expected_best

    # Two trials tie for the best validation score; a random tie-break picks each half the
    # time, whatever order the trial table lists them in.
    val = np.array([0.7, 0.9, 0.9, 0.8, 0.7])
    held = np.array([0.60, 0.50, 0.80, 0.70, 0.65])
    for order in ([0, 1, 2, 3, 4], [2, 1, 0, 4, 3]):
        rows = expected_best(val[order], held[order])
        for n in range(1, 6):
            picks = []
            for subset in itertools.combinations(range(5), n):
                top = max(val[i] for i in subset)
                tied = [i for i in subset if val[i] == top]
                picks.append(np.mean([held[i] for i in tied]))
            assert rows[n - 1]["held_out"] == pytest.approx(np.mean(picks)), (order, n)


def test_top_k_and_ensemble_size_take_a_count_or_auto(tmp_path, capsys):
    from melanoma_cli import main

    args = ["cascade", "build", "--seg", "a", "--cls", "b", "--out", str(tmp_path)]
    for option in ("--top-k", "--ensemble-size"):
        with pytest.raises(SystemExit):
            main([*args, option, "many"])
        assert "expected a whole number" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--top-k", "equal"])  # equal is a weighting, not a count of trials
    assert "expected a whole number or auto, got 'equal'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--ensemble-size", "many"])
    assert "expected a whole number, auto or equal, got 'many'" in capsys.readouterr().err


def test_the_budget_lets_the_default_trial_finish_and_stops_the_others():
    from search.callbacks import EpochBudget

    default = {"optimizer.lr": 1e-3, "input.mode": "dual"}
    other = {"optimizer.lr": 3e-4, "input.mode": "full"}
    budget = EpochBudget(4, default, max_epochs=3)

    def report(trial, config, epoch, finished=False):
        return budget(trial, {"epoch": epoch, "config": config, "finished": finished})

    assert report("d", default, 1) is False and report("o", other, 1) is False
    # The fourth trial-epoch spends the budget: the trial that reported it stops there, the
    # default goes on to its last epoch.
    assert report("d", default, 2) is False and report("o", other, 2) is True
    assert budget.spent() and not budget.stop_all()
    assert report("n", other, 1) is True  # a trial started after the budget stops at once
    assert report("d", default, 3, finished=True) is False
    assert budget.stop_all()
    # Without a default (an experiment that opts out, or an empty space) the budget ends
    # the search as before.
    for plain in (EpochBudget(2), EpochBudget(2, {}, max_epochs=3)):
        plain("a", {"epoch": 1, "config": default})
        assert plain("b", {"epoch": 1, "config": other}) is True and plain.stop_all()
    # A default that never reports its end (errored, or restored after it ended) cannot
    # keep the search going: it ends at the budget plus twice max_epochs.
    stuck = EpochBudget(4, default, max_epochs=3)
    stuck("d", {"epoch": 1, "config": default})
    for i in range(8):
        stuck(f"o{i}", {"epoch": 1, "config": other})
        assert stuck.stop_all() == (i + 2 >= 10), i


def test_a_search_within_the_budget_curve_says_what_the_curve_found():
    """The shipped CPU search (30 trial-epochs of 6-epoch runs) and anything up to eight
    runs' worth of the default get the note; a larger search does not."""
    from experiments import resolve
    from search.experiment import load_experiment
    from search.runner import MEASURED_RUNS, budget_advice

    shipped = load_experiment(resolve("isic2017_cpu_cls"))
    line = budget_advice(shipped)
    assert line and "30 trial-epochs is 5 runs' worth" in line and "melanoma run" in line
    at_edge = experiment(num_samples=MEASURED_RUNS, max_epochs=4)
    assert budget_advice(at_edge) is not None
    assert budget_advice(experiment(num_samples=MEASURED_RUNS + 1, max_epochs=4)) is None
    assert budget_advice(experiment(num_samples=40, max_epochs=4, budget_epochs=40)) is None


def test_the_budget_notes_claim_is_what_the_measured_curve_says():
    """The note's numbers and direction are read back from the curve's results: its
    largest budget in runs, three seeds, and every search arm behind the seed ensemble of
    its budget on HAM10000 on the mean, below zero in at least two seeds."""
    import json

    from search.runner import MEASURED_RUNS

    results = sorted(Path(__file__).parents[1].glob("benchmarks/results/budget_curve_seed*.json"))
    curves = [json.loads(p.read_text()) for p in results]
    assert sorted(c["seed"] for c in curves) == [0, 1, 2]
    for c in curves:
        assert max(c["settings"]["budgets"]) / c["settings"]["max_epochs"] == MEASURED_RUNS
    searched = [a for a in curves[0]["arms"] if a not in ("default run",) and "seed" not in a]
    assert len(searched) == 8
    for arm in searched:
        gaps = [c["arms"][arm]["ham_vs_seeds"] for c in curves]
        assert sum(g["difference"] for g in gaps) / 3 < 0, arm
        assert sum(g["high"] < 0 for g in gaps) >= 2, arm
