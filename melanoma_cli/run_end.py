"""`melanoma run`'s end: build the cascade on validation, evaluate it once on the test
split, export it, and the summary of planned against actual time per stage."""

from __future__ import annotations

from pathlib import Path

from melanoma_cli.lanes import has_checkpoint, mmss


def finish(out: Path, plan, lanes: dict, clock, record, stage, call=None) -> dict:
    """Build, evaluate once, export, and the summary; each stage through ``call(fn, ...)``
    (default: here; on a cluster, a task on a worker like the lanes')."""
    from melanoma.cascade.evaluate import evaluate_cascade

    call = call or (lambda fn, *a, **k: fn(*a, **k))
    cascade, export = out / "cascade", out / "export"
    # The runs that trained (a lane cut down for time may not have started its last ones).
    clss = [Path(c.out) for c in lanes["classifier"] if has_checkpoint(c)]
    share = plan.finish_s / 3
    tta = plan.tta
    if tta and not record.done("build") and clock.left() < plan.finish_s:
        # Training ran long: the eight-view end would not fit what is left.
        print(f"[run] re-planned: TTA off, {mmss(clock.left())} left for the end", flush=True)
        tta = False
    segs = [Path(lanes["segmenter"][0].out)]
    stage("build", share, lambda: call(_build, segs, clss, cascade, tta))
    report = stage("evaluate", share, lambda: call(evaluate_cascade, cascade))
    stage("export", share, lambda: call(_export, cascade, export))
    summary(out, plan, record, report, clock)
    return report


def _build(segs: list[Path], clss: list[Path], cascade: Path, tta: bool) -> bool:
    from melanoma.cascade.build import build_cascade

    # A seed ensemble averaged, as the budget curve measured it: weights fitted on the
    # validation melanomas would be noise.
    built = build_cascade(segs, clss, cascade, cls_weights="equal", tta="auto" if tta else "off")
    return bool(built)


def _export(cascade: Path, export: Path) -> bool:
    from melanoma.export import export_cascade

    return bool(export_cascade(cascade, export, int8=True))


def summary(out: Path, plan, record, report: dict, clock) -> None:
    c = report["classification"]
    seg = report.get("segmentation", {})
    print(f"\n[run] finished in {mmss(clock.elapsed())} of a {mmss(plan.budget_s)} budget")
    print("| stage | planned | actual |\n| --- | --- | --- |")
    for name, s in record.data["stages"].items():
        planned = "-" if s["planned_s"] is None else mmss(s["planned_s"])
        print(f"| {name} | {planned} | {mmss(s['actual_s'])} |")
    auc = c["auc"]
    jac = seg.get("jaccard", {})
    print(
        f"test AUC {auc['value']:.3f} (95% CI {auc['low']:.3f}-{auc['high']:.3f})"
        + (f", lesion Jaccard {jac['value']:.3f}" if jac else "")
        + f"; on {c.get('n', '?')} test images nothing chose on"
    )
    print(f"report:       {out / 'cascade' / 'report.md'}")
    print(f"model card:   {out / 'export' / 'MODEL_CARD.md'}")
    print(f"TensorBoard:  tensorboard --logdir {out}")
    print(f"exported:     {out / 'export'} (melanoma predict {out / 'export'} IMAGES...)")
