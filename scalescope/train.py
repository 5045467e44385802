"""The training loop: one run, a pure function of its config, writing only its own run directory.

Resume is exact: a checkpoint holds the model, the optimizer, every RNG, the step (the scheduler and
the data position are pure functions of it, see ``schedule.py`` and ``data/base.py``), the running
train-loss accumulators and the length of ``metrics.jsonl`` at that moment.
"""

from __future__ import annotations

import math
import os
import platform
import random
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import config as C
from . import instruments as instr
from .data import build_source
from .data.base import Batch, Source
from .model import GPT
from .rundir import RunDir, atomic_write_bytes, atomic_write_json
from .schedule import is_eval_step, lr_at


@dataclass
class Outcome:
    id: str
    status: str  # finished | diverged | failed
    steps: int = 0
    final_val_loss: float | None = None
    error: str | None = None
    skipped: bool = False  # True when the run was already done and nothing was computed


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise C.ConfigError("CUDA requested but not available", field="train.device")
    return torch.device(name)


def budget_steps(cfg: C.RunConfig, flops_per_token: float) -> int:
    """Optimizer steps that spend the token or FLOP budget (rounded up: at least one step)."""
    tokens_per_step = cfg.train.batch_size * cfg.model.seq_len
    tokens = cfg.train.tokens if cfg.train.tokens is not None else cfg.train.flops / flops_per_token
    return max(1, math.ceil(tokens / tokens_per_step))


def make_optimizer(model: torch.nn.Module, cfg: C.TrainConfig, *, fused: bool | None = None) -> torch.optim.Optimizer:
    """AdamW or SGD+momentum. Weight decay applies to matrices only (not biases, norms) as in GPT-2.

    ``fused``: torch's fused AdamW kernel (None: torch's default choice)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def split_micro(batch: Batch, micro: int) -> list[Batch]:
    n = batch.inputs.shape[0]
    if micro >= n:
        return [batch]
    out = []
    for i in range(0, n, micro):
        m = None if batch.loss_mask is None else batch.loss_mask[i : i + micro]
        out.append(Batch(batch.inputs[i : i + micro], batch.targets[i : i + micro], m))
    return out


def accumulate_gradients(
    model: GPT, batch: Batch, micro: int, device: torch.device, grad_clip: float
) -> tuple[float, float]:
    """Forward and backward over the micro-batches of ``batch`` (gradients averaged over the whole
    batch), then clip. Returns (mean loss, gradient norm before clipping). The optimizer step is the
    caller's, so it can first check for divergence."""
    parts = split_micro(batch, micro)
    losses = []
    for mb in parts:
        mb = mb.to(device)
        loss = model.loss(mb.inputs, mb.targets, mb.loss_mask)
        (loss / len(parts)).backward()
        losses.append(loss.detach())
    clip = grad_clip if grad_clip > 0 else float("inf")
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    # One host sync per step, not one per micro-batch.
    return float(torch.stack(losses).mean()), float(gnorm)


@torch.no_grad()
def evaluate(model: GPT, source: Source, cfg: C.RunConfig, device: torch.device) -> float:
    """Mean validation loss over ``eval_batches`` fixed validation batches."""
    was_training = model.training
    model.eval()
    bs = cfg.train.micro_batch_size or cfg.train.batch_size
    total = 0.0
    for i in range(cfg.train.eval_batches):
        b = source.batch("val", i, bs, cfg.model.seq_len).to(device)
        total += float(model.loss(b.inputs, b.targets, b.loss_mask))
    model.train(was_training)
    return total / cfg.train.eval_batches


def _rng_state() -> dict[str, Any]:
    s = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _meta(cfg: C.RunConfig, model: GPT, source: Source, total_steps: int, device: torch.device) -> dict:
    pc = model.param_counts()
    desc = source.describe()
    return {
        "params_total": pc.total,
        "params_embedding": pc.embedding,
        "params_nonembedding": pc.nonembedding,
        "flops_per_token": model.flops_per_token(),
        "flops_convention": "6N + 12*n_layer*seq_len*d_model, N = non-embedding params (PaLM app. B)",
        "total_steps": total_steps,
        "tokens_per_step": cfg.train.batch_size * cfg.model.seq_len,
        "tokens_budget": total_steps * cfg.train.batch_size * cfg.model.seq_len,
        "vocab_size": source.vocab_size,
        "entropy_rate": source.entropy_rate,
        "source": desc,
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": np.__version__},
        "hardware": {
            "device": str(device),
            "cuda": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
        },
    }


