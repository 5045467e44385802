"""Generalization phenomena found in a store (issue 15): what ``scalescope generalization`` prints.

Each phenomenon is recognised from the runs' configs (no tags needed), so a researcher's own sweeps are
summarised like the built-in experiments:

* **random labels** (Zhang et al. 2017): MLP runs on a classification data set that differ only in
  ``data.label_noise`` / ``data.inputs``: steps to fit the training set (first evaluation at which every training
  example is classified as its training label, ``trainset_acc = 1``), their ratio to the clean run's, final test
  accuracy beside chance; the empirical Rademacher complexity these fits imply and the bound it gives, beside the
  observed gap; the spectral-norm bound's terms when the ``spectral_bound`` instrument ran;
* **double descent**: random-features runs that differ only in the number of features N (model-wise) or of
  training examples n (sample-wise): test error against N/n, the peak's location and its ratio to the error at
  the far edge; MLP runs that differ only in width (model-wise, Nakkiran et al. 2019) and the test error of the
  widest over training (epoch-wise);
* **grokking** (Power et al. 2022): modular-arithmetic runs: memorization step (first evaluation with
  ``trainset_acc >= 0.99``), generalization step (first with ``val_acc >= 0.95``), their ratio;
* **bad global minima** (Liu et al. 2020): a run pretrained on random labels (``data.random_label_steps > 0``) beside
  the same run from a random start: final train and test accuracy of both and the test gap;
* **probes** (Hewitt and Liang 2019): selectivity per layer (:mod:`scalescope.analyses.probes`).

Every threshold is a module constant and is repeated in the output's ``definitions``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import config as C
from ..jsonable import finite_float
from ..store import Tables, load, source_meta

__all__ = ["DEFINITIONS", "analyze"]

FIT_ACC = 1.0
MEMORIZED_ACC = 0.99
GENERALIZED_ACC = 0.95
DELTA = 0.05  # confidence of the bounds: they hold with probability 1 - DELTA
# Double-descent targets of issue 15 (random features on digits).
DD_PEAK_RANGE = (0.8, 1.3)
DD_MIN_RATIO = 3.0
# A rise of the test error counts (a peak, a second descent) when it exceeds this many binomial standard errors
# of the validation set: sqrt(e(1-e)/n_val).
SIGNIFICANT_SE = 2.0

DEFINITIONS = {
    "steps_to_fit": f"first evaluation step with trainset_acc >= {FIT_ACC} (every training label fitted)",
    "memorization_step": f"first evaluation step with trainset_acc >= {MEMORIZED_ACC}",
    "generalization_step": f"first evaluation step with val_acc >= {GENERALIZED_ACC}",
    "test_error": "1 - val_acc on the whole held-out set",
    "peak_ratio": "largest test error of the sweep / test error at the sweep's largest N (or n)",
    "interpolation_threshold": "random features: N/n (or n/N) of the largest test error; MLP: the fewest "
    "parameters of a run that fits its training set (trainset_acc = 1)",
    "double_descent_target": f"a significant interior peak at N/n in {list(DD_PEAK_RANGE)} and peak_ratio > "
    f"{DD_MIN_RATIO}",
    "significant": f"a change of the test error larger than {SIGNIFICANT_SE} binomial standard errors "
    "sqrt(e(1-e)/n_val)",
    "rademacher": "empirical Rademacher complexity of the 0-1 loss class, estimated from the random-label fit: "
    "a class that fits a fraction f = (acc - 1/K)/(1 - 1/K) of random labels above chance realises about f of "
    "random loss patterns, so R ~ f/2 (its maximum, 1/2, when every random labelling is fitted; Zhang et al. "
    "2017 sec. 2.2); bound: test error <= train error + 2R + 3 sqrt(ln(2/delta)/(2n)) (Mohri et al. 2018, "
    f"Thm 3.3), delta = {DELTA}",
    "bad_minimum_gap": "test accuracy from a random start minus test accuracy after random-label pretraining, "
    "both at the end",
}

# Config columns that never define a group (how a run executes, and its outcome).
_EXEC = {f"train.{k}" for k in C.EXECUTION_ONLY} | {"train.eval_every", "train.eval_batches", "train.checkpoint_every"}


def _config_cols(runs: pd.DataFrame) -> list[str]:
    return [c for c in runs.columns if (c.startswith(("data.", "model.", "train.")) or c == "seed") and c not in _EXEC]


def _groups(runs: pd.DataFrame, vary: list[str]) -> list[pd.DataFrame]:
    """The runs split by every config column except ``vary`` (and the instruments)."""
    cols = [c for c in _config_cols(runs) if c not in vary]
    if runs.empty:
        return []
    keys = runs[cols].apply(lambda col: col.map(repr)).agg("|".join, axis=1)
    return [g for _, g in runs.groupby(keys, sort=True)]


def _curve(metrics: pd.DataFrame, run_id: str, metric: str) -> pd.Series:
    m = metrics[(metrics["id"] == run_id) & (metrics["metric"] == metric)]
    return m.groupby("step")["value"].last().sort_index()


def _first_step(curve: pd.Series, at_least: float) -> int | None:
    hit = curve[curve >= at_least - 1e-12]
    return None if hit.empty else int(hit.index[0])


def _final(curve: pd.Series) -> float | None:
    return None if curve.empty else float(curve.iloc[-1])


def _source_int(store: Path, run_id: str, key: str) -> int | None:
    """An integer fact of the run's source from its meta.json (``n_train``, ``n_val``)."""
    v = finite_float(source_meta(store, run_id).get(key))
    return None if v is None else int(v)


