"""Scaling-law forecasts: record a law's prediction of a run's final loss *before* the run exists, score
it after (the ledger: :mod:`scalescope.forecast.ledger`).

A fit that is only ever compared with the points it was fitted on says little about extrapolation. The
ledger makes the check routine: :func:`record_forecast` fits the law on the store's finished runs and
writes ``STORE/forecasts/<id>.json`` (law, fitted-on run ids, target, predicted final val loss, 95%
prediction interval, time, scalescope version); :func:`~scalescope.forecast.ledger.score_store` later
scores every forecast whose target has finished runs and writes the score back.

A target matches a finished run when every given coordinate matches: N and D within a relative
tolerance of 1e-6 (D is compared with both the tokens trained and the run's ``train.tokens`` budget,
which differ when the budget is not a whole number of steps), C within 1% (of ``flops`` or
``train.flops``). Several matching runs (seeds) are averaged.

The id is a hash of what determines the prediction (law, options, target, fitted-on runs, version), so
recording the same forecast twice is a no-op; options added later (``where``, ``min_tokens_per_param``,
the Chinchilla constraints) enter it only when set, so a record made before they existed keeps its id.
A target that already has runs at recording time is allowed, but those runs are left out of the fit and
the record says ``"target_existed": true``. These records have no ``kind`` field (they predate kinds):
they are the ledger's default kind, :data:`RECORD_KIND`.

Guardrails, recorded in ``flags`` and printed by the command:

* a prediction worse (higher) than the final loss of an existing run that is no larger in every given
  target coordinate (fewer parameters and less data; fewer FLOPs for a target given by C) contradicts
  the data: more parameters and more data do not make a loss worse, so the law (or the target's
  training) is wrong there;
* a forecast counts as *covered* only when the observation lies inside its interval **and** the interval
  is informative: relative half-width (hi − lo)/(2·predicted) at most ``informative_limit`` (10% by
  default). A wider interval that happens to contain the observation is *uninformative*, not a success
  (an interval of [1.2, 3e6] nats "covers" anything). The record keeps ``rel_half_width``; its score
  has ``inside``, ``informative``, ``covered`` and ``status`` (covered / missed / uninformative). Records
  made before this keep their ids and are scored the same way (the half-width is computed from their
  interval).

A target can also be a run configuration (:func:`config_target`): the non-embedding parameter count of
its model (:func:`scalescope.model.param_counts`), the tokens its budget trains (whole steps,
:func:`scalescope.schedule.budget_steps`) and the FLOPs (:func:`scalescope.model.flops_per_token` times
the tokens), exactly as a finished run of that config would report them.
"""

from __future__ import annotations

import copy
import difflib
import io
import keyword
import math
import re
import sys
import tokenize
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..errors import ConfigError, StoreError
from ..jsonable import jsonable
from ..laws.base import Law
from ..laws.chinchilla import ChinchillaLaw
from ..laws.power import SaturatingPowerLaw
from ..laws.select import tokens_per_param_mask
from ..store import Store, load
from ..version import __version__
from .ledger import forecast_id, kind_of, now, register_kind, write_record

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = [
    "INFORMATIVE_LIMIT",
    "LEVEL",
    "RECORD_KIND",
    "X_COORD",
    "config_target",
    "entropy_rate_of",
    "excluded_note",
    "filter_runs",
    "final_points",
    "finished_runs",
    "guardrail_flags",
    "make_forecast",
    "match_mask",
    "record_forecast",
    "score_law_runs",
    "score_record",
    "apply_overrides",
    "largest_run",
    "target_from_experiment",
    "target_from_overrides",
    "target_text",
]

RECORD_KIND = "scaling_law"  # records of this kind have no "kind" field: the ledger's default kind
LEVEL = 0.95
N_RTOL = 1e-6  # N and D are integers in practice: "the same run shape"
D_RTOL = 1e-6
C_RTOL = 0.01  # a FLOP budget is hit only to within a step's worth of tokens
X_COORD = {"params": "N", "tokens": "D", "flops": "C"}
INFORMATIVE_LIMIT = 0.10  # an interval wider than ±10% of its prediction says too little to count as covered


# --- selecting runs: --where ------------------------------------------------------------------------------

_SQL_WORDS = {"and": "and", "or": "or", "not": "not", "in": "in", "true": "True", "false": "False"}
_BACKQUOTED = re.compile(r"`([^`]*)`")


def _where_error(where: str, message: str) -> ConfigError:
    return ConfigError(f"{message} (in {where!r})", field="where")


