"""The training loop: one run, a pure function of its config, writing only its own run directory.

Resume is exact: a checkpoint (:class:`scalescope.checkpoint.TrainState`) holds the model, the optimizer,
every RNG, the step (the scheduler and the data position are pure functions of it, see ``schedule.py``
and ``data/base.py``), the running train-loss accumulators and the length of ``metrics.jsonl`` at that
moment. The run directory's files are written through :class:`scalescope.rundir.RunDir`.

Resume is also checked: a checkpoint records its run id, config hash and data fingerprint, and a run
refuses one that names another run, another config or other data (:func:`scalescope.checkpoint.mismatch`);
a ``finished`` status is trusted only when the metrics reach the run's last step (:func:`finished_problem`).
A finished run whose validation loss barely fell or rose at the end is flagged (:func:`numerics_flags`).
"""

from __future__ import annotations

import math
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import config as C
from . import instruments as instr
from .checkpoint import (
    TrainState,
    load_checkpoint,
    mismatch,
    restore_rng_state,
    rng_state,
    save_checkpoint,
    save_weights,
)
from .data import build_source
from .data.base import Batch, Source, fingerprint_of
from .device import autocast, check_precision, peak_flops, pick_device, set_matmul_precision
from .errors import LockLost, ScalescopeError, StoreError
from .model import Model, build_model, flops_per_token
from .optim import make_optimizer
from .rundir import DONE_STATES, RunDir, is_unwritable
from .runmeta import run_meta
from .schedule import budget_steps, is_eval_step, lr_at
from .trackers import LogConfig, Mirror, open_trackers


@dataclass
class Outcome:
    """What one run came to: what :func:`train` returns and executors hand back to the driver."""

    id: str
    status: str  # finished | diverged | failed | elsewhere (executors.base: another worker holds the run)
    steps: int = 0
    final_val_loss: float | None = None
    error: str | None = None
    skipped: bool = False  # True when the run was already done and nothing was computed
    flags: list[str] = field(default_factory=list)  # numerics flags of a finished run (numerics_flags)
    unwritable: bool = False  # it failed because the store cannot be written: the sweep stops (lab.py)


# Numerics flags (issue 12 item 6), as fractions of the run's learnable gap: initial val loss minus the
# source's entropy rate (0 when unknown). Measured on the tiny Markov config (vocab 16 and 64, 30-300 steps):
# healthy runs (lr 0.003-0.1) close 19-94% of the gap, even 8 steps at lr 0.01 close 19%, while runs at
# lr 0.3-1.0 on the 64-token chain close 6-7% (they end barely below their initial loss). Their final loss
# is set by the initialisation, not by N or D, so they are no scaling-law points.
UNDERTRAINED_FRACTION = 0.10
# Healthy runs end within 0.4-1.1% of the gap above the minimum of their last quarter of evaluations (the
# validation batches are fixed, so that is parameter noise); a rise of 5% (4.5x the largest seen) means the
# run lost a real part of its progress at the end.
UNSTABLE_FRACTION = 0.05
UNSTABLE_TAIL = 0.25  # "the end": the last quarter of the evaluations


def numerics_flags(val_losses: Sequence[float], floor: float | None = None) -> tuple[list[str], str | None]:
    """(flags, one-line reason) of a finished run from its validation losses in step order (the first is
    the untrained model's) and the source's entropy rate ``floor`` (None: unknown, taken as 0).

    ``undertrained``: the final loss closed less than :data:`UNDERTRAINED_FRACTION` of the gap between the
    initial loss and the floor. ``unstable``: the final loss exceeds the minimum over the last
    :data:`UNSTABLE_TAIL` of the evaluations (at least two) by more than :data:`UNSTABLE_FRACTION` of it.
    """
    vals = [float(v) for v in val_losses if v is not None and math.isfinite(float(v))]
    if len(vals) < 2:
        return [], None
    first, last = vals[0], vals[-1]
    gap = first - (floor if floor is not None and math.isfinite(floor) else 0.0)
    if gap <= 0:  # started at (or below) the floor: nothing to learn, nothing to judge
        return [], None
    flags, why = [], []
    closed = (first - last) / gap
    if closed < UNDERTRAINED_FRACTION:
        flags.append("undertrained")
        why.append(
            f"val loss {first:.4g} -> {last:.4g} closed {closed:.1%} of the gap to the floor "
            f"(< {UNDERTRAINED_FRACTION:.0%})"
        )
    if len(vals) >= 3:
        tail = vals[-max(2, math.ceil(UNSTABLE_TAIL * len(vals))) :]
        rise = (last - min(tail)) / gap
        if rise > UNSTABLE_FRACTION:
            flags.append("unstable")
            why.append(
                f"val loss rose from {min(tail):.4g} to {last:.4g} over the last {len(tail)} evaluations "
                f"({rise:.1%} of the gap, > {UNSTABLE_FRACTION:.0%})"
            )
    return flags, ("; ".join(why) or None)