def train(
    cfg: C.RunConfig,
    run_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    threads: int | None = None,
) -> Outcome:
    """Train (or resume, or skip) the run described by ``cfg`` in ``run_dir``. Never raises for a run
    that fails: the failure is recorded in the run's status and returned."""
    rd = RunDir(Path(run_dir))
    rid = rd.id
    st = rd.read_status()
    if st.get("state") in ("finished", "diverged"):
        return Outcome(rid, st["state"], st.get("step", 0), st.get("final_val_loss"), skipped=True)
    try:
        return _train(cfg, rd, Path(cache_dir) if cache_dir else rd.path / "cache", threads)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # one run's crash must not take the sweep down: record it and move on
        msg = f"{type(e).__name__}: {e}"
        (rd.path / "error.log").write_text(traceback.format_exc())
        rd.write_status("failed", error=msg)
        return Outcome(rid, "failed", error=msg)


def _train(cfg: C.RunConfig, rd: RunDir, cache_dir: Path, threads: int | None) -> Outcome:
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(cfg.train.device)
    tc = cfg.train
    source = build_source(cfg.data, seed=cfg.seed)
    source.prepare(cache_dir)

    torch.manual_seed(cfg.seed)
    model = GPT(cfg.model, source.vocab_size)  # initialised on the CPU: same weights on any device
    model.to(device)
    opt = make_optimizer(model, tc)
    probes = instr.build(cfg.instruments)

    fpt = model.flops_per_token()
    total = budget_steps(cfg, fpt)
    tokens_per_step = tc.batch_size * cfg.model.seq_len
    micro = tc.micro_batch_size or tc.batch_size

    # --- state that a checkpoint carries -------------------------------------------------------------
    step, last_eval = 0, -1
    loss_sum, loss_n, wall, train_time_since = 0.0, 0, 0.0, 0.0
    tokens_since, ref_loss, gnorm_last = 0, None, float("nan")
    n_evals = 0
    ckpt = rd.checkpoint_path
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
        step, last_eval = state["step"], state["last_eval"]
        loss_sum, loss_n, wall = state["loss_sum"], state["loss_n"], state["wall"]
        train_time_since, tokens_since = state["train_time_since"], state["tokens_since"]
        ref_loss, n_evals, gnorm_last = state["ref_loss"], state["n_evals"], state["gnorm_last"]
        rd.truncate_metrics(state["metrics_size"])
    else:
        rd.truncate_metrics(0)
        atomic_write_json(rd.path / "meta.json", _meta(cfg, model, source, total, device))

    def save_checkpoint() -> None:
        state = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "rng": _rng_state(),
            "step": step,
            "last_eval": last_eval,
            "loss_sum": loss_sum,
            "loss_n": loss_n,
            "wall": wall,
            "train_time_since": train_time_since,
            "tokens_since": tokens_since,
            "ref_loss": ref_loss,
            "n_evals": n_evals,
            "gnorm_last": gnorm_last,
            "metrics_size": rd.metrics_size(),
        }
        import io

        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(ckpt, buf.getvalue())

    def row(metric: str, value: float) -> dict:
        return {
            "step": step,
            "tokens": step * tokens_per_step,
            "flops": step * tokens_per_step * fpt,
            "wall_s": round(wall, 4),
            "metric": metric,
            "value": value,
        }

    rd.write_status("running", step=step, tokens=step * tokens_per_step, total_steps=total)
    model.train()
    t_wall = time.perf_counter()
    val = None
    while True:
        if is_eval_step(step, tc.eval_every, total) and step > last_eval:
            wall += time.perf_counter() - t_wall
            t_wall = time.perf_counter()
            val = evaluate(model, source, cfg, device)
            if ref_loss is None:
                ref_loss = val
            rows = [row("val_loss", val), row("lr", lr_at(min(step, total - 1), tc, total))]
            if loss_n:
                rows.append(row("train_loss", loss_sum / loss_n))
                rows.append(row("grad_norm", gnorm_last))
            if train_time_since > 0:
                rows.append(row("tokens_per_s", tokens_since / train_time_since))
            rows += _run_instruments(probes, n_evals, model, opt, source, cfg, device, step, total, rd, row)
            rd.append_metrics(rows)
            loss_sum, loss_n, train_time_since, tokens_since = 0.0, 0, 0.0, 0
            last_eval, n_evals = step, n_evals + 1
            if tc.keep_weights:
                import io

                buf = io.BytesIO()
                torch.save(model.state_dict(), buf)
                atomic_write_bytes(rd.weights_path(step), buf.getvalue())
            if not math.isfinite(val):
                return _diverged(rd, step, tokens_per_step, f"validation loss {val}")
            save_checkpoint()
            rd.write_status("running", step=step, tokens=step * tokens_per_step, total_steps=total, val_loss=val)
            t_wall = time.perf_counter()
        if step >= total:
            break

        # --- one optimizer step ---------------------------------------------------------------------
        t0 = time.perf_counter()
        lr = lr_at(step, tc, total)
        for g in opt.param_groups:
            g["lr"] = lr
        batch = source.batch("train", step, tc.batch_size, cfg.model.seq_len)
        step_loss, gnorm_last = accumulate_gradients(model, batch, micro, device, tc.grad_clip)
        if not (math.isfinite(step_loss) and math.isfinite(gnorm_last)) or (
            ref_loss is not None and step_loss > tc.diverge_factor * ref_loss
        ):
            step += 1
            wall += time.perf_counter() - t_wall
            rd.append_metrics([row("train_loss", step_loss), row("grad_norm", gnorm_last)])
            return _diverged(rd, step, tokens_per_step, f"train loss {step_loss:.4g}, grad norm {gnorm_last:.4g}")
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        loss_sum += step_loss
        loss_n += 1
        dt = time.perf_counter() - t0
        train_time_since += dt
        tokens_since += tokens_per_step
        if step % tc.checkpoint_every == 0 and not is_eval_step(step, tc.eval_every, total):
            wall += time.perf_counter() - t_wall
            t_wall = time.perf_counter()
            save_checkpoint()
            rd.write_status("running", step=step, tokens=step * tokens_per_step, total_steps=total)

    rd.write_status(
        "finished", step=step, tokens=step * tokens_per_step, total_steps=total, final_val_loss=val, wall_s=wall
    )
    return Outcome(rd.id, "finished", step, val)