_USUAL_COLUMNS = ("status", "params_nonembedding", "tokens", "flops", "final_val_loss", "model.d_model", "train.tokens")


def _unknown_column(name: str, columns: list[str], where: str) -> ConfigError:
    near = difflib.get_close_matches(name, columns, n=2, cutoff=0.8)
    usual = [c for c in _USUAL_COLUMNS if c in columns] or columns[:6]
    hint = f"; did you mean {', '.join(near)}?" if near else f"; columns include {', '.join(usual)}"
    return _where_error(where, f"unknown column {name!r}{hint}")


def _where_to_query(where: str, columns: list[str]) -> str:
    """A pandas query from a condition on the runs table written with plain dotted names
    (``train.tokens >= 1e6 and model.n_layer == 2``). Names are matched to columns (the longest dotted
    prefix that is one; the rest stays an attribute, e.g. ``.str``), back-quoted names are kept, SQL's
    ``=``, ``<>``, ``AND``/``OR``/``NOT`` are accepted too. An unknown name is a one-line error naming it."""
    cols = set(columns)
    quoted: list[str] = []

    def keep_quoted(m: re.Match[str]) -> str:
        if m.group(1) not in cols:
            raise _unknown_column(m.group(1), columns, where)
        quoted.append(m.group(1))
        return f" __q{len(quoted) - 1}__ "

    text = _BACKQUOTED.sub(keep_quoted, where)
    try:
        toks = [t for t in tokenize.generate_tokens(io.StringIO(text).readline) if t.type != tokenize.NEWLINE]
    except (tokenize.TokenError, SyntaxError, IndentationError) as err:
        raise _where_error(where, f"cannot parse the condition ({err})") from None
    out: list[str] = []
    i = 0
    while i < len(toks):
        t = toks[i]
        if t.type == tokenize.NAME:
            if re.fullmatch(r"__q\d+__", t.string):
                out.append(f"`{quoted[int(t.string[3:-2])]}`")
                i += 1
                continue
            low = t.string.lower()
            prev_dot = bool(out) and out[-1] == "."
            if low in _SQL_WORDS and not prev_dot:
                out.append(_SQL_WORDS[low])
                i += 1
                continue
            parts = [t.string]
            j = i + 1
            while j + 1 < len(toks) and toks[j].string == "." and toks[j + 1].type == tokenize.NAME:
                parts.append(toks[j + 1].string)
                j += 2
            calls = j < len(toks) and toks[j].string == "("
            for k in range(len(parts), 0, -1):
                name = ".".join(parts[:k])
                if name in cols and not prev_dot:
                    out.append(f"`{name}`" if (k > 1 or not name.isidentifier() or keyword.iskeyword(name)) else name)
                    for rest in parts[k:]:
                        out += [".", rest]
                    break
            else:
                if prev_dot or (calls and len(parts) == 1):
                    out += [parts[0]] + [x for p in parts[1:] for x in (".", p)]
                else:
                    raise _unknown_column(".".join(parts), columns, where)
            i = j
            continue
        if t.type == tokenize.OP and t.string == "=":
            out.append("==")
        elif t.type == tokenize.OP and t.string == "<" and i + 1 < len(toks) and toks[i + 1].string == ">":
            out.append("!=")
            i += 1
        elif t.type == tokenize.ERRORTOKEN and not t.string.strip():
            pass
        elif t.type == tokenize.ERRORTOKEN:
            raise _where_error(where, f"unexpected {t.string!r}")
        elif t.type != tokenize.ENDMARKER:
            out.append(t.string)
        i += 1
    # Tokens joined by spaces, except around attribute dots.
    return " ".join(out).replace(" . ", ".")


def filter_runs(runs: pd.DataFrame, where: str | None) -> pd.DataFrame:
    """The rows of ``runs`` matching ``where`` (None or blank: all). Errors name the bad column or say why
    the condition cannot be evaluated, in one line (field ``where``)."""
    if where is None or not where.strip():
        return runs
    query = _where_to_query(where, [str(c) for c in runs.columns])
    try:
        mask = runs.eval(query)
    except Exception as err:  # noqa: BLE001 - any failure to evaluate is one line for the user
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise _where_error(where, f"cannot evaluate the condition: {msg}") from None
    if not isinstance(mask, pd.Series) or not pd.api.types.is_bool_dtype(mask):
        raise _where_error(where, "the condition is not true or false for each run")
    return runs[mask.to_numpy()]