def total_steps_of(cfg: C.RunConfig) -> int:
    """The run's optimizer steps, without building the model or the data: the budget depends on FLOPs per
    token only through the non-embedding parameter count, which does not depend on the vocabulary."""
    return budget_steps(cfg, flops_per_token(cfg.model, 1))


def finished_problem(cfg: C.RunConfig, rd: RunDir) -> str | None:
    """None when a ``finished`` status is borne out by the metrics (the last ``val_loss`` row is at the
    run's last step); else what is wrong, in one line. A status is one small file anyone can edit; the
    metrics are what the run actually did."""
    total = total_steps_of(cfg)
    try:
        row = rd.last_metric_row("val_loss")
    except (OSError, ValueError) as e:
        return f"{rd.metrics_path} cannot be read ({type(e).__name__})"
    last = None if row is None else row.get("step")
    if last != total:
        return f"the last val_loss in {rd.metrics_path} is at step {last}, not at the run's last step {total}"
    return None


def _warn(rd: RunDir, warnings: list[str], text: str) -> None:
    """A warning on stderr and, through ``warnings``, in every later status of this run."""
    warnings.append(text)
    print(f"warning: run {rd.id}: {text}", file=sys.stderr, flush=True)


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
    model: Model, batch: Batch, micro: int, device: torch.device, grad_clip: float, precision: str = "fp32"
) -> tuple[float, float]:
    """Forward and backward over the micro-batches of ``batch`` (gradients averaged over the whole
    batch), then clip. Returns (mean loss, gradient norm before clipping). The optimizer step is the
    caller's, so it can first check for divergence. ``precision`` "bf16" runs the forward pass under
    bfloat16 autocast (the backward follows it; gradients land in the float32 weights)."""
    parts = split_micro(batch, micro)
    losses = []
    for mb in parts:
        mb = mb.to(device)
        with autocast(device, precision):
            loss = model.loss(mb.inputs, mb.targets, mb.loss_mask)
        (loss / len(parts)).backward()
        losses.append(loss.detach())
    clip = grad_clip if grad_clip > 0 else float("inf")
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    # One host sync per step, not one per micro-batch.
    return float(torch.stack(losses).mean()), float(gnorm)


@torch.no_grad()
def evaluate(model: Model, source: Source, cfg: C.RunConfig, device: torch.device) -> dict[str, float]:
    """The evaluation's metrics: ``val_loss``, the mean validation loss over ``eval_batches`` fixed validation
    batches, and ``val_bpb``, bits per byte of the same targets, for sources that know the bytes of text each
    token stands for (``token_bytes()``: text corpora): the summed loss in nats over the summed bytes of the
    target tokens, divided by ln 2, comparable across tokenizers unlike a loss per token (as in Gao et al.
    2020, The Pile). A finite data set (``source.finite``) is evaluated whole instead, both splits:
    :func:`evaluate_finite`."""
    if getattr(source, "finite", False):
        return evaluate_finite(model, source, cfg, device)
    was_training = model.training
    model.eval()
    bs = cfg.train.micro_batch_size or cfg.train.batch_size
    token_bytes = source.token_bytes() if hasattr(source, "token_bytes") else None
    total, nats, n_bytes = 0.0, 0.0, 0
    for i in range(cfg.train.eval_batches):
        b = source.batch("val", i, bs, cfg.model.seq_len)
        with autocast(device, cfg.train.precision):
            loss = float(
                model.loss(
                    b.inputs.to(device), b.targets.to(device), None if b.loss_mask is None else b.loss_mask.to(device)
                )
            )
        total += loss
        if token_bytes is not None and b.loss_mask is None:
            nats += loss * b.targets.numel()
            n_bytes += int(token_bytes[b.targets.numpy()].sum())
    model.train(was_training)
    out = {"val_loss": total / cfg.train.eval_batches}
    if n_bytes:
        out["val_bpb"] = nats / n_bytes / math.log(2)
    return out


