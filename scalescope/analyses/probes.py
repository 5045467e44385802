"""Linear probes with control tasks, read back from a store (issue 15, "Linear probes with control tasks").

Every run that logged :mod:`scalescope.instruments.linear_probe` metrics gets one entry: its source and latent,
the final held-out accuracy of the latent probe and of the control probe and their difference (selectivity,
Hewitt & Liang 2019 eq. 1) per layer, the layer of largest final selectivity, and selectivity, accuracy and
control accuracy at every evaluated step (the instrument runs on the evaluation schedule). The definitions
are stated in the output (``definitions``). The report's "Linear probes" panel draws it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from .. import store as _store
from ..jsonable import finite_float, jsonable

__all__ = ["DEFINITIONS", "PREFIX", "analyze", "probe_runs"]

PREFIX = "linear_probe/"
_LAYER = re.compile(r"^linear_probe/(acc|control|selectivity)/layer(\d+)$")

DEFINITIONS = {
    "residual stream": "layer 0: the embedding output (the first block's input); layer i: the output of block i, "
    "at every input position",
    "probe": "multinomial logistic regression on features standardized with the fit set's moments, L2 penalty "
    "l2/2 ||W||^2, fitted by L-BFGS on the fit sequences (probe stream); accuracy on as many held-out sequences",
    "acc": "held-out accuracy of the probe trained on the latent (hmm_state: the HMM's hidden state; task: the "
    "sequence's pool task; context: the last `order` tokens as one integer)",
    "control": "held-out accuracy of the same probe (same positions, same capacity) trained on the control task: "
    "each input type (token id) gets one label drawn from the latent's empirical label distribution, fixed per "
    "run (Hewitt & Liang 2019 sec. 2)",
    "selectivity": "acc - control (Hewitt & Liang 2019 eq. 1): what the representation gives beyond what the probe "
    "can read from the input type alone; ~0 when the latent is a function of the input type (markov order 1)",
    "majority": "held-out accuracy of always answering the fit set's most frequent latent label",
    "ideal": "held-out accuracy of the Bayes-optimal guess of the latent from the tokens up to the position (HMM "
    "forward filter; pool posterior for tasks; 1 for a Markov context): no probe of a causal model beats it",
    "best_layer": "the layer with the largest final selectivity (ties: the lowest)",
    "change": "final selectivity minus selectivity at the first evaluated step, per layer",
}


def _instrument_options(row: pd.Series) -> dict[str, Any]:
    """The run's ``[instruments.linear_probe]`` options (the runs table holds the instruments table as JSON)."""
    raw = row.get("instruments")
    try:
        table = json.loads(raw) if isinstance(raw, str) else (raw if isinstance(raw, dict) else {})
    except json.JSONDecodeError:
        table = {}
    opts = table.get("linear_probe") if isinstance(table, dict) else None
    return opts if isinstance(opts, dict) else {}


def probe_runs(metrics: pd.DataFrame) -> list[str]:
    """Ids of the runs with linear_probe metrics, sorted."""
    if metrics.empty:
        return []
    return sorted(metrics.loc[metrics["metric"].astype(str).str.startswith(PREFIX), "id"].astype(str).unique())


def _run_entry(rid: str, row: pd.Series | None, g: pd.DataFrame) -> dict[str, Any]:
    wide = g.pivot_table(index="step", columns="metric", values="value", aggfunc="last").sort_index()
    layers = sorted({int(m.group(2)) for c in wide.columns if (m := _LAYER.match(str(c)))})
    # The last step at which every layer's three values were stored: a half-written final row is not final.
    cols = [f"{PREFIX}{k}/layer{i}" for i in layers for k in ("acc", "control", "selectivity")]
    complete = wide.dropna(subset=[c for c in cols if c in wide.columns], how="any")
    opts = _instrument_options(row) if row is not None else {}

    def col(name: str) -> list[float | None]:
        return [finite_float(v) for v in complete[name]] if name in complete else [None] * len(complete)

    def last(name: str) -> float | None:
        return col(name)[-1] if len(complete) else None

    per_layer: list[dict[str, Any]] = []
    for i in layers:
        sel = col(f"{PREFIX}selectivity/layer{i}")
        first = sel[0] if sel else None
        per_layer.append(
            {
                "layer": i,
                "acc": last(f"{PREFIX}acc/layer{i}"),
                "control": last(f"{PREFIX}control/layer{i}"),
                "selectivity": last(f"{PREFIX}selectivity/layer{i}"),
                "change": None if first is None or sel[-1] is None else sel[-1] - first,
            }
        )
    finals = [(p["selectivity"], p["layer"]) for p in per_layer if p["selectivity"] is not None]
    best = min(finals, key=lambda f: (-f[0], f[1]))[1] if finals else None  # ties: the lowest layer

    def field(name: str) -> Any:
        return None if row is None else row.get(name)

    return {
        "id": rid,
        "status": field("status"),
        "kind": field("data.kind"),
        "order": finite_float(field("data.order")) if field("data.kind") == "markov" else None,
        "vocab_size": finite_float(field("data.vocab_size")),
        "n_layer": finite_float(field("model.n_layer")),
        "d_model": finite_float(field("model.d_model")),
        "latent": opts.get("latent"),
        "l2": opts.get("l2"),
        "final_val_loss": finite_float(field("final_val_loss")),
        "entropy_rate": finite_float(field("entropy_rate")),
        "final_step": int(complete.index[-1]) if len(complete) else None,
        "layers": per_layer,
        "best_layer": best,
        "majority": last(f"{PREFIX}majority"),
        "control_majority": last(f"{PREFIX}control_majority"),
        "ideal": last(f"{PREFIX}ideal"),
        "over_training": {
            "steps": [int(s) for s in complete.index],
            **{
                key: {str(i): col(f"{PREFIX}{key}/layer{i}") for i in layers}
                for key in ("selectivity", "acc", "control")
            },
        },
    }


def analyze(store: str | Path, *, tables: Any = None) -> dict[str, Any]:
    """Per run with linear_probe metrics: latent, source, final acc / control / selectivity per layer, the
    layer of largest selectivity, and all three over training steps; ``definitions`` says what each means.
    ``tables``: the store's :func:`scalescope.store.load` result when the caller has it already."""
    t = tables if tables is not None else _store.load(store)
    runs = t.runs.set_index("id") if len(t.runs) else pd.DataFrame()
    metrics = t.metrics
    ids = probe_runs(metrics)
    probe = metrics[metrics["metric"].astype(str).str.startswith(PREFIX)] if ids else metrics
    entries = [
        _run_entry(rid, runs.loc[rid] if rid in runs.index else None, g)
        for rid, g in probe.groupby("id", sort=True)
        if str(rid) in ids
    ]
    return jsonable(
        {
            "store": str(store),
            "definitions": DEFINITIONS,
            "reference": "Hewitt & Liang 2019, Designing and Interpreting Probes with Control Tasks (EMNLP)",
            "n_runs": len(entries),
            "runs": entries,
        }
    )