def _se(err: float, n: int | None) -> float:
    return math.sqrt(max(err * (1 - err), 1e-12) / n) if n else float("nan")


def _classes(row: pd.Series) -> int:
    for c in ("data.n_classes",):
        v = row.get(c)
        if isinstance(v, (int, float)) and not pd.isna(v) and row.get("data.kind") == "gaussian_mixture":
            return int(v)
    return 10  # digits


def _random_labels(store: Path, t: Tables) -> list[dict[str, Any]]:
    runs = t.runs[(t.runs["model.arch"] == "mlp") & (t.runs["data.random_label_steps"].fillna(0) == 0)]
    out = []
    for g in _groups(runs, ["data.label_noise", "data.inputs"]):
        if len(g) < 2:
            continue
        rows = []
        for _, r in g.sort_values(["data.inputs", "data.label_noise"]).iterrows():
            tr, va = _curve(t.metrics, r["id"], "trainset_acc"), _curve(t.metrics, r["id"], "val_acc")
            if tr.empty:
                continue
            k, n = _classes(r), int(r["train.batch_size"]) if r.get("train.full_batch") else None
            n_train = _source_int(store, r["id"], "n_train") or n or 0
            acc_tr, acc_va = _final(tr), _final(va)
            row: dict[str, Any] = {
                "run": r["id"],
                "label_noise": float(r["data.label_noise"]),
                "inputs": r["data.inputs"],
                "steps_to_fit": _first_step(tr, FIT_ACC),
                "final_train_acc": acc_tr,
                "final_test_acc": acc_va,
                "chance_acc": 1.0 / k,
                "gap": None if acc_tr is None or acc_va is None else acc_tr - acc_va,
            }
            spectral = {
                m.split("/", 1)[1]: _final(_curve(t.metrics, r["id"], m))
                for m in t.metrics.loc[t.metrics["id"] == r["id"], "metric"].unique()
                if str(m).startswith("spectral_bound/")
            }
            if spectral:
                row["spectral_bound"] = spectral
            if acc_tr is not None and n_train:
                f = max(0.0, (acc_tr - 1.0 / k) / (1.0 - 1.0 / k))
                row["fit_fraction_above_chance"] = f
                row["n_train"] = n_train
            rows.append(row)
        clean = next((x for x in rows if x["label_noise"] == 0 and x["inputs"] == "clean"), None)
        base = clean["steps_to_fit"] if clean else None
        for x in rows:
            s = x["steps_to_fit"]
            x["fit_ratio_to_clean"] = s / base if s is not None and base else None
        # The Rademacher estimate comes from the fully random labels (p = 1, clean inputs): what the class can fit.
        rand = next((x for x in rows if x["label_noise"] == 1.0 and x["inputs"] == "clean"), None)
        rad, rad_note = None, None
        if rand and "fit_fraction_above_chance" in rand:
            rad = rand["fit_fraction_above_chance"] / 2.0
            if rand["steps_to_fit"] is None:
                rad_note = (
                    "the random-label run did not fit its training set: this estimate is a lower bound on the "
                    "class's Rademacher complexity, and the bounds built on it are not bounds"
                )
            conf = 3.0 * math.sqrt(math.log(2.0 / DELTA) / (2.0 * rand["n_train"]))
            for x in rows:
                if x["final_train_acc"] is not None:
                    x["rademacher_bound_test_error"] = (1.0 - x["final_train_acc"]) + 2.0 * rad + conf
                    x["observed_test_error"] = 1.0 - (x["final_test_acc"] or 0.0)
        out.append({"runs": rows, "rademacher": rad, "rademacher_note": rad_note, "n_runs": len(rows)})
    return out


