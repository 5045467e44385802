"""``scalescope generalization --store DIR [--json]``: the generalization phenomena a store's runs show (random
labels, double descent, grokking, bad global minima, linear probes), with the thresholds that define them
(:mod:`scalescope.analyses.generalization`)."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import StoreError
from .common import add_json, add_store, print_json

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "generalization",
        help="random labels, double descent, grokking, bad global minima and probe selectivity found in a store",
    )
    add_store(
        p,
        help="store directory (e.g. from the experiments random_labels, double_descent, grokking, bad_minima, probes)",
    )
    add_json(p)
    p.set_defaults(fn=cmd_generalization)


def _f(v: Any, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def _pct(v: Any) -> str:
    return "-" if v is None else f"{v:.1%}"


def _print(res: dict[str, Any]) -> None:
    d = res["definitions"]
    if not res["found"]:
        print(
            f"no generalization phenomena in {res['store']}: it needs finished runs of the experiments "
            "random_labels, double_descent, grokking, bad_minima or probes (or sweeps like them)"
        )
        return
    for grp in res["random_labels"]:
        print("Random labels (Zhang et al. 2017): steps to fit = " + d["steps_to_fit"])
        print(
            f"  {'labels':>14} {'inputs':>16} {'steps to fit':>12} {'x clean':>8} {'train acc':>9} "
            f"{'test acc':>8} {'chance':>6} {'Rademacher bound':>16}"
        )
        for r in grp["runs"]:
            lab = f"p = {r['label_noise']:g}"
            bound = r.get("rademacher_bound_test_error")
            fit = "not fit" if r["steps_to_fit"] is None else str(r["steps_to_fit"])
            bound_s = "-" if bound is None else "test err <= " + _f(bound, ".2f")
            train, test = _pct(r["final_train_acc"]), _pct(r["final_test_acc"])
            print(
                f"  {lab:>14} {r['inputs']:>16} {fit:>12} {_f(r['fit_ratio_to_clean'], '.2f'):>8} {train:>9} "
                f"{test:>8} {_pct(r['chance_acc']):>6} {bound_s:>16}"
            )
        if grp["rademacher"] is not None:
            bounds = [r.get("rademacher_bound_test_error") for r in grp["runs"]]
            vacuous = sum(1 for b in bounds if b is not None and b > 1)
            print(
                f"  empirical Rademacher complexity of the 0-1 loss class ~ {grp['rademacher']:.3f} (max 0.5); "
                f"the bound it gives is vacuous (> 1) for {vacuous} of {len(bounds)} runs"
            )
            if grp.get("rademacher_note"):
                print(f"  note: {grp['rademacher_note']}")
        for r in grp["runs"]:
            sb = r.get("spectral_bound")
            if sb:
                print(
                    f"  spectral bound (Bartlett et al. 2017, no constants) at p = {r['label_noise']:g}: "
                    f"{_f(sb.get('bound_noconst'))} vs observed gap {_f(r['gap'], '.3f')}; "
                    f"normalized margin {_f(sb.get('normalized_margin'))}"
                )
    for dd in res["double_descent"]:
        verdict = "" if dd["interior_peak"] else "  (no interior peak: the error only falls)"
        if "target_met" in dd:
            verdict = "  target met" if dd["target_met"] else f"  target NOT met ({d['double_descent_target']})"
        elif "verdict" in dd:
            verdict = f"  {dd['verdict']}"
        print(
            f"Double descent, {dd['kind']}, label noise {dd['label_noise']:g}"
            + (f", ridge {dd['ridge']:g}" if "ridge" in dd else "")
            + ":"
        )
        print(
            f"  peak test error {_pct(dd['peak_error'])} at {dd['axis']} = {dd['peak_at']:.3g}; at the edge "
            f"({dd['axis']} = {dd['edge_at']:.3g}) {_pct(dd['edge_error'])}; ratio {dd['peak_ratio']:.3g}; "
            f"{'significant' if dd['significant'] else 'not significant'}{verdict}"
        )
        if dd.get("kind") == "model-wise (MLP)":
            print(f"  smallest model that fits its training set: {_f(dd.get('interpolation_threshold'))} parameters")
        ew = dd.get("epoch_wise")
        if ew and ew.get("peak"):
            print(
                f"  epoch-wise (widest model): test error {_pct(ew['first_minimum']['test_error'])} at step "
                f"{ew['first_minimum']['step']}, rises to {_pct(ew['peak']['test_error'])} at {ew['peak']['step']}"
                f" ({'significant' if ew['rise_significant'] else 'not significant'}), then "
                f"{_pct(ew['after_peak_minimum']['test_error'])} at {ew['after_peak_minimum']['step']} (second descent "
                f"{'significant' if ew['second_descent_significant'] else 'not significant'})"
            )
    if res["grokking"]:
        print(f"Grokking: memorization = {d['memorization_step']}; generalization = {d['generalization_step']}")
        for g in res["grokking"]:
            mem = "-" if g["memorization_step"] is None else f"step {g['memorization_step']}"
            gen = "never" if g["generalization_step"] is None else f"step {g['generalization_step']}"
            print(
                f"  p {g['p']}, weight decay {g['weight_decay']:g}: memorized at {mem}, generalized at {gen}, "
                f"ratio {_f(g['ratio'], '.2f')}; final train "
                f"{_pct(g['final_train_acc'])}, test {_pct(g['final_test_acc'])}"
                + ("  (grokked)" if g["grokked"] else "")
            )
    for b in res["bad_minima"]:
        rs, pr = b["random_start"], b["pretrained_on_random_labels"]
        print(f"Bad global minima (Liu et al. 2020), {b['random_label_steps']} steps on random labels first:")
        print(
            f"  random start: train {_pct(rs['final_train_acc'])}, test {_pct(rs['final_test_acc'])}; "
            f"pretrained: train {_pct(pr['final_train_acc'])}, test {_pct(pr['final_test_acc'])}; "
            f"test gap {_f(b['test_gap'], '+.3f')}" + ("" if b["both_fit"] else "  (not both fit the training set)")
        )
    gaps = [b["test_gap"] for b in res["bad_minima"] if b["test_gap"] is not None]
    if len(gaps) > 1:
        se = (sum((g - sum(gaps) / len(gaps)) ** 2 for g in gaps) / (len(gaps) - 1) / len(gaps)) ** 0.5
        print(f"  mean test gap over {len(gaps)} pairs: {sum(gaps) / len(gaps):+.3f} (standard error {se:.3f})")
    probes = res.get("probes") or {}
    for r in probes.get("runs", []):
        layers = {x["layer"]: x for x in r.get("layers", [])}
        best = layers.get(r.get("best_layer"), {})
        per_layer = ", ".join(
            f"{x['selectivity']:+.3f}" for x in r.get("layers", []) if x.get("selectivity") is not None
        )
        print(
            f"Probe {r.get('latent')} on {r.get('kind')} run {r.get('id')}: selectivity by layer {per_layer}; best at "
            f"layer {r.get('best_layer')} (accuracy {_f(best.get('acc'))}, control {_f(best.get('control'))}, "
            f"ideal {_f(r.get('ideal'))})"
        )


def cmd_generalization(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..analyses.generalization import analyze

    if not (Path(args.store) / "runs").is_dir():
        raise StoreError(f"{args.store}: not a store (no runs/ directory)")
    res = analyze(args.store)
    if args.json:
        print_json(res)
    else:
        _print(res)
    return 0