def _diverged(rd: RunDir, step: int, tokens_per_step: int, why: str) -> Outcome:
    rd.write_status("diverged", step=step, tokens=step * tokens_per_step, reason=why)
    return Outcome(rd.id, "diverged", step, error=why)


def _run_instruments(probes, n_evals, model, opt, source, cfg, device, step, total, rd, row) -> list[dict]:
    rows = []
    for ins in probes:
        if n_evals % ins.every:
            continue
        ctx = instr.ProbeContext(
            model=model,
            optimizer=opt,
            source=source,
            step=step,
            seq_len=cfg.model.seq_len,
            batch_size=ins.batch_size or cfg.train.micro_batch_size or cfg.train.batch_size,
            device=device,
            train_cfg=cfg.train,
            lr=lr_at(min(step, total - 1), cfg.train, total),
        )
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            result = ins.probe(ctx)
        model.train(was_training)
        opt.zero_grad(set_to_none=True)  # a probe may have left gradients behind
        for key, value in result.items():
            name = key if key.startswith(ins.name) else f"{ins.name}/{key}" if key != ins.name else key
            if isinstance(value, (np.ndarray, torch.Tensor)) and np.ndim(value) > 0:
                arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
                rd.save_artifact(name, step, arr)
            else:
                rows.append(row(name, float(value)))
    return rows
