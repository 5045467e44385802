"""The training loop: one run, a pure function of its config, writing only its own run directory.

Resume is exact: a checkpoint (:class:`scalescope.checkpoint.TrainState`) holds the model, the optimizer,
every RNG, the step (the scheduler and the data position are pure functions of it, see ``schedule.py``
and ``data/base.py``), the running train-loss accumulators and the length of ``metrics.jsonl`` at that
moment. The run directory's files are written through :class:`scalescope.rundir.RunDir`.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import config as C
from . import instruments as instr
from .checkpoint import TrainState, load_checkpoint, restore_rng_state, rng_state, save_checkpoint, save_weights
from .data import build_source
from .data.base import Batch, Source
from .device import pick_device
from .model import GPT
from .optim import make_optimizer
from .rundir import DONE_STATES, RunDir
from .runmeta import run_meta
from .schedule import budget_steps, is_eval_step, lr_at


@dataclass
class Outcome:
    """What one run came to: what :func:`train` returns and executors hand back to the driver."""

    id: str
    status: str  # finished | diverged | failed
    steps: int = 0
    final_val_loss: float | None = None
    error: str | None = None
    skipped: bool = False  # True when the run was already done and nothing was computed


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
    if st.get("state") in DONE_STATES:
        return Outcome(rid, st["state"], st.get("step", 0), st.get("final_val_loss"), skipped=True)
    try:
        return _train(cfg, rd, Path(cache_dir) if cache_dir else rd.local_cache_dir, threads)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # one run's crash must not take the sweep down: record it and move on
        msg = f"{type(e).__name__}: {e}"
        rd.write_error_log(traceback.format_exc())
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

    # --- state that a checkpoint carries (see checkpoint.TrainState) ----------------------------------
    step, last_eval = 0, -1
    loss_sum, loss_n, wall, train_time_since = 0.0, 0, 0.0, 0.0
    tokens_since, gnorm_last = 0, float("nan")
    ref_loss: float | None = None
    n_evals = 0
    ckpt = rd.checkpoint_path
    if ckpt.exists():
        state = load_checkpoint(ckpt)
        model.load_state_dict(state.model)
        opt.load_state_dict(state.optimizer)
        restore_rng_state(state.rng)
        step, last_eval = state.step, state.last_eval
        loss_sum, loss_n, wall = state.loss_sum, state.loss_n, state.wall
        train_time_since, tokens_since = state.train_time_since, state.tokens_since
        ref_loss, n_evals, gnorm_last = state.ref_loss, state.n_evals, state.gnorm_last
        rd.truncate_metrics(state.metrics_size)
    else:
        rd.truncate_metrics(0)
        rd.write_meta(run_meta(cfg, model, source, total, device))

    def checkpoint() -> None:
        save_checkpoint(
            ckpt,
            TrainState(
                model=model.state_dict(),
                optimizer=opt.state_dict(),
                rng=rng_state(),
                step=step,
                last_eval=last_eval,
                loss_sum=loss_sum,
                loss_n=loss_n,
                wall=wall,
                train_time_since=train_time_since,
                tokens_since=tokens_since,
                ref_loss=ref_loss,
                n_evals=n_evals,
                gnorm_last=gnorm_last,
                metrics_size=rd.metrics_size(),
            ),
        )

    def row(metric: str, value: float) -> dict[str, Any]:
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
    val: float | None = None
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
                save_weights(rd.weights_path(step), model.state_dict())
            if not math.isfinite(val):
                return _diverged(rd, step, tokens_per_step, f"validation loss {val}")
            checkpoint()
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
            checkpoint()
            rd.write_status("running", step=step, tokens=step * tokens_per_step, total_steps=total)

    rd.write_status(
        "finished", step=step, tokens=step * tokens_per_step, total_steps=total, final_val_loss=val, wall_s=wall
    )
    return Outcome(rd.id, "finished", step, val)


def _diverged(rd: RunDir, step: int, tokens_per_step: int, why: str) -> Outcome:
    rd.write_status("diverged", step=step, tokens=step * tokens_per_step, reason=why)
    return Outcome(rd.id, "diverged", step, error=why)


def _run_instruments(
    probes: list[instr.Instrument],
    n_evals: int,
    model: GPT,
    opt: torch.optim.Optimizer,
    source: Source,
    cfg: C.RunConfig,
    device: torch.device,
    step: int,
    total: int,
    rd: RunDir,
    row: Callable[[str, float], dict[str, Any]],
) -> list[dict[str, Any]]:
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
