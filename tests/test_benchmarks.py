"""The benchmark scripts stay runnable: their configs validate and their helpers compute
what their tables print. No timing is asserted here (see benchmarks/ for the figures)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_benchmark_has_a_usage_docstring():
    for path in sorted(BENCHMARKS.glob("*.py")):
        doc = load(path.stem).__doc__
        assert doc and f"python benchmarks/{path.name}" in doc, path.name


@pytest.mark.parametrize("task", ["seg", "cls"])
def test_train_overhead_configs_validate(task):
    from melanoma.engine.config import TrainConfig

    bench = load("train_overhead")
    config = TrainConfig.from_dict(
        {**bench.train_config(task, "synthetic:40:64:0", 64), "epochs": 2, "out": "x"}
    )
    assert config.task == task
    assert set(bench.LAUNCHERS) == {"train", "inline"}


def test_real_search_experiments_validate_and_count_right():
    from search.experiment import experiment_from_dict

    bench = load("real_search")
    base = bench.base_experiment("isic2017_cpu_cls")
    args = argparse.Namespace(
        budget=12, max_epochs=4, data="synthetic:40:64:0", image_size=64, mask_source="/r/seg"
    )
    default = experiment_from_dict(bench.experiment(base, "default", 2, args, "runs/x", 12))
    # The default run is the shipped train config, unsearched, for the whole budget, with
    # the benchmark's own segmenter's masks.
    assert default.space == () and default.search.num_samples == 1
    assert base_input(base).mask_source == "search:isic2017_cpu_seg"
    assert default.train.epochs == 12
    assert default.train.input == replace(base_input(base), mask_source="/r/seg")
    assert default.train.seed == 2 and default.resources.launcher == "inline"
    assert default.train.data.image_size == 64 and default.train.data.path == "synthetic:40:64:0"
    search = experiment_from_dict(bench.experiment(base, "search", 2, args, "runs/x", 4))
    assert search.search.budget_epochs == 12 and search.search.searcher.seed == 2
    assert search.search.scheduler.name == "asha" and search.search.searcher.name == "optuna"
    assert {p.key for p in search.space} == set(base["space"])
    assert bench.ARMS[0] == bench.DEFAULT and len(bench.ARMS) == 5
    # Every run of every seed has a search name of its own (they share one storage).
    names = [
        name
        for seed in range(3)
        for name in (
            bench.experiment(base, "default", seed, args, "runs/x", 12)["name"],
            bench.experiment(base, "search", seed, args, "runs/x", 4)["name"],
            *(bench.member_name(seed, j) for j in range(3)),
        )
    ]
    assert len(set(names)) == len(names)


def base_input(base: dict):
    from melanoma.engine.config import InputConfig

    return InputConfig(**base["train"]["input"])


def test_real_search_summary_counts_paired_wins_per_seed():
    import numpy as np

    bench = load("real_search")

    def run(seed, test, chosen_on, diff=None, low=None):
        record = {"seed": seed, "test_auc": test, "val_auc": chosen_on, "chosen_on": chosen_on}
        record |= {"epochs": 12, "wall_s": 1.0}
        if diff is not None:
            record["vs_default"] = {"difference": diff, "low": low, "high": diff + 0.05}
        return record

    runs = {
        bench.DEFAULT: [run(0, 0.72, 0.75), run(1, 0.70, 0.80)],
        "search + cv": [run(0, 0.71, 0.76, -0.01, -0.04), run(1, 0.75, 0.74, 0.05, 0.01)],
    }
    # Against the seed ensemble: ahead in both seeds, clearly (interval above 0) in one.
    runs["search + cv"][0]["vs_seeds"] = {"difference": 0.02, "low": -0.01, "high": 0.05}
    runs["search + cv"][1]["vs_seeds"] = {"difference": 0.04, "low": 0.01, "high": 0.07}
    summary = bench.summarise(runs)
    cv = summary["search + cv"]
    assert cv["wins"] == 1 and cv["separated_wins"] == 1
    assert cv["wins_vs_seeds"] == 2 and cv["separated_wins_vs_seeds"] == 1
    assert summary[bench.DEFAULT]["wins_vs_seeds"] == 0
    assert np.allclose(cv["gap"], [0.05, -0.01]) and np.allclose(
        cv["gain_vs_default"], [-0.01, 0.05]
    )
    bench.print_table(summary, seeds=2)
    # Predictions of several models pooled in different orders are averaged per image.
    a = {"id": np.array(["x", "y"]), "label": np.array([0, 1]), "prob": np.array([0.2, 0.8])}
    b = {"id": np.array(["y", "x"]), "label": np.array([1, 0]), "prob": np.array([0.6, 0.4])}
    mean = bench.mean_of([a, b], [1, 3])
    assert np.allclose(mean["prob"], [(0.2 + 3 * 0.4) / 4, (0.8 + 3 * 0.6) / 4])
    assert bench.auc(mean) == 1.0


def test_input_modes_configs_validate_and_compare_with_full(capsys):
    from melanoma.engine.config import TrainConfig

    bench = load("input_modes")
    base = load("real_search").base_experiment("isic2017_cpu_cls")
    args = argparse.Namespace(
        data="synthetic:40:64:0", image_size=64, source_size=128, epochs=3, mask_source="/r/seg"
    )
    configs = {
        mode: TrainConfig.from_dict(bench.train_config(base, mode, 1, args, Path("x")))
        for mode in bench.MODES
    }
    for mode, c in configs.items():
        # The shipped train config, changed only in mode, masks, crop source and sizes.
        assert c.model.arch == base["train"]["model"]["arch"] and c.epochs == 3 and c.seed == 1
        assert c.input.mode == mode and c.data.image_size == 64
        assert c.input.mask_source == ("gt" if mode == "full" else "/r/seg")
        assert c.load_size == (128 if mode in ("crop", "dual") else 64)

    def record(diff, low, high):
        return {
            "test_auc": 0.7,
            "val_auc": 0.8,
            "wall_s": 1.0,
            "vs_full": {"difference": diff, "low": low, "high": high},
        }

    full = {"test_auc": 0.7, "val_auc": 0.8, "wall_s": 1.0}
    summary = bench.summarise(
        {
            "full": [full] * 3,
            "dual": [
                record(0.04, 0.01, 0.06),
                record(0.02, -0.02, 0.05),
                record(-0.03, -0.06, -0.01),
            ],
        }
    )
    d = summary["dual"]
    assert d["wins"] == 2 and d["separated_wins"] == 1 and d["separated_losses"] == 1
    assert d["gain_vs_full"] == [0.04, 0.02, -0.03]
    bench.print_table(summary, 3, load("real_search"))
    table = capsys.readouterr().out
    assert (
        "dual         |         0.7000 (0.7000-0.7000) |       +0.0100 (-0.0300 to +0.0400)"
        in table
    )
    assert "|   2/3 |          1/3 |          1/3 |" in table


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

    bench = load("serve")
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
    ],
)
def test_benchmark_arguments_are_refused_with_the_fix(name, argv, message, monkeypatch, capsys):
    bench = load(name)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
    with pytest.raises(SystemExit) as exit_:
        bench.main()
    assert exit_.value.code == 2 and message in capsys.readouterr().err
