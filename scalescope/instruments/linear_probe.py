"""Linear probes with control tasks (Hewitt & Liang 2019, "Designing and Interpreting Probes with Control
Tasks", EMNLP, sec. 2-3), on latent variables the data generator knows (issue 15).

A synthetic source knows what generated each token (:meth:`latents` of the hmm, discrete_tasks and markov
sources: the HMM's hidden state, the sequence's task, the Markov context). This instrument reads the residual
stream of the model at every layer (layer 0: the embedding output, the input of the first block; layer i: the
output of block i) at every input position of a fixed set of probe sequences, and fits a linear probe on it:

* **probe**: multinomial logistic regression on features standardized with the fit set's mean and standard
  deviation, L2 penalty ``l2`` / 2 · ||W||² on the weights, fitted by L-BFGS (torch, float32, at most
  ``max_iter`` iterations);
  fitted on ``n_sequences`` sequences (probe-stream batch ``index``) and scored on as many held-out ones (batch
  ``index + 1``): ``acc`` is the held-out accuracy;
* **control task** (Hewitt & Liang sec. 2): each input *type* (the token id at the position) gets one label
  drawn at random from the empirical distribution of the latent's labels on the fit set (seeded by
  ``control_seed``, fixed for the run, so values compare over training); the same probe, same positions, same
  capacity, fitted to those labels: ``control`` is its held-out accuracy. A probe can score on the control only
  by reading the input type, so ``control`` measures what the probe can get out of token identity alone;
* **selectivity** = acc - control (Hewitt & Liang eq. 1): high when the representation, not the probe,
  carries the latent beyond what the input type gives. It depends on the probe's capacity (their sec. 4): a
  larger ``l2`` lowers the control more than the latent, and when the token types are few against d_model a
  linear probe memorizes the control almost perfectly, so selectivity is at most ~0 there.

Also ``majority`` (the held-out accuracy of always answering the fit set's most frequent latent label) and
``ideal``: the held-out accuracy of the Bayes-optimal guess of the latent from the tokens up to and including
the position (HMM: argmax of the forward filter's p(S_t | x_0..t) (Rabiner 1989); task: 1 / the number of pool
tasks consistent with the pairs shown so far; Markov context: 1, it is a function of the last k tokens). No
probe of a causal model can beat it on average, so acc / ideal says how much of the knowable latent is linear.

Positions where the latent is undefined (label -1: the first k - 1 positions of an order-k chain) and those
before ``min_position`` are left out. Sanity case: the context of an order-1 chain *is* the input token, a
function of the input type as the control is, so acc ~ control at every layer and selectivity ~ 0.

Results (metrics): ``linear_probe/acc/layer{i}``, ``linear_probe/control/layer{i}``,
``linear_probe/selectivity/layer{i}``, ``linear_probe/majority``, ``linear_probe/control_majority``,
``linear_probe/ideal``. Cost per evaluation: one forward pass over 2 x ``n_sequences`` sequences and
2 x (layers) L-BFGS fits on (n_sequences x seq_len) x d_model features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F

from ..config import SOURCE_CONFIGS
from ..errors import ConfigError
from ..offline import load_run
from .registry import Option, ProbeContext, check_token_input, register

__all__ = [
    "DEFAULT_L2",
    "DEFAULT_MAX_ITER",
    "DEFAULT_SEQUENCES",
    "ProbeData",
    "SoftmaxProbe",
    "control_labels",
    "ideal_accuracy",
    "latent_names",
    "probe_data",
    "probe_layers",
    "probe_run",
    "residual_stream",
]

NAME = "linear_probe"
DEFAULT_SEQUENCES = 64
# Small against the standardized features' unit scale: it only keeps the weights finite when a class is
# separable (without it L-BFGS would grow them forever); the same for the latent and the control.
DEFAULT_L2 = 1e-2
DEFAULT_MAX_ITER = 100
# Forward passes over the probe sequences in chunks of this many (memory, not results).
_CHUNK = 256


def latent_names(kind: str) -> tuple[str, ...]:
    """The latents a data kind's source knows (its config class's ``latent_names``; () if none)."""
    cls = SOURCE_CONFIGS.get(kind)
    return tuple(getattr(cls, "latent_names", ())) if cls is not None else ()


def _with_latents() -> str:
    """'hmm: hmm_state; markov: context; ...': every registered kind that has latents, for error messages."""
    return "; ".join(f"{k}: {', '.join(latent_names(k))}" for k in sorted(SOURCE_CONFIGS) if latent_names(k))


def _check_latent(latent: Any, kind: str, field: str) -> None:
    names = latent_names(kind)
    if not names:
        raise ConfigError(
            f"data.kind = {kind!r} has no latents to probe (sources with latents: {_with_latents()})", field=field
        )
    if latent not in names:
        raise ConfigError(f"{latent!r} is not a latent of data.kind = {kind!r}; its latents: {', '.join(names)}",
                          field=field)  # fmt: skip


# --- the probe -------------------------------------------------------------------------------------------


class SoftmaxProbe:
    """Multinomial logistic regression on standardized features (scikit-learn's estimator shape: ``fit``
    returns self; learned values end in ``_``). Minimizes mean cross-entropy + l2 / 2 · ||W||² (bias not
    penalized) by L-BFGS with a strong-Wolfe line search, from W = 0 (convex: a unique optimum for l2 > 0).
    Classes are the labels seen in ``fit``; a held-out label outside them is always a miss."""

    def __init__(self, *, l2: float = DEFAULT_L2, max_iter: int = DEFAULT_MAX_ITER) -> None:
        self.l2 = l2
        self.max_iter = max_iter

    def fit(self, x: np.ndarray | torch.Tensor, y: np.ndarray) -> SoftmaxProbe:
        xt = torch.as_tensor(x, dtype=torch.float32)
        self.mean_ = xt.mean(0)
        # A constant feature (std 0) is kept at 0 after centring rather than divided by 0.
        self.scale_ = xt.std(0).clamp_min(1e-8)
        z = (xt - self.mean_) / self.scale_
        self.classes_, yi = np.unique(np.asarray(y), return_inverse=True)
        target = torch.as_tensor(yi, dtype=torch.long)
        w = torch.zeros(z.shape[1], len(self.classes_), dtype=torch.float32, requires_grad=True)
        b = torch.zeros(len(self.classes_), dtype=torch.float32, requires_grad=True)
        if len(self.classes_) > 1:
            opt = torch.optim.LBFGS(
                [w, b], lr=1.0, max_iter=self.max_iter, history_size=20, line_search_fn="strong_wolfe",
                tolerance_grad=1e-7, tolerance_change=1e-10,
            )  # fmt: skip

            def closure() -> torch.Tensor:
                opt.zero_grad()
                loss = F.cross_entropy(z @ w + b, target) + 0.5 * self.l2 * (w * w).sum()
                loss.backward()
                return loss

            with torch.enable_grad():
                opt.step(closure)
        self.coef_, self.intercept_ = w.detach(), b.detach()
        return self

    def predict(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        z = (torch.as_tensor(x, dtype=torch.float32) - self.mean_) / self.scale_
        return cast(np.ndarray, self.classes_[(z @ self.coef_ + self.intercept_).argmax(1).numpy()])

    def score(self, x: np.ndarray | torch.Tensor, y: np.ndarray) -> float:
        """Accuracy on (x, y)."""
        return float(np.mean(self.predict(x) == np.asarray(y)))


def control_labels(y_fit: np.ndarray, vocab_size: int, seed: int) -> np.ndarray:
    """One label per input type (vocab_size,), each drawn independently from the empirical distribution of
    ``y_fit`` (Hewitt & Liang 2019 sec. 2: the control task keeps the task's output space and label
    frequencies, and makes the label a function of the input type alone)."""
    labels, counts = np.unique(np.asarray(y_fit), return_counts=True)
    rng = np.random.default_rng([int(seed), 0xC047])
    return rng.choice(labels, size=int(vocab_size), p=counts / counts.sum())


# --- the data: fixed per run ---------------------------------------------------------------------------


@dataclass
class ProbeData:
    """The fit and held-out probe sequences of one run, their labels and the reference accuracies."""

    fit_inputs: torch.Tensor  # (n, T) token ids
    test_inputs: torch.Tensor
    fit_mask: np.ndarray  # (n, T) bool: the positions probed
    test_mask: np.ndarray
    fit_y: np.ndarray  # (positions,) latent labels at the masked positions, row-major
    test_y: np.ndarray
    fit_control: np.ndarray  # (positions,) control labels there
    test_control: np.ndarray
    majority: float
    control_majority: float
    ideal: float | None


def _majority(y_fit: np.ndarray, y_test: np.ndarray) -> float:
    labels, counts = np.unique(y_fit, return_counts=True)
    return float(np.mean(y_test == labels[counts.argmax()]))


def probe_data(
    source: Any,
    latent: str,
    *,
    seq_len: int,
    n_sequences: int = DEFAULT_SEQUENCES,
    index: int = 0,
    min_position: int = 0,
    control_seed: int = 0,
) -> ProbeData:
    """Probe-stream batches ``index`` (fit) and ``index + 1`` (held out) of ``n_sequences`` sequences, the
    latent's labels on them, the control labels and the reference accuracies (see the module doc)."""
    if not callable(getattr(source, "latents", None)):
        kind = (source.describe() or {}).get("kind", type(source).__name__)
        raise ConfigError(f"data.kind = {kind!r} has no latents to probe (sources with latents: {_with_latents()})",
                          field="data.kind")  # fmt: skip
    parts = []
    for i in (index, index + 1):
        inputs = source.batch("probe", i, n_sequences, seq_len).inputs
        lat = source.latents("probe", i, n_sequences, seq_len)
        if latent not in lat:
            raise ConfigError(f"{latent!r} is not a latent of this source; its latents: {', '.join(lat)}",
                              field="latent")  # fmt: skip
        y = np.asarray(lat[latent])
        mask = (y >= 0) & (np.arange(seq_len)[None, :] >= min_position)
        parts.append((inputs, mask, y))
    (fi, fm, fy), (ti, tm, ty) = parts
    if not fm.any() or not tm.any():
        raise ConfigError(f"no position at or after {min_position} has a defined {latent!r}", field="min_position")
    table = control_labels(fy[fm], source.vocab_size, control_seed)
    fc, tc = table[fi.numpy()][fm], table[ti.numpy()][tm]
    return ProbeData(
        fi, ti, fm, tm, fy[fm], ty[tm], fc, tc,
        majority=_majority(fy[fm], ty[tm]),
        control_majority=_majority(fc, tc),
        ideal=ideal_accuracy(source, latent, ti.numpy(), ty, tm),
    )  # fmt: skip