# Examples per forward pass when a finite data set is evaluated whole.
EVAL_CHUNK = 4096


@torch.no_grad()
def evaluate_finite(model: Model, source: Any, cfg: C.RunConfig, device: torch.device) -> dict[str, float]:
    """Loss and accuracy on the whole validation set (``val_loss``, ``val_acc``) and on the whole training set
    with its training labels (``trainset_loss``, ``trainset_acc``; the labels after any random-label phase):
    train and test error on the schedule, as generalization studies need. Accuracy is the argmax at the
    counted position (the answer)."""
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    for split, name in (("val", "val"), ("train", "trainset")):
        loss_sum, correct, n = 0.0, 0, 0
        for b, size in source.full_batches(split, EVAL_CHUNK):
            b = b.to(device)
            with autocast(device, cfg.train.precision):
                logits = model(b.inputs)  # one forward pass for both the loss and the predictions
                loss = model.loss_from_logits(logits, b.targets, b.loss_mask)
            pred = logits[:, -1].argmax(-1)
            correct += int((pred == b.targets[:, -1]).sum())
            loss_sum += float(loss) * size
            n += size
        out[f"{name}_loss"], out[f"{name}_acc"] = loss_sum / n, correct / n
    model.train(was_training)
    return out


META_MISSING = "meta.json is missing or unreadable"


def _rewrite_meta(cfg: C.RunConfig, rd: RunDir, cache_dir: Path) -> None:
    """Write the ``meta.json`` of a run that ended without one (deleted, or damaged and moved aside): the
    sizes and budget are pure functions of the config; versions and hardware are this machine's."""
    source = build_source(cfg.data, seed=cfg.seed)
    source.prepare(cache_dir)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, source.vocab_size)
    fpt = flops_per_token(cfg.model, source.vocab_size)
    rd.write_meta(run_meta(cfg, model, source, budget_steps(cfg, fpt), torch.device("cpu")))


def done_outcome(cfg: C.RunConfig, rd: RunDir) -> tuple[Outcome | None, str | None]:
    """(the skipped Outcome of a run that is done, None), or (None, why a ``finished`` status cannot be
    trusted), or (None, None) for a run still to train. The one test of "done" that the driver (planning),
    the worker (before it takes the run's lock) and :func:`train` share."""
    st = rd.read_status()
    if st.get("state") not in DONE_STATES:
        return None, None
    problem = finished_problem(cfg, rd) if st.get("state") == "finished" else None
    if problem is not None:
        return None, problem
    if not rd.read_meta():  # without meta.json the run drops out of every table and fit: rewrite it
        return None, META_MISSING
    flags = [str(f) for f in st["flags"]] if isinstance(st.get("flags"), list) else []
    return Outcome(rd.id, st["state"], st.get("step", 0), st.get("final_val_loss"), skipped=True, flags=flags), None


def train(
    cfg: C.RunConfig,
    run_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    threads: int | None = None,
    guard: Callable[[], None] | None = None,
    log: LogConfig | None = None,
    experiment: str = "",
) -> Outcome:
    """Train (or resume, or skip) the run described by ``cfg`` in ``run_dir``. Never raises for a run
    that fails: the failure is recorded in the run's status and returned. ``guard`` (the worker's
    ``RunLock.confirm``) is called before each group of writes and raises
    :class:`~scalescope.errors.LockLost` when the run is no longer this worker's: then nothing more is
    written, not even a failed status (the directory has another owner). ``log``: the experiment's
    ``[log]`` table, mirrors of the metrics in trackers (:mod:`scalescope.trackers`), named after
    ``experiment``; they only observe, and never fail the run."""
    mirrors: list[Mirror] = []
    out = _train_or_record(cfg, RunDir(Path(run_dir)), cache_dir, threads, guard, log, experiment, mirrors)
    for m in mirrors:
        m.close(out.status if out.status in ("finished", "diverged") else "failed")
    return out


