"""The linear-probe analysis and report panel (issue 15), on stores whose metrics are written directly, so that
every expected number is known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scalescope import config as C
from scalescope.analyses.probes import DEFINITIONS, analyze
from scalescope.report import Context, build_sections
from scalescope.report.panels import probes as probes_panel  # noqa: F401 - registers the panel
from scalescope.store import Store, load

STEPS = (0, 10, 100)
# acc and control per (step, layer): selectivity = acc - control, as the instrument stores it.
ACC = {0: (0.20, 0.21, 0.22), 10: (0.20, 0.50, 0.60), 100: (0.20, 0.90, 0.95)}
CONTROL = {0: (0.90, 0.90, 0.90), 10: (0.90, 0.85, 0.70), 100: (0.90, 0.80, 0.70)}

HMM = {"data": {"kind": "hmm"}, "model": {"n_layer": 2, "d_model": 16, "n_head": 2, "seq_len": 16},
       "instruments": {"linear_probe": {"latent": "hmm_state", "l2": 0.1}}}  # fmt: skip
MARKOV = {"data": {"kind": "markov", "order": 2, "vocab_size": 8}, "model": {"n_layer": 2, "d_model": 16,
          "n_head": 2, "seq_len": 16}, "instruments": {"linear_probe": {"latent": "context"}}}  # fmt: skip
PLAIN = {"data": {"kind": "markov"}, "model": {"n_layer": 1, "d_model": 16, "n_head": 2, "seq_len": 16}}


def _probe_rows(scale: float, *, torn: bool = False) -> list[tuple[int, str, float]]:
    rows = []
    for s in STEPS:
        rows.append((s, "val_loss", 3.0 - s / 100))
        for i in range(3):
            a, c = ACC[s][i] * scale, CONTROL[s][i]
            rows += [(s, f"linear_probe/acc/layer{i}", a), (s, f"linear_probe/control/layer{i}", c),
                     (s, f"linear_probe/selectivity/layer{i}", a - c)]  # fmt: skip
        rows += [(s, "linear_probe/majority", 0.1), (s, "linear_probe/ideal", 0.97),
                 (s, "linear_probe/control_majority", 0.3)]  # fmt: skip
    if torn:  # a last evaluation that stored only part of its values
        rows.append((200, "linear_probe/acc/layer0", 0.5))
    return rows


def _store(tmp_path: Path, runs: list[tuple[dict, list[tuple[int, str, float]]]]) -> tuple[Path, dict[str, str]]:
    st = Store(tmp_path / "s").ensure_writable()
    ids = {}
    for raw, rows in runs:
        rd = st.add(C.from_dict(raw), experiment="synthetic")
        rd.append_metrics([{"step": s, "tokens": s * 256, "flops": 0.0, "wall_s": 0.0, "metric": m, "value": v}
                           for s, m, v in rows])  # fmt: skip
        rd.write_status("finished", step=max(s for s, _, _ in rows))
        ids[raw["data"]["kind"] + str(raw["data"].get("order", ""))] = rd.id
    return st.path, ids


def test_per_run_finals_best_layer_and_trajectory(tmp_path):
    path, ids = _store(
        tmp_path,
        [
            (HMM, _probe_rows(1.0)),
            (MARKOV, _probe_rows(0.5, torn=True)),
            (PLAIN, [(s, "val_loss", 3.0) for s in STEPS]),
        ],
    )
    r = analyze(path)
    json.dumps(r, allow_nan=False)  # strict JSON: what --json prints
    assert r["definitions"] == DEFINITIONS and {"acc", "control", "selectivity", "ideal"} <= set(DEFINITIONS)
    assert r["n_runs"] == 2 and {e["id"] for e in r["runs"]} == {ids["hmm"], ids["markov2"]}  # not the plain run
    hmm = next(e for e in r["runs"] if e["id"] == ids["hmm"])
    assert (hmm["kind"], hmm["latent"], hmm["l2"], hmm["order"]) == ("hmm", "hmm_state", 0.1, None)
    assert hmm["final_step"] == 100 and hmm["over_training"]["steps"] == [0, 10, 100]
    assert [p["layer"] for p in hmm["layers"]] == [0, 1, 2]
    assert [p["selectivity"] for p in hmm["layers"]] == pytest.approx([-0.70, 0.10, 0.25])
    assert [p["change"] for p in hmm["layers"]] == pytest.approx([0.0, 0.79, 0.93])
    assert hmm["best_layer"] == 2 and (hmm["ideal"], hmm["majority"]) == (0.97, 0.1)
    assert hmm["over_training"]["selectivity"]["1"] == pytest.approx([-0.69, -0.35, 0.10])
    assert hmm["over_training"]["acc"]["2"] == pytest.approx([0.22, 0.60, 0.95])
    mk = next(e for e in r["runs"] if e["id"] == ids["markov2"])
    # The torn step 200 (one value of nine) is not the final evaluation; step 100 is.
    assert mk["order"] == 2 and mk["latent"] == "context" and mk["final_step"] == 100
    # Half the accuracy: selectivity 0.45 - 0.80 = -0.35 at layer 1, 0.475 - 0.70 = -0.225 at layer 2.
    assert [p["selectivity"] for p in mk["layers"]] == pytest.approx([-0.80, -0.35, -0.225])
    assert mk["best_layer"] == 2


def test_ties_go_to_the_lowest_layer_and_empty_stores_have_no_runs(tmp_path):
    flat = [(s, f"linear_probe/{k}/layer{i}", v) for s in STEPS for i in range(2)
            for k, v in (("acc", 0.5), ("control", 0.5), ("selectivity", 0.0))]  # fmt: skip
    path, ids = _store(tmp_path, [(HMM, flat)])
    (e,) = analyze(path)["runs"]
    assert e["best_layer"] == 0 and e["ideal"] is None
    empty = Store(tmp_path / "empty").ensure_writable().path
    assert analyze(empty)["runs"] == [] and analyze(empty)["n_runs"] == 0


def test_panel_draws_probe_runs_and_skips_without_them(tmp_path):
    path, ids = _store(tmp_path, [(HMM, _probe_rows(1.0)), (MARKOV, _probe_rows(0.5))])
    t = load(path)
    (sec,) = build_sections(Context(path, t.runs, t.metrics), ["probes"])
    assert sec.shown and not sec.failed and sec.body.count("<img") == 1
    assert ids["hmm"] in sec.body and "+0.250" in sec.body and "hmm_state" in sec.body
    plain, _ = _store(tmp_path / "plain", [(PLAIN, [(s, "val_loss", 3.0) for s in STEPS])])
    t = load(plain)
    (sec,) = build_sections(Context(plain, t.runs, t.metrics), ["probes"])
    assert not sec.shown and "linear_probe" in (sec.skipped or "")
