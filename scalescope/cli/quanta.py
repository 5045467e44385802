"""``scalescope quanta --store DIR [--json] [--forecast]``: the quantization model of neural scaling checked
on a store of quanta-source runs (Michaud et al. 2023): mean-loss exponents beside the theory's, the order
skills are learned in, skills learned against N and D, abrupt skills under a smooth mean loss, and a
forecast of the skills a larger model will have learned (:mod:`scalescope.analyses.quanta`)."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError
from .common import add_json, add_store, as_flag, check_positive, print_json

__all__ = ["add_parser"]

# The analysis' arguments -> the flags that set them.
FLAGS = {
    "threshold": "--threshold",
    "transition_skills": "--transition-skills",
    "up_to": "--up-to",
    "at": "--at",
}


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "quanta",
        help="the quantization model on quanta-source runs: exponents beside the theory's, order of learning, "
        "skills learned against N and D, abrupt skills under a smooth mean loss (Michaud et al. 2023)",
    )
    add_store(p, help="store directory with runs of data.kind = quanta (e.g. experiments quanta_n, quanta_d)")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.9,
        help="a skill is learned at this probe accuracy or more, in (0.5, 1] (chance is 0.5; default 0.9)",
    )
    p.add_argument(
        "--transition-skills",
        type=int,
        default=12,
        metavar="K",
        help="skills whose jumps are tested per axis (N, D, steps), spread over the ranks; 0 skips the test "
        "(default 12; about a second each)",
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of fits and rho (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument(
        "--forecast",
        action="store_true",
        help="record in the forecast ledger which skills a larger model will have learned (fit on the N sweep up "
        "to --up-to, predict at --at), and score the store's skills forecasts whose run now exists",
    )
    p.add_argument("--up-to", type=float, default=None, metavar="N", help="fit on sizes up to N (default: all but one)")
    p.add_argument("--at", type=float, default=None, metavar="N", help="forecast at N (default: the next size)")
    add_json(p)
    p.set_defaults(fn=cmd_quanta)


def _f(v: Any, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec)


def _ci(ci: Any, spec: str = ".3g") -> str:
    return f"[{_f(ci[0], spec)}, {_f(ci[1], spec)}]" if ci else "[-]"


def _pct(v: Any) -> str:
    return "-" if v is None else f"{v:+.1%}"


def _print_sweep(axis: str, sw: dict[str, Any]) -> None:
    fixed = ", ".join(f"{k} {v:.4g}" for k, v in sw["fixed"].items())
    print(f"  {axis} sweep: {sw['n_runs']} runs at {sw['n_scales']} scales, {fixed} fixed")
    f = sw["loss_fit"]
    if "error" in f:
        print(f"    L({axis}) not fitted: {f['error']}")
    else:
        print(
            f"    L({axis}) = E + A·{axis}^-a ({sw['loss_metric']}): a = {f['alpha']:.4g} {_ci(f['alpha_ci'])} "
            f"(theory {_f(f['theory_alpha'], '.3g')}, {_pct(f['alpha_rel_dev'])}); "
            f"E = {f['E']:.4g} {_ci(f['E_ci'], '.4g')} "
            f"(entropy rate {_f(f['entropy_rate'])}, {_pct(f['E_rel_dev'])}); R² log {f['r2_log']:.4f}; "
            f"verdict {f['verdict']}"
        )
        fe = f.get("fixed_E")
        if fe and "error" not in fe:
            print(
                f"    with E = entropy rate: a = {fe['alpha']:.4g} {_ci(fe['alpha_ci'])} ({_pct(fe['alpha_rel_dev'])})"
            )
    s = sw.get("skills_fit")
    if s and "error" in s:
        print(f"    skills learned vs {axis}: not fitted: {s['error']}")
    elif s:
        print(
            f"    skills learned ∝ {axis}^b: b = {s['exponent']:.3g} {_ci(s['exponent_ci'])} (theory "
            f"{_f(s['theory_exponent'], '.3g')}, {_pct(s['exponent_rel_dev'])}); verdict {s['verdict']}; "
            f"left out: {s['excluded_none_learned']} runs with none, {s['excluded_all_learned']} with all"
        )
    o = sw["order"]
    if "error" in o:
        print(f"    order: {o['error']}")
    else:
        print(
            f"    order over {axis}: Spearman rho {_f(o['rho'], '.3f')} {_ci(o['ci'], '.3f')} between frequency "
            f"rank and the smallest {axis} that has the skill "
            f"({o['n_learned_somewhere']} of {o['n_skills']} skills learned)"
        )


def _print_seed(where: str, sq: dict[str, Any] | None) -> None:
    if not sq:
        return
    label = f"over {where}" + (f" (run {sq['run']})" if sq.get("run") else "")
    if "error" in sq and not sq.get("n_tested"):
        print(f"  seed question {label}: {sq['error']}")
        return
    ml = sq.get("mean_loss") or {}
    smooth = {True: "smooth", False: "abrupt", None: "not tested"}[sq["mean_loss_smooth"]]
    fr = sq["fraction_abrupt"]
    v = sq["verdicts"]
    print(
        f"  seed question {label}: {sq['n_abrupt']}/{sq['n_tested']} skills abrupt "
        f"({_f(fr, '.0%')}, {_ci(sq['fraction_ci'], '.0%')}); mean loss {smooth}"
        + (f" ({ml['error']})" if "error" in ml else "")
        + f"; accuracy vs skill loss: {v['real']} real, {v['metric artifact']} metric artifact, {v['no jump']} no jump"
    )


def _print_group(g: dict[str, Any]) -> None:
    name = ", ".join(f"{k}={v}" for k, v in g["group"].items()) or "all quanta runs"
    print(
        f"{name}: {g['n_runs']} runs; alpha {_f(g['alpha'], '.3g')} ({g['alpha_from'] or 'unknown'}), "
        f"{_f(g['n_skills'])} skills, entropy rate {_f(g['entropy_rate'])} nats"
    )
    if g["theory"]:
        t = g["theory"]
        print(
            f"  theory (Michaud et al. 2023 sec. 2): L-E ∝ N^-{t['alpha_N']:.3g}, D^-{t['alpha_D']:.3g}; "
            f"skills ∝ N^{t['skills_N']:.3g}, D^{t['skills_D']:.3g}"
        )
    for axis, sw in g["sweeps"].items():
        _print_sweep(axis, sw)
    st = g["order_steps"]
    if st["n_runs_with_rho"]:
        print(
            f"  order over steps: median Spearman rho {st['median_rho']:.3f} (min {st['min_rho']:.3f}) over "
            f"{st['n_runs_with_rho']} runs (rank vs the first evaluation step at which each skill is learned)"
        )
    for where, sq in g["seed_question"].items():
        _print_seed(where, sq)
    met = [c for c in g["checks"] if c["met"]]
    print(f"  targets met: {len(met)} of {len(g['checks'])}")
    for c in g["checks"]:
        mark = {True: "met", False: "NOT met", None: "-"}[c["met"]]
        note = f"; {c['note']}" if c.get("note") else ""
        print(f"    {mark:7} {c['check']}: {_f(c['value'])} (target {c['target']}{note})")
    for f in g["flags"]:
        print(f"  flag: {f}")


def _print_forecasts(recs: list[dict[str, Any]]) -> None:
    for r in recs:
        s = r.get("score") or {}
        lo, hi = r["interval"]
        line = (
            f"forecast {r['id']}: at N={r['target']['N']:.4g}, {r['predicted']:.1f} skills learned "
            f"[{_f(lo, '.1f')}, {_f(hi, '.1f')}] (the {r['predicted_top']} most frequent; "
            f"fitted on N <= {r['fit_max_x']:.4g})"
        )
        if s:
            line += f"; observed {_f(s['observed'], '.0f')}: {s['status']}"
            if s.get("skills"):
                line += f", precision {_f(s['skills']['precision'], '.2f')}, recall {_f(s['skills']['recall'], '.2f')}"
        else:
            line += "; pending (no finished run of that size yet)"
        print(line)


def cmd_quanta(args: argparse.Namespace) -> int:
    from ..analyses.quanta import analyze, record_forecast, score_forecasts
    from ..store import load

    check_positive(args, "bootstrap", allow_none=False)
    for name in ("up_to", "at"):
        if getattr(args, name) is not None and not args.forecast:
            raise ConfigError("only applies with --forecast", field=FLAGS[name])
    if not 0.5 < args.threshold <= 1:  # at or below chance every skill a model guesses at counts as learned
        raise ConfigError(f"expected a number in (0.5, 1], got {args.threshold}", field="--threshold")
    try:
        tables = load(args.store)
        recorded = []
        if args.forecast:
            recorded = record_forecast(
                args.store,
                threshold=args.threshold,
                up_to=args.up_to,
                at=args.at,
                bootstrap=args.bootstrap,
                seed=args.seed,
                tables=tables,
            )
            score_forecasts(args.store, tables.runs)
        res = analyze(
            args.store,
            threshold=args.threshold,
            bootstrap=args.bootstrap,
            seed=args.seed,
            transition_skills=args.transition_skills,
            tables=tables,
        )
    except ConfigError as err:
        raise as_flag(err, FLAGS) from None
    if args.json:
        print_json(res)
        return 0
    print(f"{res['n_quanta_runs']} finished quanta runs; a skill is learned at probe accuracy >= {res['threshold']:g}")
    for f in res.get("flags", []):
        print(f"flag: {f}")
    for g in res["groups"]:
        _print_group(g)
    for rec, created in recorded:
        print(f"forecast {rec['id']} {'recorded' if created else 'was already recorded'}")
    _print_forecasts(res["forecasts"])
    return 0
