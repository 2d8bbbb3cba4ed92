"""The trials' plug-in seam: production trials run no hook; a registered plug-in's hooks
reach the loop, chained in the order named."""

from __future__ import annotations

import sys

import pytest

from trainables.hooks import PLUGINS_ENV, TrialHooks, trial_hooks


def test_no_plugin_no_hooks(monkeypatch):
    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    assert trial_hooks(0) == TrialHooks(None, None)


def test_registered_plugins_are_chained(tmp_path, monkeypatch):
    calls = []
    for name in ("plug_a", "plug_b"):
        (tmp_path / f"{name}.py").write_text(
            "from trainables.hooks import TrialHooks\n"
            "CALLS = []\n"
            "def trial_hooks(rank, run_dir):\n"
            f"    return TrialHooks(lambda e, b: CALLS.append(('{name}', rank, e)), None)\n"
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(PLUGINS_ENV, "plug_a, plug_b")
    hooks = trial_hooks(1, None)
    assert hooks.on_report is None
    hooks.on_batch(3, {})
    calls = sys.modules["plug_a"].CALLS + sys.modules["plug_b"].CALLS
    assert calls == [("plug_a", 1, 3), ("plug_b", 1, 3)]
    monkeypatch.setenv(PLUGINS_ENV, "no_such_plugin_module")
    with pytest.raises(ModuleNotFoundError):
        trial_hooks(0)


def test_the_fault_plugin_fails_once_on_rank_zeros_report(tmp_path, monkeypatch):
    from tests import trial_faults

    marker = tmp_path / "marker"
    monkeypatch.setenv(trial_faults.FAIL_ONCE_ENV, str(marker))
    monkeypatch.delenv(trial_faults.FAIL_RANK_ENV, raising=False)
    monkeypatch.delenv(trial_faults.TRACE_ENV, raising=False)
    hooks = trial_faults.trial_hooks(0, None)
    assert hooks.on_batch is None
    hooks.on_report(1)  # epoch 1's report goes through
    with pytest.raises(RuntimeError, match="injected trial failure"):
        hooks.on_report(2)
    hooks.on_report(2)  # once
    assert marker.read_text() == "failed after epoch 1\n"