def _train_or_record(
    cfg: C.RunConfig,
    rd: RunDir,
    cache_dir: str | Path | None,
    threads: int | None,
    guard: Callable[[], None] | None,
    log: LogConfig | None,
    experiment: str,
    mirrors: list[Mirror],
) -> Outcome:
    rid = rd.id
    warnings: list[str] = []
    done, problem = done_outcome(cfg, rd)
    if done is not None:
        return done
    cache = Path(cache_dir) if cache_dir else rd.local_cache_dir
    try:
        if problem == META_MISSING:  # a run that ended: only its meta.json is to be written again
            if guard is not None:
                guard()
            try:
                _rewrite_meta(cfg, rd, cache)
                print(f"warning: run {rid}: {problem}; rewritten", file=sys.stderr, flush=True)
            except (OSError, ScalescopeError) as e:  # the run itself ended well: keep its status as it is
                print(f"warning: run {rid}: {problem} and cannot be rewritten ({e})", file=sys.stderr, flush=True)
                st = rd.read_status()
                return Outcome(rid, st["state"], st.get("step", 0), st.get("final_val_loss"), skipped=True)
            done, problem = done_outcome(cfg, rd)
            if done is not None:
                return done
        if problem is not None:
            _warn(rd, warnings, f"status says finished but {problem}: resuming the run")
        return _train(cfg, rd, cache, threads, warnings, guard, log, experiment, mirrors)
    except KeyboardInterrupt:
        raise
    except LockLost as e:  # the run has another owner now: write nothing more (its mirrors are theirs too)
        mirrors.clear()
        return Outcome(rid, "failed", error=str(e))
    except Exception as e:  # one run's crash must not take the sweep down: record it and move on
        # Our own errors are one line that names the file; anything else keeps its type for the log.
        msg = str(e) if isinstance(e, StoreError) else f"{type(e).__name__}: {e}"
        # A store that cannot be written (disk full, read-only) fails this write too: the OSError then
        # reaches the worker (executors.base.execute), which reports it on the terminal instead.
        rd.write_error_log(traceback.format_exc())
        rd.write_status("failed", error=msg, **({"warnings": warnings} if warnings else {}))
        return Outcome(rid, "failed", error=msg, unwritable=is_unwritable(e))


