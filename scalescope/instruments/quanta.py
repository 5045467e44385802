"""Per-skill loss and accuracy on a ``quanta`` source (multitask sparse parity, issue 14).

The probe set is fixed per language: ``examples_per_skill`` examples of every skill from the source's
:meth:`~scalescope.data.quanta.QuantaSource.skill_batch` stream (the same for every run of a sweep and every
step). For each example, with q = the model's probability of the clean answer and r = its probability of the
flipped one (both over the whole vocabulary; r = 1 - q when the model puts no mass elsewhere):

* accuracy: the model's argmax over the vocabulary equals the clean answer (scored against the rule);
* loss: the exact expectation of the training cross-entropy under the noisy label,
  -(1-ε) ln q - ε ln r, so it carries no label-noise sampling error; its floor is H(ε), the entropy rate.

Results (the trainer stores arrays as artifacts per step, floats as metrics):

* ``quanta/skill_loss``, ``quanta/skill_acc``: (n_skills,) float32, skill k at index k - 1 (frequency rank);
* ``quanta/mean_loss`` = Σ_k p_k loss_k, the loss on the data distribution (no sampling error in the skill
  mixture either), and ``quanta/mean_acc`` = Σ_k p_k acc_k;
* ``quanta/skills_learned``: the number of skills with accuracy >= ``threshold`` (default 0.9; chance is 0.5);
* ``quanta/entropy_rate``: H(ε), for reference next to mean_loss.

Cost: one forward pass over n_skills x examples_per_skill sequences of n_bits + code tokens per evaluation, in
chunks of ``chunk`` sequences; only the answer position is read out (a hook on the final LayerNorm), so
memory does not grow with the vocabulary of n_skills + 2 tokens. Storage: 8 bytes per skill per evaluation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..offline import load_run
from .registry import Option, ProbeContext, register, requires_data_kind

__all__ = ["DEFAULT_EXAMPLES", "DEFAULT_THRESHOLD", "probe_run", "skill_metrics", "summary"]

DEFAULT_EXAMPLES = 32
DEFAULT_THRESHOLD = 0.9
# Sequences per forward pass of the probe.
_CHUNK = 1024


def _check_source(source: Any, field: str = "instruments.quanta") -> None:
    if not hasattr(source, "skill_batch") or not hasattr(source, "skill_probs"):
        kind = (source.describe() or {}).get("kind", type(source).__name__) if hasattr(source, "describe") else "?"
        raise ConfigError(f"quanta needs a quanta source (data.kind = 'quanta'), not {kind!r}", field=field)


def _answer_logits(model: torch.nn.Module, inputs: torch.Tensor, pos: int) -> torch.Tensor:
    """Logits (B, vocab) at position ``pos``. On a scalescope GPT the final LayerNorm's output is cut to that
    position by a forward hook, so the read-out never builds the (B, T, vocab) tensor."""
    ln_f = getattr(model, "ln_f", None)
    if not isinstance(ln_f, torch.nn.Module):
        return model(inputs)[:, pos]
    handle = ln_f.register_forward_hook(lambda _m, _i, out: out[:, pos : pos + 1])
    try:
        return model(inputs)[:, 0]
    finally:
        handle.remove()


@torch.no_grad()
def skill_metrics(
    model: torch.nn.Module,
    source: Any,
    *,
    seq_len: int,
    examples_per_skill: int = DEFAULT_EXAMPLES,
    device: torch.device | str = "cpu",
    chunk: int = _CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """(loss (n_skills,), accuracy (n_skills,)), float32, on the fixed probe set: see the module doc."""
    _check_source(source)
    K, E = int(source.n_skills), int(examples_per_skill)
    eps = float(source.label_noise)
    skills = np.repeat(np.arange(K), E)
    loss_sum = np.zeros(K, dtype=np.float64)
    acc_sum = np.zeros(K, dtype=np.float64)
    # The answer is the target at the code's last position (sources without answer_pos: the token after the bits).
    pos = int(getattr(source, "answer_pos", source.n_bits))
    for c, start in enumerate(range(0, len(skills), chunk)):
        sk = skills[start : start + chunk]
        b = source.skill_batch(sk, c, seq_len)
        logits = _answer_logits(model, b.inputs.to(device), pos).float()
        logp = F.log_softmax(logits, dim=-1)
        clean = b.targets[:, pos].to(device)
        lq = logp.gather(-1, clean[:, None])[:, 0]
        lr = logp.gather(-1, (1 - clean)[:, None])[:, 0]
        # Expected cross-entropy under the noisy label; ε = 0 drops the flipped term (avoid 0 * -inf).
        loss = -(1.0 - eps) * lq - (eps * lr if eps > 0 else 0.0)
        acc = (logits.argmax(-1) == clean).double()
        np.add.at(loss_sum, sk, loss.double().cpu().numpy())
        np.add.at(acc_sum, sk, acc.cpu().numpy())
    return (loss_sum / E).astype(np.float32), (acc_sum / E).astype(np.float32)


def summary(
    loss: np.ndarray, acc: np.ndarray, probs: np.ndarray, threshold: float, entropy_rate: float
) -> dict[str, float]:
    """The scalars of one evaluation: frequency-weighted mean loss and accuracy, skills learned."""
    p = np.asarray(probs, dtype=np.float64)
    return {
        "quanta/mean_loss": float(p @ np.asarray(loss, dtype=np.float64)),
        "quanta/mean_acc": float(p @ np.asarray(acc, dtype=np.float64)),
        "quanta/skills_learned": float(int((np.asarray(acc) >= threshold).sum())),
        "quanta/entropy_rate": float(entropy_rate),
    }


def _check_options(examples_per_skill: Any, threshold: Any, prefix: str = "") -> None:
    if not isinstance(examples_per_skill, int) or isinstance(examples_per_skill, bool) or examples_per_skill < 1:
        raise ConfigError(
            f"expected a positive integer, got {examples_per_skill!r}", field=f"{prefix}examples_per_skill"
        )
    if not isinstance(threshold, (int, float)) or not 0.5 < threshold <= 1:
        raise ConfigError(f"expected an accuracy in (0.5, 1], got {threshold!r}", field=f"{prefix}threshold")


@register(
    "quanta",
    options={
        "examples_per_skill": Option(int, ge=1),
        # Above chance (0.5): a skill counts as learned when its accuracy reaches this.
        "threshold": Option(float, gt=0.5, le=1),
    },
)
def make(examples_per_skill: int = DEFAULT_EXAMPLES, threshold: float = DEFAULT_THRESHOLD) -> Any:
    """Per-skill loss and accuracy (options: ``examples_per_skill`` probe examples of each skill, ``threshold``
    accuracy at which a skill counts as learned)."""
    _check_options(examples_per_skill, threshold, "instruments.quanta.")

    def probe(ctx: ProbeContext) -> dict[str, Any]:
        src: Any = ctx.source
        loss, acc = skill_metrics(
            ctx.model, src, seq_len=ctx.seq_len, examples_per_skill=examples_per_skill, device=ctx.device
        )
        out: dict[str, Any] = {"quanta/skill_loss": loss, "quanta/skill_acc": acc}
        out.update(summary(loss, acc, src.skill_probs, float(threshold), float(src.entropy_rate)))
        return out

    return requires_data_kind(probe, "quanta", "quanta")


def probe_run(
    run_dir: str | Path,
    step: int | None = None,
    *,
    examples_per_skill: int = DEFAULT_EXAMPLES,
    threshold: float = DEFAULT_THRESHOLD,
) -> dict[str, Any]:
    """Per-skill loss and accuracy of a stored run's model at ``step`` (default: latest) and their summary
    (``scalescope probe quanta RUN_DIR``). Bad arguments raise :class:`ConfigError` naming the argument."""
    _check_options(examples_per_skill, threshold)
    run = load_run(run_dir, step, attention=None)
    _check_source(run.source, field="data.kind")
    src: Any = run.source
    with torch.random.fork_rng(devices=[]):
        loss, acc = skill_metrics(
            run.model, src, seq_len=run.cfg.model.seq_len, examples_per_skill=examples_per_skill, device=run.device
        )
    out = summary(loss, acc, src.skill_probs, threshold, src.entropy_rate)
    return {
        "run_dir": str(run.run_dir.path),
        "step": run.step,
        "n_skills": src.n_skills,
        "alpha": src.alpha,
        "examples_per_skill": examples_per_skill,
        "threshold": threshold,
        **{k.removeprefix("quanta/"): (None if math.isnan(v) else v) for k, v in out.items()},
        "skill_probs": [float(x) for x in src.skill_probs],
        "skill_loss": [float(x) for x in loss],
        "skill_acc": [float(x) for x in acc],
    }