def finished_runs(store: str | Path, where: str | None = None) -> pd.DataFrame:
    """The store's finished runs matching ``where`` (see :func:`filter_runs`); a store without finished runs
    or a condition that keeps none of them is a one-line error."""
    runs = load(store).runs
    done = runs[runs["status"] == "finished"] if "status" in runs else runs.iloc[:0]
    if done.empty:
        raise StoreError(f"{store}: no finished runs ({len(runs)} runs in all)")
    kept = filter_runs(done, where)
    if kept.empty:
        raise ConfigError(f"{where!r} keeps none of the {len(done)} finished runs", field="where")
    # The diverged runs the same condition selects, so that final_points can say how many a fit leaves out.
    diverged = runs[runs["status"] == "diverged"]
    try:
        diverged = filter_runs(diverged, where) if not diverged.empty else diverged
    except ConfigError:  # a condition on columns only finished runs fill: count none rather than fail
        diverged = diverged.iloc[:0]
    kept = kept.copy()
    kept.attrs["diverged"] = sorted(str(i) for i in diverged["id"])
    return kept


def entropy_rate_of(points: pd.DataFrame) -> float | None:
    """The one entropy rate of the runs' source (``entropy_rate`` column; None when unknown); runs of sources
    with different entropy rates are an error (a floor for all of them does not exist)."""
    if "H" not in points:
        return None
    h = pd.to_numeric(points["H"], errors="coerce").dropna().unique()
    if len(h) == 0:
        return None
    if np.ptp(h) > 1e-9 * np.max(np.abs(h)):
        raise ConfigError(
            f"the runs have {len(h)} different entropy rates ({', '.join(f'{v:.4g}' for v in sorted(h))}); "
            "select runs of one source with where",
            field="entropy_rate",
        )
    return float(h[0])


# --- the store as points -------------------------------------------------------------------------------