def ideal_accuracy(source: Any, latent: str, tokens: np.ndarray, y: np.ndarray, mask: np.ndarray) -> float | None:
    """Mean accuracy at the masked positions of the Bayes-optimal guess of the latent from tokens 0..t (see the
    module doc); None for a latent this function does not know."""
    if latent == "context":
        return 1.0  # a function of the last k tokens, all visible at t >= k - 1
    if latent == "hmm_state":
        pred = np.broadcast_to(source.pi, (tokens.shape[0], source.n_hidden)).copy()
        hit = np.zeros(tokens.shape, dtype=bool)
        for t in range(tokens.shape[1]):
            post = pred * source.emission[:, tokens[:, t]].T  # p(S_t, x_t | x_<t) up to a constant
            post /= post.sum(axis=1, keepdims=True)
            # Ties (rare, exact) go to the lowest state: a fixed rule, as a probe's argmax is.
            hit[:, t] = post.argmax(axis=1) == y[:, t]
            pred = post @ source.transition
        return float(hit[mask].mean())
    if latent == "task":
        # Position t shows the pairs whose output is at or before t: pairs 0 .. (t + 1) // 2 - 1. Every pool task
        # that agrees with them is equally likely a posteriori; the argmax is right with probability 1 / count.
        xs, ys = tokens[:, 0::2], tokens[:, 1::2] - source.n_inputs
        agree = source.pool[:, xs[:, : ys.shape[1]]] == ys[None]  # (K, B, pairs)
        alive = np.concatenate([np.ones_like(agree[..., :1]), np.cumprod(agree, axis=2)], axis=2)  # after j pairs
        pairs = (np.arange(tokens.shape[1]) + 1) // 2
        acc = 1.0 / alive.sum(axis=0)[:, pairs]  # (B, T)
        return float(acc[mask].mean())
    return None