def _descent_curve(xs: np.ndarray, errs: np.ndarray, ses: np.ndarray) -> dict[str, Any]:
    """Peak, its location and ratio to the far edge of an error curve over a sorted axis. The peak is the largest
    error after the curve's first local minimum (an under-parameterized left edge is not a peak; a flat step is
    not a minimum); it is ``interior_peak`` when it stands above both neighbours, and ``significant`` when it also
    rises by more than :data:`SIGNIFICANT_SE` standard errors above the smallest error before it and after it. A
    curve that only falls has no interior peak."""
    i0 = next((i for i in range(len(errs) - 1) if errs[i] < errs[i + 1]), len(errs) - 1)
    i = i0 + int(np.argmax(errs[i0:]))
    edge = float(errs[-1])
    interior = bool(0 < i < len(xs) - 1 and errs[i] > errs[i - 1] and errs[i] > errs[i + 1])
    return {
        "peak_at": float(xs[i]),
        "peak_error": float(errs[i]),
        "edge_at": float(xs[-1]),
        "edge_error": edge,
        "peak_ratio": float(errs[i] / edge) if edge > 0 else math.inf,
        "interior_peak": interior,
        "significant": bool(
            interior
            and errs[i] - float(errs[: i + 1].min()) > SIGNIFICANT_SE * ses[i]
            and errs[i] - float(errs[i + 1 :].min()) > SIGNIFICANT_SE * ses[i]
        ),
    }