def _train(
    cfg: C.RunConfig,
    rd: RunDir,
    cache_dir: Path,
    threads: int | None,
    warnings: list[str],
    guard: Callable[[], None] | None = None,
    log: LogConfig | None = None,
    experiment: str = "",
    mirrors: list[Mirror] | None = None,
) -> Outcome:
    def own() -> None:  # still this worker's run? (raises LockLost otherwise; see train)
        if guard is not None:
            guard()

    if threads:
        torch.set_num_threads(threads)
    device = pick_device(cfg.train.device)
    tc = cfg.train
    set_matmul_precision(device, tc.tf32)
    check_precision(device, tc.precision)
    source = build_source(cfg.data, seed=cfg.seed)
    source.prepare(cache_dir)
    # What the data is now (a corpus's content hash, read from disk): it must be what the run was
    # configured with (data.fingerprint, kept in the stored config) and what its checkpoint was taken on.
    data_fp = fingerprint_of(source)
    cfg_fp = getattr(cfg.data, "fingerprint", None)
    if cfg_fp is not None and cfg_fp != data_fp:
        raise StoreError(
            f"{rd.config_path}: data.fingerprint is {cfg_fp} but the data now hashes to {data_fp} "
            f"(was {getattr(cfg.data, 'path', 'the source')} edited?); refusing to train this run on other data"
        )
    config_hash = C.run_id(cfg)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, source.vocab_size)  # initialised on the CPU: same weights on any device
    model.to(device)
    opt = make_optimizer(model, tc)
    probes = instr.build(cfg.instruments)
    # A model whose readout is solved in closed form (random features): its one "step" is that solve.
    closed_form = bool(getattr(model, "closed_form", False))
    # Steps at which the source changes the training objective (FiniteSource.phase_starts).
    phase_starts: tuple[int, ...] = tuple(getattr(source, "phase_starts", ()))

    fpt = flops_per_token(cfg.model, source.vocab_size)
    total = budget_steps(cfg, fpt)
    peak, _ = peak_flops(device, tc.precision, tc.tf32)
    tokens_per_step = tc.batch_size * cfg.model.seq_len
    micro = tc.micro_batch_size or tc.batch_size

    # --- state that a checkpoint carries (see checkpoint.TrainState) ----------------------------------
    step, last_eval = 0, -1
    loss_sum, loss_n, wall, train_time_since = 0.0, 0, 0.0, 0.0
    tokens_since, gnorm_last = 0, float("nan")
    ref_loss: float | None = None
    n_evals = 0
    ckpt = rd.checkpoint_path
    # An unreadable checkpoint (zero bytes, truncated, not plain data) fails the run with a line naming
    # it rather than restarting: scalescope writes checkpoints atomically, so a damaged one means outside
    # damage that the user should see, and a restart would irrecoverably discard the run's progress on
    # what may be a transient read error. Deleting the file (or `scalescope check --repair`) restarts it.
    state: TrainState | None = load_checkpoint(ckpt) if ckpt.exists() else None
    if state is not None:
        diff = mismatch(state, run_id=rd.id, config_hash=config_hash, data_fingerprint=data_fp)
        if diff:
            raise StoreError(
                f"{ckpt}: refusing to resume from a checkpoint of another run or other data: {diff}; "
                "delete it to restart the run from step 0"
            )
        # False: metrics.jsonl lost rows this checkpoint covers (helper contract of RunDir.truncate_metrics);
        # they cannot be recomputed without replaying, so the run restarts from step 0.
        if rd.truncate_metrics(state.metrics_size) is False:
            _warn(
                rd,
                warnings,
                f"{rd.metrics_path} is shorter than the {state.metrics_size} bytes that {ckpt} covers: "
                "restarting the run from step 0",
            )
            state = None
    if state is not None:
        model.load_state_dict(state.model)
        opt.load_state_dict(state.optimizer)
        restore_rng_state(state.rng)
        step, last_eval = state.step, state.last_eval
        loss_sum, loss_n, wall = state.loss_sum, state.loss_n, state.wall
        train_time_since, tokens_since = state.train_time_since, state.tokens_since
        ref_loss, n_evals, gnorm_last = state.ref_loss, state.n_evals, state.gnorm_last
        if not rd.read_meta():  # lost (or unreadable) meta.json: without it the run drops out of fits
            rd.write_meta(run_meta(cfg, model, source, total, device))
    else:
        rd.truncate_metrics(0)
        rd.write_meta(run_meta(cfg, model, source, total, device))
    mirror = None
    if log is not None and log.any():  # opened now that the resume point is known; train() closes it
        start = state.step if state is not None else None
        # What metrics.jsonl already holds (it was just truncated to the checkpoint): mirrored first, so a
        # tracker holds every step even when switched on mid-run or when an earlier attempt lost its buffer.
        history = [r for r in rd.read_metrics() if r.get("step", 0) <= start] if start is not None else []
        mirror = open_trackers(
            log, rd.path, rd.id, C.to_dict(cfg), experiment=experiment or rd.id, start_step=start, history=history
        )
        if mirrors is not None:
            mirrors.append(mirror)
        warnings.extend(mirror.warnings)  # a tracker that could not open: said on stderr and in the status
    extra: dict[str, Any] = {"warnings": warnings} if warnings else {}

    def append(rows: list[dict[str, Any]]) -> None:
        rd.append_metrics(rows)
        if mirror is not None:
            mirror.log(rows)

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
                run_id=rd.id,
                config_hash=config_hash,
                data_fingerprint=data_fp,
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

    rd.write_status("running", step=step, tokens=step * tokens_per_step, total_steps=total, **extra)
    model.train()
    t_wall = time.perf_counter()
    val: float | None = None
    while True:
        if is_eval_step(step, tc.eval_every, total) and step > last_eval:
            wall += time.perf_counter() - t_wall
            t_wall = time.perf_counter()
            measured = evaluate(model, source, cfg, device)
            val = measured["val_loss"]
            if ref_loss is None:
                # The divergence test compares train losses with this: on a finite data set, the training set's.
                ref_loss = measured.get("trainset_loss", val)
            rows = [row("val_loss", val), row("lr", lr_at(min(step, total - 1), tc, total))]
            rows += [row(k, v) for k, v in measured.items() if k != "val_loss"]
            if loss_n:
                rows.append(row("train_loss", loss_sum / loss_n))
                rows.append(row("grad_norm", gnorm_last))
            if train_time_since > 0:
                rows.append(row("tokens_per_s", tokens_since / train_time_since))
                if peak:  # model FLOPs utilization against the GPU's data-sheet peak (device.peak_flops)
                    rows.append(row("mfu", tokens_since / train_time_since * fpt / peak))
            rows += _run_instruments(probes, n_evals, model, opt, source, cfg, device, step, total, rd, row)
            own()
            append(rows)
            loss_sum, loss_n, train_time_since, tokens_since = 0.0, 0, 0.0, 0
            last_eval, n_evals = step, n_evals + 1
            if tc.keep_weights:
                save_weights(rd.weights_path(step), model.state_dict())
            if not math.isfinite(val):
                return _diverged(rd, step, tokens_per_step, f"validation loss {val}", extra)
            checkpoint()
            rd.write_status(
                "running", step=step, tokens=step * tokens_per_step, total_steps=total, val_loss=val, **extra
            )
            t_wall = time.perf_counter()
        if step >= total:
            break

        # --- one optimizer step ---------------------------------------------------------------------
        t0 = time.perf_counter()
        lr = lr_at(step, tc, total)
        for g in opt.param_groups:
            g["lr"] = lr
        batch = source.batch("train", step, tc.batch_size, cfg.model.seq_len)
        if closed_form:
            step_loss, gnorm_last = _solve_readout(model, source, step, cfg, device)
        else:
            step_loss, gnorm_last = accumulate_gradients(model, batch, micro, device, tc.grad_clip, tc.precision)
        if step in phase_starts and step > 0:
            # The objective changes here (random_label_steps: true labels replace the memorized random ones):
            # the loss jump is the experiment, not a divergence; this step's loss is the new reference.
            ref_loss = step_loss
        if not (math.isfinite(step_loss) and math.isfinite(gnorm_last)) or (
            ref_loss is not None and step_loss > tc.diverge_factor * ref_loss
        ):
            step += 1
            wall += time.perf_counter() - t_wall
            own()
            append([row("train_loss", step_loss), row("grad_norm", gnorm_last)])
            why = f"train loss {step_loss:.4g}, grad norm {gnorm_last:.4g}"
            return _diverged(rd, step, tokens_per_step, why, extra)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        loss_sum += step_loss
        loss_n += 1
        dt = time.perf_counter() - t0
        train_time_since += dt
        tokens_since += tokens_per_step
        if tc.log_every and step % tc.log_every == 0 and not is_eval_step(step, tc.eval_every, total):
            # Between evaluations: the mean training loss since the last row (the evaluation step writes its
            # own). Not checkpointed separately: the accumulators it resets are in the checkpoint.
            wall += time.perf_counter() - t_wall
            t_wall = time.perf_counter()
            own()
            append([row("train_loss", loss_sum / loss_n), row("grad_norm", gnorm_last)])
            loss_sum, loss_n = 0.0, 0
        if step % tc.checkpoint_every == 0 and not is_eval_step(step, tc.eval_every, total):
            wall += time.perf_counter() - t_wall
            t_wall = time.perf_counter()
            own()
            checkpoint()
            rd.write_status("running", step=step, tokens=step * tokens_per_step, total_steps=total, **extra)

    # Numerics flags from every evaluation of the run (before a resume too: they are in metrics.jsonl). On a
    # finite data set they judge the training-set loss, the objective: a validation loss that rises while the
    # training set is fitted is overfitting (a finding of generalization studies), not an unstable run.
    metrics = rd.read_metrics()
    vals = {r["step"]: r["value"] for r in metrics if r.get("metric") == "val_loss"}
    if val is None and vals:  # resumed from a checkpoint at the last step: no evaluation ran in this process
        val = vals[max(vals)]
    judged = {r["step"]: r["value"] for r in metrics if r.get("metric") == "trainset_loss"} or vals
    flags, flag_reason = (
        ([], None) if closed_form else numerics_flags([judged[k] for k in sorted(judged)], source.entropy_rate)
    )
    if flags:
        extra = {**extra, "flags": flags, "flag_reason": flag_reason}
    own()
    rd.write_status(
        "finished",
        step=step,
        tokens=step * tokens_per_step,
        total_steps=total,
        final_val_loss=val,
        wall_s=wall,
        **extra,
    )
    return Outcome(rd.id, "finished", step, val, flags=flags)


def _solve_readout(model: Model, source: Any, step: int, cfg: C.RunConfig, device: torch.device) -> tuple[float, float]:
    """The closed-form model's step: its readout fitted to the whole training set (the labels in force at this
    step). Returns (training loss after the fit, 0.0 for the gradient norm: there is no gradient step)."""
    full = source.full("train", step).to(device)
    model.fit(full.inputs, full.targets, cfg.model.ridge)  # type: ignore[operator]  # RandomFeatures.fit
    with torch.no_grad():
        return float(model.loss(full.inputs, full.targets)), 0.0


def _diverged(rd: RunDir, step: int, tokens_per_step: int, why: str, extra: dict[str, Any]) -> Outcome:
    rd.write_status("diverged", step=step, tokens=step * tokens_per_step, reason=why, **extra)
    return Outcome(rd.id, "diverged", step, error=why)


def _run_instruments(
    probes: list[instr.Instrument],
    n_evals: int,
    model: Model,
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
