"""Scaling-law forecasts: ``--where`` with plain dotted names, targets from a run config (N, D, C computed
as a run reports them), the guardrails (a prediction worse than a smaller run; covered only when the
interval is informative) and old records kept readable with their ids. Stores are written by hand from a
known Chinchilla law (no training), so every expected value is known."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scalescope import config as C
from scalescope.errors import ConfigError
from scalescope.forecast import ledger
from scalescope.forecast.laws import (
    INFORMATIVE_LIMIT,
    config_target,
    filter_runs,
    final_points,
    guardrail_flags,
    make_forecast,
    score_record,
    target_from_overrides,
)
from scalescope.laws import chinchilla_loss
from scalescope.model import flops_per_token, param_counts
from scalescope.schedule import budget_steps
from scalescope.store import Store, load

# A Chinchilla law in the range of these tiny models (N ~ 1e4..1e5, D ~ 1e4..1e6); E is the source's
# entropy rate, written into each run's meta as a Markov source's would be.
LAW = {"E": 2.0, "A": 40.0, "B": 60.0, "alpha": 0.35, "beta": 0.3}
D_MODELS = (16, 24, 32, 48)
TOKENS = (20_000, 80_000, 320_000)


def base_config(d_model: int, tokens: int) -> C.RunConfig:
    cfg = C.RunConfig()
    model = dataclasses.replace(cfg.model, n_layer=2, n_head=2, d_model=d_model, seq_len=16)
    train = dataclasses.replace(cfg.train, batch_size=8, tokens=tokens)
    return dataclasses.replace(cfg, model=model, train=train)


def add_run(store: Store, cfg: C.RunConfig, loss_of, *, entropy_rate: float | None = LAW["E"], state="finished") -> str:
    """One run directory written by hand: config, meta (sizes from scalescope.model, as a real run), status
    and the final val loss ``loss_of(N, D)`` at the last step."""
    vocab = cfg.data.vocab_size
    pc = param_counts(cfg.model, vocab)
    fpt = flops_per_token(cfg.model, vocab)
    steps = budget_steps(cfg, fpt)
    tps = cfg.train.batch_size * cfg.model.seq_len
    rd = store.add(cfg, experiment="fake")
    meta = {
        "params_total": pc.total,
        "params_embedding": pc.embedding,
        "params_nonembedding": pc.nonembedding,
        "flops_per_token": fpt,
        "tokens_per_step": tps,
        "total_steps": steps,
        "vocab_size": vocab,
        "entropy_rate": entropy_rate,
    }
    rd.write_meta(meta)
    D = steps * tps
    row = {"step": steps, "tokens": D, "flops": fpt * D, "wall_s": 1.0, "metric": "val_loss"}
    row["value"] = float(loss_of(pc.nonembedding, D))
    rd.metrics_path.write_text(json.dumps(row) + "\n")
    rd.write_status(state, step=steps, experiment="fake")
    return rd.id


def law_store(
    path: Path,
    d_models=D_MODELS,
    tokens=TOKENS,
    *,
    law=LAW,
    noise: float = 0.0,
    seed: int = 0,
    entropy_rate: float | None = LAW["E"],
    loss_of=None,
) -> Store:
    """A store of finished runs on the grid d_models x tokens, final losses from ``law`` (times
    exp(N(0, noise)) per run) or from ``loss_of(N, D)``."""
    rng = np.random.default_rng(seed)
    st = Store(path).ensure_writable()
    for d in d_models:
        for t in tokens:

            def f(N, D):
                if loss_of is not None:
                    return loss_of(N, D)
                return chinchilla_loss(N, D, **law) * math.exp(rng.normal(0, noise))

            add_run(st, base_config(d, t), f, entropy_rate=entropy_rate)
    return st


# --- --where --------------------------------------------------------------------------------------------


def _runs() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "status": ["finished"] * 3,
            "train.tokens": [1e5, 1e6, 1e7],
            "model.n_layer": [2, 2, 4],
            "data.kind": ["markov"] * 3,
        }
    )


@pytest.mark.parametrize(
    ("where", "ids"),
    [
        ("train.tokens >= 1e6", ["b", "c"]),  # plain dotted names
        ("`train.tokens` >= 1e6", ["b", "c"]),  # the back-quoted form still works
        ("train.tokens >= 1e6 and model.n_layer == 2", ["b"]),
        ("train.tokens >= 1e6 AND model.n_layer = 4", ["c"]),  # SQL's AND and =
        ("model.n_layer <> 2", ["c"]),
        ("data.kind == 'markov' and not (train.tokens > 5e6)", ["a", "b"]),
        ("id.str.startswith('a') or id in ['c']", ["a", "c"]),
        ("", ["a", "b", "c"]),
    ],
)
def test_where_accepts_dotted_names(where: str, ids: list[str]) -> None:
    assert list(filter_runs(_runs(), where)["id"]) == ids


@pytest.mark.parametrize(
    ("where", "expect"),
    [
        ("train.tokenz > 1", "unknown column 'train.tokenz'; did you mean train.tokens?"),
        ("foo == 1", "unknown column 'foo'"),
        ("`nope` == 1", "unknown column 'nope'"),
        ("train.tokens >=", "cannot evaluate"),
        ("model.n_layer", "not true or false"),
    ],
)
def test_where_errors_are_one_line_naming_the_column(where: str, expect: str) -> None:
    with pytest.raises(ConfigError) as e:
        filter_runs(_runs(), where)
    assert e.value.field == "where" and expect in str(e.value) and "\n" not in str(e.value)


# --- targets from a config ------------------------------------------------------------------------------


def test_config_target_is_what_a_run_reports() -> None:
    cfg = base_config(40, 100_000)
    t = config_target(cfg)
    # Ground truth in closed form: per layer 4d² + 4d (attention) + 8d² + 5d + 2d (MLP with biases, d_mlp =
    # 4d, and its LayerNorm) + 2d (the attention's LayerNorm), plus the final LayerNorm 2d.
    d, L = 40, 2
    n = L * (12 * d * d + 13 * d) + 2 * d
    assert t["N"] == n == param_counts(cfg.model, 64).nonembedding
    steps = math.ceil(100_000 / 128)  # whole steps of 8 sequences x 16 tokens
    assert t["D"] == steps * 128
    assert t["C"] == pytest.approx((6 * n + 12 * L * 16 * d) * steps * 128, rel=1e-12)
    total = config_target(cfg, count="total")  # the Markov config knows its vocabulary (64)
    assert total["N"] == param_counts(cfg.model, 64).total


def test_target_from_overrides_uses_the_largest_run(tmp_path: Path) -> None:
    st = law_store(tmp_path / "s")
    cfg, source, vocab = target_from_overrides(st.path, ["model.d_model=64", "train.tokens=1.28e6"])
    assert cfg.model.d_model == 64 and cfg.train.tokens == 1_280_000 and cfg.model.n_layer == 2
    runs = load(st.path).runs
    largest = runs.sort_values(["params_nonembedding", "tokens"]).iloc[-1]
    assert source["base_run"] == largest["id"] and vocab == 64
    assert source["run_id"] == C.run_id(cfg)
    # A budget override clears the other budget; a bad field is the config's one-line error.
    flops_cfg, _, _ = target_from_overrides(st.path, ["train.flops=1e12"])
    assert flops_cfg.train.tokens is None and flops_cfg.train.flops == 1e12
    with pytest.raises(ConfigError, match=r"model\.d_modle: unknown key; did you mean 'd_model'"):
        target_from_overrides(st.path, ["model.d_modle=64"])
    with pytest.raises(ConfigError, match="expected FIELD=VALUE"):
        target_from_overrides(st.path, ["model.d_model"])
    with pytest.raises(ConfigError, match="d_model .* must be divisible by n_head"):
        target_from_overrides(st.path, ["model.d_model=63"])


# --- guardrails -----------------------------------------------------------------------------------------


def test_guardrail_flags_a_prediction_worse_than_a_smaller_run() -> None:
    pts = pd.DataFrame(
        {
            "id": ["small", "big_n", "big_d"],
            "N": [1e4, 1e6, 1e4],
            "D": [1e5, 1e5, 1e7],
            "C": [6e9, 6e11, 6e11],
            "loss": [3.0, 2.0, 2.1],
        }
    )
    target = {"N": 1e5, "D": 1e6}
    # 3.1 is worse than "small" (fewer parameters and less data): flagged, naming that run.
    (flag,) = guardrail_flags(pts, target, 3.1)
    assert flag["kind"] == "worse_than_smaller_run" and [r["id"] for r in flag["runs"]] == ["small"]
    assert "no more parameters and no more data" in flag["message"]
    # 2.9 beats it; the runs larger in N or in D do not count, whatever their loss.
    assert guardrail_flags(pts, target, 2.9) == []
    # A target given by compute alone is compared on FLOPs.
    (flag,) = guardrail_flags(pts, {"C": 1e12}, 2.15)
    assert [r["id"] for r in flag["runs"]] == ["big_n", "big_d"] and "no more FLOPs" in flag["message"]
    # Below the entropy rate: impossible.
    kinds = [f["kind"] for f in guardrail_flags(pts, target, 1.5, entropy_rate=1.9)]
    assert kinds == ["below_entropy_rate"]


def test_forecast_worse_than_a_smaller_run_is_flagged(tmp_path: Path) -> None:
    # Larger models trained worse (loss rising with N at fixed D, e.g. a learning rate too high for them):
    # the power law in N extrapolates the rise, and the forecast must say it contradicts the smaller runs.
    st = law_store(tmp_path / "s", tokens=(80_000,), loss_of=lambda N, D: 2.0 + 1e-4 * N**0.5)
    pts = final_points(load(st.path).runs)
    D = float(pts["D"].iloc[0])
    rec = make_forecast(st.path, {"N": 4 * pts["N"].max(), "D": D}, law="power", x="params", bootstrap=20)
    assert rec["predicted"] > pts["loss"].max()
    (flag,) = [f for f in rec["flags"] if f["kind"] == "worse_than_smaller_run"]
    assert flag["runs"][0]["loss"] == pytest.approx(pts["loss"].min())


# --- informative intervals, scoring, old records ---------------------------------------------------------


def _points(obs: float) -> pd.DataFrame:
    return pd.DataFrame({"id": ["t"], "N": [1e5], "D": [1e6], "C": [6e11], "loss": [obs], "D_budget": [1e6]}).assign(
        C_budget=np.nan
    )


@pytest.mark.parametrize(
    ("interval", "obs", "status"),
    [
        ([1.9, 2.1], 2.05, "covered"),  # ±5%: informative, holds the observation
        ([1.9, 2.1], 2.3, "missed"),
        ([1.2, 3e6], 2.05, "uninformative"),  # holds it, but says nothing: not a success
        ([None, None], 2.05, "uninformative"),  # every resample failed
    ],
)
def test_covered_only_when_the_interval_is_informative(interval, obs: float, status: str) -> None:
    rec = {"id": "x", "target": {"N": 1e5, "D": 1e6}, "predicted": 2.0, "interval": interval}
    s = score_record(rec, _points(obs))
    assert s["status"] == status
    assert s["covered"] == (status == "covered")
    assert s["inside"] == (interval[0] is not None and interval[0] <= obs <= interval[1])
    if interval[0] is not None:
        assert s["rel_half_width"] == pytest.approx((interval[1] - interval[0]) / 4.0)
    assert s["informative_limit"] == INFORMATIVE_LIMIT


def test_default_forecast_id_is_computed_as_before(tmp_path: Path) -> None:
    # Records made before this change hash exactly these fields; a default forecast must add none to them.
    st = law_store(tmp_path / "s", noise=0.005)
    t = final_points(load(st.path).runs).sort_values(["N", "D"]).iloc[-1]
    rec = make_forecast(st.path, {"N": 2 * t["N"], "D": 2 * t["D"]}, bootstrap=30, seed=1)
    old_keys = ["law", "x", "count", "metric", "target", "fitted_on", "bootstrap", "seed", "scalescope_version"]
    assert rec["id"] == ledger.forecast_id({k: rec[k] for k in old_keys})
    # An option enters the id only when set.
    rec2 = make_forecast(st.path, {"N": 2 * t["N"], "D": 2 * t["D"]}, bootstrap=30, seed=1, fix_E="entropy")
    assert rec2["id"] != rec["id"] and rec2["constraints"] == {"fix_E": LAW["E"]} and rec2["params"]["E"] == LAW["E"]
    assert 0 < rec["rel_half_width"] and rec["informative"] == (rec["rel_half_width"] <= INFORMATIVE_LIMIT)


def test_old_record_is_scored_with_its_id_kept(tmp_path: Path) -> None:
    st = law_store(tmp_path / "s")
    t = final_points(load(st.path).runs).iloc[0]
    old = {  # a record as written before rel_half_width, flags and informative_limit existed
        "id": "0123456789ab",
        "law": "chinchilla",
        "x": None,
        "count": "nonembedding",
        "metric": "final_val_loss",
        "target": {"N": float(t["N"]), "D": float(t["D"])},
        "fitted_on": [],
        "bootstrap": 10,
        "seed": 0,
        "scalescope_version": "0.1.0",
        "predicted": float(t["loss"]) * 1.01,
        "interval": [float(t["loss"]) * 0.99, float(t["loss"]) * 1.03],
        "level": 0.95,
        "created_at": "2026-01-01T00:00:00+00:00",
        "score": None,
    }
    path = ledger.forecasts_dir(st.path) / "0123456789ab.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(old))
    (rec,) = ledger.score_store(st.path)
    assert rec["id"] == "0123456789ab" and path.exists()
    s = rec["score"]
    assert s["status"] == "covered" and s["rel_half_width"] == pytest.approx(0.02 / 1.01)


def test_forecast_options_and_errors(tmp_path: Path) -> None:
    st = law_store(tmp_path / "s", noise=0.005)
    target = {"N": 1e5, "D": 1e6}
    rec = make_forecast(st.path, target, bootstrap=20, where="train.tokens >= 80000", min_tokens_per_param=1.0)
    assert rec["where"] == "train.tokens >= 80000" and rec["min_tokens_per_param"] == 1.0
    n_kept = len(D_MODELS) * 2
    assert rec["n_points"] + rec["dropped_below_min_tokens_per_param"] == n_kept
    with pytest.raises(ConfigError, match="keeps none of the 12 finished runs") as e:
        make_forecast(st.path, target, bootstrap=20, where="train.tokens > 1e9")
    assert e.value.field == "where"
    with pytest.raises(ConfigError, match="not below the smallest observed loss") as e:
        make_forecast(st.path, target, bootstrap=20, fix_E=9.0)
    assert e.value.field == "fix_E"
    nostore = law_store(tmp_path / "h", entropy_rate=None)
    with pytest.raises(ConfigError, match="needs a known entropy rate") as e:
        make_forecast(nostore.path, target, bootstrap=20, E_min="entropy")
    assert e.value.field == "E_min"


# --- the command line -----------------------------------------------------------------------------------


def _main(argv: list[str], capsys) -> tuple[int, str, str]:
    from scalescope.cli import main

    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_forecast_cli_target_from_set_and_config(tmp_path: Path, capsys) -> None:
    st = law_store(tmp_path / "s", noise=0.003)
    s = str(st.path)
    argv = ["forecast", "--store", s, "--bootstrap", "30", "--fix-E", "entropy", "--shared-exponent"]
    rc, out, err = _main([*argv, "--set", "model.d_model=96", "--set", "train.tokens=1.28e6", "--json"], capsys)
    assert rc == 0, err
    rec = json.loads(out)
    cfg = base_config(96, 1_280_000)
    truth = config_target(cfg)  # what a finished run of that config would report
    assert rec["target"] == {"N": truth["N"], "D": truth["D"]}
    assert rec["target_source"]["set"] == ["model.d_model=96", "train.tokens=1.28e6"]
    assert rec["target_source"]["C"] == truth["C"] and rec["target_source"]["run_id"] == C.run_id(cfg)
    # The law generated the data (0.3% noise): the forecast 2x beyond the largest N is within 3% of it.
    assert rec["predicted"] == pytest.approx(chinchilla_loss(truth["N"], truth["D"], **LAW), rel=0.03)
    assert rec["constraints"] == {"fix_E": LAW["E"], "shared_exponent": True}
    exp = tmp_path / "exp.toml"
    exp.write_text(
        "[model]\nn_layer = 2\nn_head = 2\nseq_len = 16\n[train]\nbatch_size = 8\ntokens = 640000\n"
        '[sweep]\n"model.d_model" = [64, 96]\n'
    )
    rc, out, err = _main([*argv, "--target-config", str(exp), "--target-run", "1"], capsys)
    assert rc == 0, err
    assert f"run 1 of {exp}" in out and "95% prediction interval" in out and "fit verdict:" in out
    assert "informative" in out or "UNINFORMATIVE" in out


def test_forecast_cli_flags_and_bad_input(tmp_path: Path, capsys) -> None:
    st = law_store(tmp_path / "s", tokens=(80_000,), loss_of=lambda N, D: 2.0 + 1e-4 * N**0.5)
    s = str(st.path)
    rc, out, err = _main(["forecast", "--store", s, "--law", "power", "--x", "params", "--bootstrap", "20",
                          "--set", "model.d_model=96"], capsys)  # fmt: skip
    assert rc == 0, err
    assert "FLAG: predicted" in out and "worse than run" in out
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nd_model = 3")
    cases = [
        (["--target-config", str(bad)], "malformed TOML"),
        (["--target-config", str(tmp_path / "none.toml")], "no such experiment file"),
        (["--set", "model.d_model=96", "--target-n", "1e5"], "not both"),
        (["--target-run", "1", "--target-n", "1e5", "--target-d", "1e6"], "--target-run: needs --target-config"),
        (["--set", "model.d_modle=96"], "unknown key; did you mean 'd_model'"),
        (["--where", "model.d_modle > 1", "--target-n", "1e5", "--target-d", "1e6"], "--where: unknown column"),
        (["--target-n", "1e5", "--target-d", "1e6", "--fix-E", "entropy", "--law", "power", "--x", "params"], "--law"),
    ]
    for extra, expect in cases:
        rc, out, err = _main(["forecast", "--store", s, "--bootstrap", "10", *extra], capsys)
        lines = err.strip().splitlines()
        assert rc == 2 and out == "" and len(lines) == 1 and lines[0].startswith("error: "), (extra, err)
        assert expect in lines[0], (extra, lines[0])