def _mean_over_seeds(pts: list[tuple[Any, ...]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """(x, mean error, standard error of that mean, seeds per x) from (x, error, one run's binomial s.e., ...)
    rows: replicate seeds at one x are averaged (their s.e. shrinks by √seeds)."""
    by_x: dict[float, list[tuple[float, float]]] = {}
    for p in pts:
        by_x.setdefault(float(p[0]), []).append((float(p[1]), float(p[2])))
    xs = np.array(sorted(by_x))
    errs = np.array([np.mean([e for e, _ in by_x[x]]) for x in xs])
    ses = np.array([np.sqrt(np.mean([s**2 for _, s in by_x[x]]) / len(by_x[x])) for x in xs])
    return xs, errs, ses, [len(by_x[x]) for x in xs]


def _double_descent(store: Path, t: Tables) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    rf = t.runs[t.runs["model.arch"] == "random_features"]
    for kind, vary in (
        ("model-wise (random features)", "model.d_model"),
        ("sample-wise (random features)", "data.n_train"),
    ):
        for g in _groups(rf, [vary, "train.batch_size", "model.input_dim", "seed"]):
            if g[vary].nunique() < 4:
                continue
            pts: list[tuple[Any, ...]] = []
            for _, r in g.iterrows():
                acc = _final(_curve(t.metrics, r["id"], "val_acc"))
                loss = _final(_curve(t.metrics, r["id"], "val_loss"))
                n = _source_int(store, r["id"], "n_train") or int(r["train.batch_size"])
                big_n = int(r["model.d_model"])
                if acc is None:
                    continue
                x = big_n / n if vary == "model.d_model" else n / big_n
                err = 1.0 - acc
                pts.append((x, err, _se(err, _source_int(store, r["id"], "n_val")), loss, big_n, n))
            if len(pts) < 4:
                continue
            pts.sort(key=lambda p: p[0])
            xs, errs, ses, seeds = _mean_over_seeds(pts)
            summary = _descent_curve(xs, errs, ses)
            r0 = g.iloc[0]
            entry = {
                "kind": kind,
                "axis": "N/n" if vary == "model.d_model" else "n/N",
                "label_noise": float(r0["data.label_noise"]),
                "ridge": float(r0["model.ridge"]),
                "points": [
                    {"x": p[0], "test_error": p[1], "se": p[2], "test_mse": p[3], "N": p[4], "n": p[5]} for p in pts
                ],
                "curve": {"x": xs.tolist(), "test_error": errs.tolist(), "se": ses.tolist(), "seeds": seeds},
                **summary,
            }
            if vary == "model.d_model" and entry["ridge"] == 0 and entry["label_noise"] == 0:
                lo, hi = DD_PEAK_RANGE
                entry["target_met"] = bool(
                    summary["significant"] and lo <= summary["peak_at"] <= hi and summary["peak_ratio"] > DD_MIN_RATIO
                )
            out.append(entry)
    _compare_to_clean(out)
    mlp = t.runs[(t.runs["model.arch"] == "mlp") & (t.runs["data.random_label_steps"].fillna(0) == 0)]
    for g in _groups(mlp, ["model.d_model", "seed"]):
        if g["model.d_model"].nunique() < 4:
            continue
        pts = []
        for _, r in g.iterrows():
            acc = _final(_curve(t.metrics, r["id"], "val_acc"))
            if acc is not None:
                err = 1.0 - acc
                pts.append(
                    (
                        int(r["params_total"]),
                        err,
                        _se(err, _source_int(store, r["id"], "n_val")),
                        int(r["model.d_model"]),
                        r["id"],
                    )
                )
        if len(pts) < 4:
            continue
        pts.sort(key=lambda p: p[0])
        xs, errs, ses, seeds = _mean_over_seeds(pts)
        r0 = g.iloc[0]
        entry = {
            "kind": "model-wise (MLP)",
            "axis": "parameters",
            "label_noise": float(r0["data.label_noise"]),
            "points": [{"x": p[0], "test_error": p[1], "se": p[2], "width": p[3], "run": p[4]} for p in pts],
            "curve": {"x": xs.tolist(), "test_error": errs.tolist(), "se": ses.tolist(), "seeds": seeds},
            **_descent_curve(xs, errs, ses),
        }
        # Nakkiran et al.'s interpolation threshold: the smallest model that fits its (noisy) training set.
        fits = sorted(
            int(r["params_total"])
            for _, r in g.iterrows()
            if (_final(_curve(t.metrics, r["id"], "trainset_acc")) or 0) >= FIT_ACC
        )
        entry["interpolation_threshold"] = fits[0] if fits else None
        # Epoch-wise: the widest model's test error over its evaluations.
        widest = str(pts[-1][4])
        curve = 1.0 - _curve(t.metrics, widest, "val_acc")
        entry["epoch_wise"] = _epoch_wise(curve, _source_int(store, widest, "n_val"))
        out.append(entry)
    return out


def _compare_to_clean(entries: list[dict[str, Any]]) -> None:
    """Label noise should raise the peak and a ridge penalty flatten it: each noisy or ridge curve is compared
    with the clean minimum-norm curve of the same kind and training-set size (``verdict``)."""
    clean = {(e["kind"], e["points"][0].get("n")): e for e in entries if e.get("ridge") == 0 and e["label_noise"] == 0}
    for e in entries:
        base = clean.get((e["kind"], e["points"][0].get("n")))
        if base is None or e is base:
            continue
        if e.get("ridge", 0) > 0:
            e["verdict"] = "flattened (no significant interior peak)" if not e["significant"] else "still peaks"
        elif e["label_noise"] > 0:
            higher = e["peak_error"] > base["peak_error"]
            e["verdict"] = f"peak {'higher' if higher else 'not higher'} than without label noise " + (
                f"({e['peak_error']:.1%} vs {base['peak_error']:.1%})"
            )


def _epoch_wise(err: pd.Series, n_val: int | None) -> dict[str, Any]:
    """Falls, rises, falls again? The first minimum, the maximum after it and the minimum after that."""
    if len(err) < 4:
        return {"steps": [], "test_error": []}
    steps, e = err.index.to_numpy(), err.to_numpy()
    i_min = int(np.argmin(e[: max(2, len(e) // 2)]))  # the first descent's bottom, in the first half
    j = i_min + int(np.argmax(e[i_min:]))
    k = j + int(np.argmin(e[j:]))
    se = _se(float(e[j]), n_val)
    return {
        "steps": steps.tolist(),
        "test_error": e.tolist(),
        "first_minimum": {"step": int(steps[i_min]), "test_error": float(e[i_min])},
        "peak": {"step": int(steps[j]), "test_error": float(e[j])},
        "after_peak_minimum": {"step": int(steps[k]), "test_error": float(e[k])},
        "rise_significant": bool(e[j] - e[i_min] > SIGNIFICANT_SE * se),
        "second_descent_significant": bool(e[j] - e[k] > SIGNIFICANT_SE * se),
    }


def _grokking(t: Tables) -> list[dict[str, Any]]:
    out = []
    for _, r in t.runs[t.runs["data.kind"] == "modular"].sort_values("train.weight_decay").iterrows():
        tr, va = _curve(t.metrics, r["id"], "trainset_acc"), _curve(t.metrics, r["id"], "val_acc")
        if tr.empty:
            continue
        mem, gen = _first_step(tr, MEMORIZED_ACC), _first_step(va, GENERALIZED_ACC)
        out.append(
            {
                "run": r["id"],
                "p": int(r["data.p"]) if "data.p" in r and not pd.isna(r["data.p"]) else None,
                "train_fraction": r.get("data.train_fraction"),
                "weight_decay": float(r["train.weight_decay"]),
                "steps": int(r["step"]),
                "memorization_step": mem,
                "generalization_step": gen,
                "ratio": gen / mem if gen is not None and mem else None,
                "final_train_acc": _final(tr),
                "final_test_acc": _final(va),
                "grokked": bool(gen is not None and mem is not None and gen > mem),
            }
        )
    return out


def _bad_minima(t: Tables) -> list[dict[str, Any]]:
    runs = t.runs[t.runs["model.arch"] == "mlp"]
    out = []
    for g in _groups(runs, ["data.random_label_steps"]):
        start = g[g["data.random_label_steps"].fillna(0) == 0]
        pre = g[g["data.random_label_steps"].fillna(0) > 0]
        if start.empty or pre.empty:
            continue
        s = start.iloc[0]
        for _, r in pre.iterrows():
            res = {}
            for name, row in (("random_start", s), ("pretrained_on_random_labels", r)):
                tr, va = _curve(t.metrics, row["id"], "trainset_acc"), _curve(t.metrics, row["id"], "val_acc")
                res[name] = {"run": row["id"], "final_train_acc": _final(tr), "final_test_acc": _final(va)}
            a, b = res["random_start"]["final_test_acc"], res["pretrained_on_random_labels"]["final_test_acc"]
            out.append(
                {
                    "random_label_steps": int(r["data.random_label_steps"]),
                    "steps": int(r["step"]),
                    "n_train": r.get("data.n_train"),
                    **res,
                    "test_gap": None if a is None or b is None else a - b,
                    "both_fit": bool(
                        (res["random_start"]["final_train_acc"] or 0) >= FIT_ACC
                        and (res["pretrained_on_random_labels"]["final_train_acc"] or 0) >= FIT_ACC
                    ),
                }
            )
    return out


def analyze(store: str | Path, *, tables: Tables | None = None) -> dict[str, Any]:
    """Every phenomenon the finished runs of ``store`` show (see the module doc); JSON-able."""
    path = Path(store)
    t = tables if tables is not None else load(path)
    runs = t.runs
    if runs.empty or "status" not in runs:
        done = runs
    else:
        done = runs[runs["status"] == "finished"]
    if done.empty:
        empty: dict[str, Any] = {k: [] for k in ("random_labels", "double_descent", "grokking", "bad_minima")}
        return {"store": str(path), "definitions": DEFINITIONS, **empty, "probes": {}, "found": []}
    for col in ("model.arch", "data.kind", "data.random_label_steps", "data.label_noise", "data.inputs", "model.ridge"):
        if col not in done:
            done = done.assign(**{col: None})
    done = done.assign(**{"model.arch": done["model.arch"].fillna("gpt")})
    ft = Tables(runs=done, metrics=t.metrics)
    from .probes import analyze as probe_analysis  # the probes' own module (its runs are transformers)

    out: dict[str, Any] = {
        "store": str(path),
        "definitions": DEFINITIONS,
        "random_labels": _random_labels(path, ft),
        "double_descent": _double_descent(path, ft),
        "grokking": _grokking(ft),
        "bad_minima": _bad_minima(ft),
        "probes": probe_analysis(path, tables=Tables(runs=done, metrics=t.metrics)),
    }
    out["found"] = [k for k in ("random_labels", "double_descent", "grokking", "bad_minima") if out[k]] + (
        ["probes"] if out["probes"].get("runs") else []
    )
    return out