# --- the residual stream ---------------------------------------------------------------------------------


@torch.no_grad()
def residual_stream(
    model: torch.nn.Module, inputs: torch.Tensor, layers: list[int], *, device: Any = "cpu", chunk: int = _CHUNK
) -> dict[int, torch.Tensor]:
    """The residual stream at ``layers`` for ``inputs`` (B, T): layer 0 is the embedding output (the first
    block's input), layer i the output of block i; each (B, T, d_model) float32 on the CPU. Forward hooks on
    ``model.blocks`` (a scalescope GPT)."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, torch.nn.ModuleList) or not len(blocks):
        raise ConfigError("linear_probe needs a scalescope GPT with at least one block", field=f"instruments.{NAME}")
    out: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    handles = []
    if 0 in out:
        handles.append(blocks[0].register_forward_pre_hook(lambda _m, args: out[0].append(args[0].float().cpu())))
    for i, block in enumerate(blocks, start=1):
        if i in out:
            handles.append(block.register_forward_hook(lambda _m, _a, y, i=i: out[i].append(y.float().cpu())))
    try:
        for s in range(0, inputs.shape[0], chunk):
            model(inputs[s : s + chunk].to(device))
    finally:
        for h in handles:
            h.remove()
    return {i: torch.cat(v) for i, v in out.items()}


def probe_layers(
    model: torch.nn.Module,
    data: ProbeData,
    layers: list[int],
    *,
    l2: float = DEFAULT_L2,
    max_iter: int = DEFAULT_MAX_ITER,
    device: Any = "cpu",
    chunk: int = _CHUNK,
) -> dict[str, float]:
    """Held-out accuracy of the latent and control probes at each layer, their difference, and the baselines,
    keyed as the instrument stores them (``linear_probe/acc/layer{i}`` ...)."""
    fit = residual_stream(model, data.fit_inputs, layers, device=device, chunk=chunk)
    test = residual_stream(model, data.test_inputs, layers, device=device, chunk=chunk)
    fm, tm = torch.as_tensor(data.fit_mask), torch.as_tensor(data.test_mask)
    out: dict[str, float] = {}
    for i in layers:
        xf, xt = fit[i][fm], test[i][tm]  # (positions, d_model), row-major as the labels
        acc = SoftmaxProbe(l2=l2, max_iter=max_iter).fit(xf, data.fit_y).score(xt, data.test_y)
        ctl = SoftmaxProbe(l2=l2, max_iter=max_iter).fit(xf, data.fit_control).score(xt, data.test_control)
        out[f"{NAME}/acc/layer{i}"] = acc
        out[f"{NAME}/control/layer{i}"] = ctl
        out[f"{NAME}/selectivity/layer{i}"] = acc - ctl
    out[f"{NAME}/majority"] = data.majority
    out[f"{NAME}/control_majority"] = data.control_majority
    out[f"{NAME}/ideal"] = float("nan") if data.ideal is None else data.ideal
    return out


def _layers(layers: list[int] | None, n_layer: int, field: str) -> list[int]:
    if layers is None:
        return list(range(n_layer + 1))
    if not layers:
        raise ConfigError(f"expected at least one layer in 0 .. {n_layer} (or leave it out: all of them)", field=field)
    bad = [i for i in layers if not 0 <= i <= n_layer]
    if bad:
        raise ConfigError(f"the model has layers 0 .. {n_layer} (0: the embedding output), not {bad}", field=field)
    return sorted(set(layers))


def _check_options(n_sequences: Any, min_position: Any, l2: Any, max_iter: Any, prefix: str = "") -> None:
    """The options of the instrument and the arguments of :func:`probe_run`; errors name ``prefix + name``."""
    if not isinstance(n_sequences, int) or n_sequences < 1:
        raise ConfigError(f"expected a positive integer, got {n_sequences!r}", field=f"{prefix}n_sequences")
    if not isinstance(min_position, int) or min_position < 0:
        raise ConfigError(f"expected an integer >= 0, got {min_position!r}", field=f"{prefix}min_position")
    if not isinstance(l2, (int, float)) or not l2 > 0:  # l2 = 0: a separable class sends L-BFGS to infinity
        raise ConfigError(f"expected a number > 0, got {l2!r}", field=f"{prefix}l2")
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ConfigError(f"expected a positive integer, got {max_iter!r}", field=f"{prefix}max_iter")


@register(
    NAME,
    options={
        "latent": Option(str, optional=True),  # required: None (left out) is refused with the latents listed
        "n_sequences": Option(int, ge=1),
        "index": Option(int, ge=0),
        "layers": Option(list, item=int, ge=0, optional=True),
        "min_position": Option(int, ge=0),
        "l2": Option(float, gt=0),
        "max_iter": Option(int, ge=1),
        "control_seed": Option(int, ge=0),
    },
)
def make(
    latent: str | None = None,
    n_sequences: int = DEFAULT_SEQUENCES,
    index: int = 0,
    layers: list[int] | None = None,
    min_position: int = 0,
    l2: float = DEFAULT_L2,
    max_iter: int = DEFAULT_MAX_ITER,
    control_seed: int = 0,
) -> Any:
    """Linear probes with control tasks (options: ``latent`` (required) the source's latent to probe;
    ``n_sequences`` fit and held-out sequences each; ``index`` the fit set's probe-stream batch; ``layers``
    (default all, 0 = embedding output); ``min_position`` first position probed; ``l2`` the probe's penalty;
    ``max_iter`` L-BFGS iterations; ``control_seed`` the control task's labels)."""
    prefix = f"instruments.{NAME}."
    if not isinstance(latent, str):
        raise ConfigError(f"required: the latent to probe, one of the source's ({_with_latents()})",
                          field=f"{prefix}latent")  # fmt: skip
    _check_options(n_sequences, min_position, l2, max_iter, prefix)
    assert latent is not None  # checked above
    cache: dict[tuple, ProbeData] = {}  # the sequences, labels and references: fixed per run

    def probe(ctx: ProbeContext) -> dict[str, Any]:
        key = (id(ctx.source), ctx.seq_len)
        if key not in cache:
            cache.clear()
            cache[key] = probe_data(
                ctx.source, latent, seq_len=ctx.seq_len, n_sequences=n_sequences, index=index,
                min_position=min_position, control_seed=control_seed,
            )  # fmt: skip
        n_layer = len(getattr(ctx.model, "blocks", []))
        chosen = _layers(layers, n_layer, prefix + "layers")
        return probe_layers(ctx.model, cache[key], chosen, l2=l2, max_iter=max_iter, device=ctx.device,
                            chunk=ctx.batch_size)  # fmt: skip

    def check_config(cfg: Any) -> None:
        """At load time: a source with this latent, token inputs, layers and positions inside the model."""
        _check_latent(latent, cfg.data.kind, prefix + "latent")
        check_token_input(cfg, NAME)
        _layers(layers, cfg.model.n_layer, prefix + "layers")
        if min_position >= cfg.model.seq_len:
            raise ConfigError(f"must be below model.seq_len ({cfg.model.seq_len}), got {min_position}",
                              field=prefix + "min_position")  # fmt: skip

    probe.check_config = check_config  # type: ignore[attr-defined]
    return probe


# --- offline, on a stored run (``scalescope probe linear-probe``) -------------------------------------------


_DEFAULTS: dict[str, Any] = {
    "latent": None,
    "n_sequences": DEFAULT_SEQUENCES,
    "index": 0,
    "layers": None,
    "min_position": 0,
    "l2": DEFAULT_L2,
    "max_iter": DEFAULT_MAX_ITER,
    "control_seed": 0,
}


def probe_run(
    run_dir: str | Path,
    step: int | None = None,
    *,
    latent: str | None = None,
    n_sequences: int | None = None,
    index: int | None = None,
    layers: list[int] | None = None,
    min_position: int | None = None,
    l2: float | None = None,
    max_iter: int | None = None,
    control_seed: int | None = None,
) -> dict[str, Any]:
    """The probes of a stored run's model at ``step`` (default: the latest checkpoint), per layer. Each argument
    left None takes the run's own ``[instruments.linear_probe]`` option, else the instrument's default (latent:
    the source's first), so that the defaults repeat what the run measured. Bad arguments raise
    :class:`ConfigError` naming the argument (``field="latent"``)."""
    given = {
        k: v
        for k, v in dict(
            latent=latent, n_sequences=n_sequences, index=index, layers=layers, min_position=min_position, l2=l2,
            max_iter=max_iter, control_seed=control_seed,
        ).items()
        if v is not None
    }  # fmt: skip
    first = {**_DEFAULTS, **given}
    _check_options(first["n_sequences"], first["min_position"], first["l2"], first["max_iter"])  # before loading
    run = load_run(run_dir, step, attention=None)
    kind = run.cfg.data.kind
    own = {k: v for k, v in run.cfg.instruments.get(NAME, {}).items() if k in _DEFAULTS}  # not every, batch_size
    o = {**_DEFAULTS, **own, **given}
    o["latent"] = o["latent"] if o["latent"] is not None else next(iter(latent_names(kind)), None)
    _check_latent(o["latent"], kind, "latent")
    _check_options(o["n_sequences"], o["min_position"], o["l2"], o["max_iter"])
    seq_len = run.cfg.model.seq_len
    if o["min_position"] >= seq_len:
        raise ConfigError(f"must be below model.seq_len ({seq_len}), got {o['min_position']}", field="min_position")
    chosen = _layers(o["layers"], run.cfg.model.n_layer, "layers")
    data = probe_data(
        run.source, o["latent"], seq_len=seq_len, n_sequences=o["n_sequences"], index=o["index"],
        min_position=o["min_position"], control_seed=o["control_seed"],
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        r = probe_layers(run.model, data, chosen, l2=o["l2"], max_iter=o["max_iter"], device=run.device)
    return {
        "run_dir": str(run.run_dir.path),
        "step": run.step,
        "kind": kind,
        "latent": o["latent"],
        "layers": chosen,
        "positions": int(data.test_mask.sum()),
        "options": {k: v for k, v in o.items() if k != "latent"},
        "acc": [r[f"{NAME}/acc/layer{i}"] for i in chosen],
        "control": [r[f"{NAME}/control/layer{i}"] for i in chosen],
        "selectivity": [r[f"{NAME}/selectivity/layer{i}"] for i in chosen],
        "majority": data.majority,
        "control_majority": data.control_majority,
        "ideal": data.ideal,
    }