def _flags_of(value: Any) -> list[str]:
    """A runs-table ``flags`` cell (a comma-joined string or a list; empty or NaN: none) as a list."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(v) for v in value if str(v)]
    if isinstance(value, str):
        return [f.strip() for f in value.split(",") if f.strip()]
    return []


def final_points(runs: pd.DataFrame, count: str = "nonembedding", *, include_flagged: bool = False) -> pd.DataFrame:
    """Finished runs with positive N, tokens and final val loss, as columns id, N, D, C, loss (plus the
    configured budgets D_budget, C_budget and the source's entropy rate H, NaN when unset). N is
    non-embedding unless ``count="total"``.

    Runs flagged ``undertrained`` or ``unstable`` at the end of training (the runs table's ``flags``), and
    runs :func:`dominated` by a run with no more parameters and no more data, are left out unless
    ``include_flagged``: their final loss says little about N and D (see
    :func:`scalescope.train.numerics_flags`). What was left out is in ``points.attrs["excluded"]``
    (``{"flagged": {id: flags}, "diverged": [ids]}``; diverged runs are those among ``runs`` or recorded
    by :func:`finished_runs`); :func:`excluded_note` words it."""
    if count not in ("nonembedding", "total"):
        raise ConfigError(f"expected nonembedding or total, got {count!r}", field="count")
    cols = {"id": "id", f"params_{count}": "N", "tokens": "D", "flops": "C", "final_val_loss": "loss"}
    if runs.empty or "status" not in runs:
        return pd.DataFrame(columns=[*cols.values(), "D_budget", "C_budget", "H"])
    diverged = set(runs.attrs.get("diverged", [])) | {str(i) for i in runs.loc[runs["status"] == "diverged", "id"]}
    done = runs[runs["status"] == "finished"]
    flagged: dict[str, list[str]] = {}
    if "flags" in done:
        for rid, cell in zip(done["id"], done["flags"]):
            if _flags_of(cell):
                flagged[str(rid)] = _flags_of(cell)
        if flagged and not include_flagged:
            done = done[~done["id"].astype(str).isin(list(flagged))]
    pts = done[list(cols)].rename(columns=cols).reset_index(drop=True)
    for c in ("N", "D", "C", "loss"):
        pts[c] = pd.to_numeric(pts[c], errors="coerce").astype(float)
    for src, dst in (("train.tokens", "D_budget"), ("train.flops", "C_budget"), ("entropy_rate", "H")):
        vals = done[src].to_numpy() if src in done else [math.nan] * len(done)
        pts[dst] = pd.to_numeric(pd.Series(vals), errors="coerce").astype(float).to_numpy()
    good = np.isfinite(pts[["N", "D", "C", "loss"]].to_numpy()).all(axis=1) & (pts[["N", "D", "loss"]] > 0).all(axis=1)
    out = pts[good].reset_index(drop=True)
    beaten = dominated(out)
    if beaten:
        flagged.update({rid: ["dominated"] for rid in beaten})
        if not include_flagged:
            out = out[~out["id"].astype(str).isin(beaten)].reset_index(drop=True)
    # Runs that have not ended well (pending, running, failed, unverified): counted, so a fit on fewer
    # points than the store has runs says why.
    states = runs["status"].astype(str)
    unfinished = states[~states.isin(["finished", "diverged"])].value_counts().to_dict()
    out.attrs["excluded"] = {
        "flagged": {} if include_flagged else flagged,
        "diverged": sorted(diverged),
        "unfinished": {str(k): int(v) for k, v in sorted(unfinished.items())},
    }
    return out


# A run whose final loss exceeds, by more than this fraction, that of a run with no more parameters and no
# more tokens is off the law (loss falls with N and D on a healthy sweep): a learning rate too high for its
# size, a bad seed of the optimizer. 5% is far above the scatter of healthy runs about their law (the demo's
# RMS log residual is 0.13%) and far below what a wrong learning rate costs (issue 12's hostile test: lr 1.0
# ended at 2.26 nats beside 1.0 at lr 0.01 for the same N and D, a 2x gap that the per-run numerics flags
# did not catch).
DOMINATED_MARGIN = 0.05


def dominated(points: pd.DataFrame) -> list[str]:
    """Ids of the points beaten by another point with N and D no larger (each within 1e-9 relative) and a
    final loss lower by more than :data:`DOMINATED_MARGIN`."""
    if len(points) < 2:
        return []
    N, D, L = (points[c].to_numpy(dtype=float) for c in ("N", "D", "loss"))
    smaller = (N[None, :] <= N[:, None] * (1 + 1e-9)) & (D[None, :] <= D[:, None] * (1 + 1e-9))
    better = L[:, None] > L[None, :] * (1 + DOMINATED_MARGIN)
    hit = (smaller & better).any(axis=1)
    return sorted(str(i) for i in points["id"][hit])


def excluded_note(points: pd.DataFrame, *, limit: int = 5) -> str | None:
    """One line saying which runs :func:`final_points` left out and why (None: none), e.g. "excluded 3 runs
    flagged undertrained/unstable: a, b, c (--include-flagged keeps them), and 12 diverged runs"."""
    ex = points.attrs.get("excluded") or {}
    flagged, diverged = ex.get("flagged") or {}, ex.get("diverged") or []
    parts = []
    if flagged:
        kinds = "/".join(sorted({f for fl in flagged.values() for f in fl}))
        kinds = kinds.replace(
            "dominated", f"dominated (a run with no more N and D reached a loss >{DOMINATED_MARGIN:.0%} lower)"
        )
        ids = sorted(flagged)
        shown = ", ".join(ids[:limit]) + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")
        parts.append(
            f"{len(ids)} run{'s' if len(ids) != 1 else ''} flagged {kinds}: {shown} (--include-flagged keeps them)"
        )
    if diverged:
        parts.append(f"{len(diverged)} diverged run{'s' if len(diverged) != 1 else ''}")
    unfinished = ex.get("unfinished") or {}
    if unfinished:
        n = sum(unfinished.values())
        kinds = ", ".join(f"{v} {k}" for k, v in unfinished.items())
        parts.append(f"{n} run{'s' if n != 1 else ''} not finished ({kinds})")
    return "excluded " + ", and ".join(parts) if parts else None


def _close(a: pd.Series, b: float, rtol: float) -> np.ndarray:
    return np.abs(a.to_numpy(dtype=float) - b) <= rtol * abs(b)


def match_mask(points: pd.DataFrame, target: dict[str, float]) -> np.ndarray:
    """Which points hit ``target`` (keys among N, D, C): every given coordinate must match."""
    mask = np.ones(len(points), dtype=bool)
    if target.get("N") is not None:
        mask &= _close(points["N"], target["N"], N_RTOL)
    if target.get("D") is not None:
        mask &= _close(points["D"], target["D"], D_RTOL) | _close(points["D_budget"], target["D"], D_RTOL)
    if target.get("C") is not None:
        mask &= _close(points["C"], target["C"], C_RTOL) | _close(points["C_budget"], target["C"], C_RTOL)
    return mask


def _store_points(
    store: str | Path, count: str, where: str | None = None, *, include_flagged: bool = False
) -> pd.DataFrame:
    runs = finished_runs(store, where)
    pts = final_points(runs, count, include_flagged=include_flagged)
    if pts.empty:
        raise StoreError(f"{store}: no finished runs with a final val loss ({len(runs)} runs selected)")
    return pts


# --- targets from a run configuration ------------------------------------------------------------------


def config_target(cfg: RunConfig, *, count: str = "nonembedding", vocab_size: int | None = None) -> dict[str, float]:
    """The target (N, D, C) of a run configuration, as its finished run would report them: N its model's
    parameter count (non-embedding unless ``count="total"``, which needs ``vocab_size``), D the tokens its
    budget trains in whole steps, C = FLOPs per token (6N + 12·n_layer·seq_len·d_model) times D."""
    from ..model import flops_per_token, param_counts  # lazy: torch is imported with the model
    from ..schedule import budget_steps

    if count not in ("nonembedding", "total"):
        raise ConfigError(f"expected nonembedding or total, got {count!r}", field="count")
    vocab = vocab_size if vocab_size is not None else getattr(cfg.data, "vocab_size", None)
    if count == "total" and not vocab:
        raise ConfigError(
            "the total parameter count needs the target's vocabulary size, which is unknown", field="count"
        )
    pc = param_counts(cfg.model, int(vocab or 0))
    fpt = flops_per_token(cfg.model, int(vocab or 0))
    tokens = budget_steps(cfg, fpt) * cfg.train.batch_size * cfg.model.seq_len
    n = pc.nonembedding if count == "nonembedding" else pc.total
    return {"N": float(n), "D": float(tokens), "C": float(fpt * tokens)}


def target_from_experiment(path: str | Path, run_index: int = 0) -> tuple[RunConfig, dict[str, Any]]:
    """Run ``run_index`` (0: the first, in sweep order) of the experiment file ``path``, and where it came
    from (for the record). A file that does not parse is the experiment's one-line ConfigError."""
    from ..config import run_id
    from ..sweep import load_experiment

    exp = load_experiment(path)
    if not 0 <= run_index < len(exp.runs):
        raise ConfigError(
            f"{path} declares {len(exp.runs)} run(s); run index {run_index} is not in 0..{len(exp.runs) - 1}",
            field="target_run",
        )
    cfg = exp.runs[run_index]
    return cfg, {"config": str(path), "run": run_index, "run_id": run_id(cfg)}


def _parse_value(text: str) -> Any:
    """A TOML value (192, 3e6, true, "adamw", [1, 2]); anything else is taken as a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> RunConfig:
    """The config ``raw`` (a nested dict, as config.json holds) with dotted overrides ``["model.d_model=192",
    "train.tokens=3e6"]`` applied (values read as TOML: 192, 3e6, true, "adamw"; a bare word is a string),
    validated. Setting one budget (train.tokens or train.flops) clears the other. ``raw`` is not changed."""
    from .. import config as C

    raw = copy.deepcopy(raw)
    valid_top = ["data", "model", "train", "instruments", "seed"]
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"expected FIELD=VALUE (e.g. model.d_model=192), got {item!r}", field="set")
        parts = key.split(".")
        if parts[0] not in valid_top:
            raise C.unknown_key(parts[0], valid_top, key, None)
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError("is not a table", field=key)
        node[parts[-1]] = _parse_value(value.strip())
        if key in ("train.tokens", "train.flops"):
            raw["train"]["flops" if key == "train.tokens" else "tokens"] = None
    return C.from_dict(raw)


def largest_run(store: str | Path, where: str | None = None) -> tuple[dict[str, Any], str, int | None]:
    """The config (nested dict), id and vocabulary size of the store's largest finished run: most
    parameters, then most tokens, among the runs ``where`` keeps."""
    runs = finished_runs(store, where)
    order = runs.assign(
        _n=pd.to_numeric(runs["params_nonembedding"], errors="coerce"),
        _d=pd.to_numeric(runs["tokens"], errors="coerce"),
    ).sort_values(["_n", "_d"], kind="stable")
    base = order.iloc[-1]
    raw = base["config"]
    if not isinstance(raw, dict):
        raise StoreError(f"{store}: run {base['id']} has no readable config.json")
    vocab = Store(store).run_dir(str(base["id"])).read_meta().get("vocab_size")
    return raw, str(base["id"]), vocab


def target_from_overrides(
    store: str | Path, overrides: list[str], *, where: str | None = None
) -> tuple[RunConfig, dict[str, Any], int | None]:
    """The store's largest finished run's config (:func:`largest_run`) with ``overrides`` applied
    (:func:`apply_overrides`), where it came from (for the record) and the base run's vocabulary size."""
    from ..config import run_id

    raw, rid, vocab = largest_run(store, where)
    cfg = apply_overrides(raw, overrides)
    return cfg, {"base_run": rid, "set": list(overrides), "run_id": run_id(cfg)}, vocab


# --- recording ------------------------------------------------------------------------------------------


def _check_target(law: str, x: str | None, target: dict[str, float]) -> None:
    for k, v in target.items():
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ConfigError(f"must be a positive number, got {v:g}", field=f"target.{k}")
    if law == "chinchilla":
        if target.get("N") is None or target.get("D") is None:
            raise ConfigError("law='chinchilla' needs target N and D", field="target")
    elif law == "power":
        if x not in X_COORD:
            raise ConfigError(f"expected one of {', '.join(X_COORD)}, got {x!r}", field="x")
        if target.get(X_COORD[x]) is None:
            raise ConfigError(f"law='power' with x={x!r} needs target {X_COORD[x]}", field="target")
    else:
        raise ConfigError(f"expected chinchilla or power, got {law!r}", field="law")


def _resolve_level(value: float | str | None, name: str, pts: pd.DataFrame) -> float | None:
    """A constraint value: a number, or ``"entropy"`` for the runs' known entropy rate."""
    if value is None:
        return None
    if isinstance(value, str):
        if value != "entropy":
            raise ConfigError(f"expected a number or 'entropy', got {value!r}", field=name)
        h = entropy_rate_of(pts)
        if h is None:
            raise ConfigError("'entropy' needs a known entropy rate, and the selected runs have none", field=name)
        return h
    v = float(value)
    if not (math.isfinite(v) and v >= 0):
        raise ConfigError(f"must be a number >= 0, got {value!r}", field=name)
    return v


def _fit(
    law: str, x: str | None, pts: pd.DataFrame, bootstrap: int, seed: int, constraints: dict[str, Any]
) -> tuple[Law, list[str]]:
    """Fit the law on ``pts``; return it and the feature columns it takes."""
    if law == "chinchilla":
        model: Law = ChinchillaLaw(bootstrap=bootstrap, random_state=seed, **constraints)
        feats = ["N", "D"]
    else:
        model = SaturatingPowerLaw(bootstrap=bootstrap, random_state=seed)
        feats = [X_COORD[x]]  # type: ignore[index]
    # Bootstrap resamples of few points can send an exponent far out; numpy's overflow warnings there are noise.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        model.fit(pts[feats].to_numpy(dtype=float), pts["loss"].to_numpy(dtype=float))
    return model, feats


_SMALLER = {"N": "no more parameters", "D": "no more data", "C": "no more FLOPs"}


def guardrail_flags(
    points: pd.DataFrame, target: dict[str, float], predicted: float, entropy_rate: float | None = None
) -> list[dict[str, Any]]:
    """What contradicts a prediction: existing runs no larger than the target in every given coordinate
    (N, D, C) that reached a lower loss than predicted (kind ``worse_than_smaller_run``), and a prediction
    below the source's entropy rate (``below_entropy_rate``). ``points``: the runs to compare with (the
    target's own runs left out)."""
    flags: list[dict[str, Any]] = []
    if not math.isfinite(predicted):
        return flags
    coords = [k for k in ("N", "D", "C") if target.get(k) is not None]
    if coords and len(points):
        smaller = np.ones(len(points), dtype=bool)
        for k in coords:
            smaller &= points[k].to_numpy(dtype=float) <= target[k] * (1 + 1e-9)
        better = points[smaller & (points["loss"].to_numpy(dtype=float) < predicted)].sort_values("loss")
        if len(better):
            best = better.iloc[0]
            what = " and ".join(_SMALLER[k] for k in coords)
            others = f" (and {len(better) - 1} more such run(s))" if len(better) > 1 else ""
            flags.append(
                {
                    "kind": "worse_than_smaller_run",
                    "message": (
                        f"predicted {predicted:.4g} is worse than run {best['id']} ({target_text(best.to_dict())}), "
                        f"which reached {best['loss']:.4g} with {what}{others}: the law is wrong at this target, "
                        "or the target would train worse than the runs it extrapolates"
                    ),
                    "runs": [
                        {k: (r[k] if k == "id" else float(r[k])) for k in ("id", "N", "D", "C", "loss")}
                        for _, r in better.head(5).iterrows()
                    ],
                }
            )
    if entropy_rate is not None and predicted < entropy_rate:
        flags.append(
            {
                "kind": "below_entropy_rate",
                "message": (
                    f"predicted {predicted:.4g} is below the source's entropy rate {entropy_rate:.4g}: impossible"
                ),
            }
        )
    return flags


def rel_half_width(predicted: float | None, interval: Sequence[Any]) -> float | None:
    """(hi − lo) / (2·predicted), None when the interval or the prediction is missing or not finite."""
    lo, hi = interval
    if predicted is None or lo is None or hi is None:
        return None
    vals = (float(predicted), float(lo), float(hi))
    if not all(math.isfinite(v) for v in vals) or vals[0] <= 0:
        return None
    return (vals[2] - vals[1]) / (2 * vals[0])


def make_forecast(
    store: str | Path,
    target: dict[str, float | None],
    *,
    law: str = "chinchilla",
    x: str | None = None,
    count: str = "nonembedding",
    bootstrap: int = 1000,
    seed: int = 0,
    where: str | None = None,
    min_tokens_per_param: float | None = None,
    fix_E: float | str | None = None,
    shared_exponent: bool = False,
    E_min: float | str | None = None,
    informative_limit: float = INFORMATIVE_LIMIT,
    target_source: dict[str, Any] | None = None,
    include_flagged: bool = False,
) -> dict[str, Any]:
    """Fit ``law`` on the store's finished runs and return a forecast record for ``target`` (not written).

    For ``law="power"`` (y = E + A·x^-α in ``x`` ∈ params/tokens/flops), the other given target coordinates
    select the runs fitted on (e.g. ``x="params"`` with a target D fits L(N) at that D). ``where`` selects
    runs (:func:`filter_runs`); ``min_tokens_per_param`` drops runs with D/N below it (the power-law
    regime); ``fix_E``, ``shared_exponent``, ``E_min`` constrain the Chinchilla law (a number, or
    ``"entropy"`` for the runs' entropy rate). ``informative_limit``: the largest relative half-width of an
    interval that can count as covered. ``target_source``: where the target came from (a config), kept in
    the record.
    """
    given = {k: float(v) for k, v in target.items() if v is not None}
    _check_target(law, x, given)
    if bootstrap < 1:
        raise ConfigError(f"must be >= 1 for an interval, got {bootstrap}", field="bootstrap")
    if not (math.isfinite(informative_limit) and informative_limit > 0):
        raise ConfigError(f"must be a positive number, got {informative_limit!r}", field="informative_limit")
    if law != "chinchilla" and (fix_E is not None or shared_exponent or E_min is not None):
        raise ConfigError("fix_E, shared_exponent and E_min apply to law='chinchilla' only", field="law")
    pts = _store_points(store, count, where, include_flagged=include_flagged)
    H = entropy_rate_of(pts)
    constraints: dict[str, Any] = {}
    fe, em = _resolve_level(fix_E, "fix_E", pts), _resolve_level(E_min, "E_min", pts)
    if fe is not None:
        constraints["fix_E"] = fe
    if shared_exponent:
        constraints["shared_exponent"] = True
    if em is not None:
        constraints["E_min"] = em
    existing = match_mask(pts, given)
    fit_pts = pts[~existing]
    regime = tokens_per_param_mask(fit_pts["N"], fit_pts["D"], min_tokens_per_param)
    dropped = int((~regime).sum())
    fit_pts = fit_pts[regime]
    if law == "power":
        others = {k: v for k, v in given.items() if k != X_COORD[x]}  # type: ignore[index]
        fit_pts = fit_pts[match_mask(fit_pts, others)]
        if fit_pts.empty and others:
            raise StoreError(
                f"{store}: no finished runs at the target's {target_text(others)} to fit a law in "
                f"{X_COORD[x]} on (the other target coordinates select the runs)"  # type: ignore[index]
            )
    if fit_pts.empty:
        raise StoreError(f"{store}: no finished runs to fit on (other than the target's)")
    model, feats = _fit(law, x, fit_pts, bootstrap, seed, constraints)
    Xt = np.array([[given[f] for f in feats]])
    pred = float(model.predict(Xt)[0])
    with np.errstate(over="ignore", invalid="ignore"):
        lo, hi = model.predict_interval(Xt, LEVEL, kind="prediction")
    content: dict[str, Any] = {
        "law": "chinchilla" if law == "chinchilla" else "saturating_power",
        "x": x if law == "power" else None,
        "count": count,
        "metric": "final_val_loss",
        "target": given,
        "fitted_on": sorted(fit_pts["id"]),
        "bootstrap": bootstrap,
        "seed": seed,
        "scalescope_version": __version__,
    }
    # Options added after the first records: in the id only when set, so older records keep theirs.
    if where:
        content["where"] = where
    if min_tokens_per_param is not None:
        content["min_tokens_per_param"] = float(min_tokens_per_param)
    if constraints:
        content["constraints"] = constraints
    if include_flagged:
        content["include_flagged"] = True
    interval = [float(lo[0]), float(hi[0])]
    rhw = rel_half_width(pred, interval)
    summary = model.summary()
    diag = summary.get("diagnostics")
    return jsonable(
        {
            "id": forecast_id(content),
            **content,
            "predicted": pred,
            "interval": interval,
            "level": LEVEL,
            "interval_kind": "prediction",  # bootstrap of the law plus the fit's residual scatter
            "rel_half_width": rhw,
            "informative_limit": informative_limit,
            "informative": rhw is not None and rhw <= informative_limit,
            "flags": guardrail_flags(pts[~existing], given, pred, H),
            "params": model.params_,
            "ci": model.ci_,
            "r2": model.r2_,
            "rmsle": model.rmsle_,
            "n_points": model.n_points_,
            "diagnostics": None if diag is None else {"verdict": diag.get("verdict"), "reason": diag.get("reason")},
            "entropy_rate": H,
            "dropped_below_min_tokens_per_param": dropped,
            "target_source": target_source,
            "target_existed": bool(existing.any()),
            "excluded": excluded_note(pts),  # flagged and diverged runs left out of the fit (None: none)
            "created_at": now(),
            "score": None,
        }
    )


def record_forecast(store: str | Path, target: dict[str, float | None], **options: Any) -> tuple[dict, bool]:
    """Make a forecast and write it to ``STORE/forecasts/<id>.json`` unless that id is already recorded.
    Returns (record, created); an existing record is returned unchanged (its created time is kept)."""
    return write_record(store, make_forecast(store, target, **options))


# --- scoring --------------------------------------------------------------------------------------------


def score_record(rec: dict[str, Any], points: pd.DataFrame) -> dict[str, Any] | None:
    """The score of ``rec`` against finished runs ``points`` (see :func:`final_points`), or None when
    its target has no finished run yet. Pure: ``scored_at`` is left to the caller.

    ``inside``: the observation lies in the interval; ``informative``: the interval's relative half-width is
    at most the record's ``informative_limit`` (:data:`INFORMATIVE_LIMIT` for records made before it
    existed); ``covered``: both; ``status``: ``covered``, ``missed`` (informative, observation outside) or
    ``uninformative``."""
    if kind_of(rec) != RECORD_KIND:  # e.g. a crossing forecast predicts a scale, not a loss
        return None
    pts = points
    if pts.empty:
        return None
    hit = pts[match_mask(pts, rec["target"])]
    if hit.empty:
        return None
    obs = float(hit["loss"].mean())
    pred, (lo, hi) = float(rec["predicted"]), rec["interval"]
    inside = bool(lo is not None and hi is not None and lo <= obs <= hi)
    rhw = rel_half_width(pred, (lo, hi))
    limit = float(rec.get("informative_limit") or INFORMATIVE_LIMIT)
    informative = rhw is not None and rhw <= limit
    return jsonable(
        {
            "observed": obs,
            "observed_runs": sorted(hit["id"]),
            "error": pred - obs,
            "rel_error": (pred - obs) / obs,
            "inside": inside,
            "rel_half_width": rhw,
            "informative_limit": limit,
            "informative": informative,
            "covered": inside and informative,
            "status": "uninformative" if not informative else ("covered" if inside else "missed"),
        }
    )


def target_text(t: dict[str, Any]) -> str:
    """``N=1.2e+04 D=1e+04`` (in N, D, C order, whatever order the record's keys are in)."""
    return " ".join(f"{k}={float(t[k]):.4g}" for k in ("N", "D", "C") if t.get(k) is not None)


def score_law_runs(rec: dict[str, Any], runs: pd.DataFrame) -> dict[str, Any] | None:
    """:func:`score_record` on a store's runs table (points counted as the record says): the ledger's
    scorer of this kind."""
    return score_record(rec, final_points(runs, rec.get("count", "nonembedding")))


register_kind(RECORD_KIND, score_law_runs, default=True)
