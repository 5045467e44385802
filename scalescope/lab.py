"""Running an experiment: prepare data once, create run directories, dispatch, show progress."""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import Any, TextIO

from . import config as C
from .data import build_source
from .errors import StoreError
from .executors import ELSEWHERE, Executor, LocalExecutor, RunSpec
from .model import flops_per_token
from .rundir import DONE_STATES, ENDED_STATES, RunDir
from .runlock import RunLock
from .schedule import budget_steps
from .store import Store
from .sweep import Experiment
from .train import Outcome, done_outcome


@dataclass
class Planned:
    cfg: C.RunConfig
    run_id: str
    tokens_total: int
    flops_total: float
    done: bool


def plan(exp: Experiment, store: Store) -> list[Planned]:
    """Prepare each distinct data source once (in this process, before any worker) and create the run
    directories. Errors in the data (missing or empty file) surface here as :class:`ConfigError`."""
    out = []
    vocab: dict[str, int] = {}
    for cfg in exp.runs:
        key = repr(cfg.data) + f"/{cfg.seed}"
        if key not in vocab:
            src = build_source(cfg.data, seed=cfg.seed)
            try:
                src.prepare(store.cache_dir)
            except C.ConfigError as e:
                raise C.ConfigError(str(e), file=exp.file) from None
            except OSError as e:  # disk full, permission lost: name what could not be written
                raise StoreError(
                    f"{e.filename or store.cache_dir}: cannot prepare the data ({e.strerror or e})"
                ) from None
            vocab[key] = src.vocab_size
        fpt = flops_per_token(cfg.model, vocab[key])
        steps = budget_steps(cfg, fpt)
        try:
            rd = store.add(cfg, experiment=exp.name)
        except OSError as e:
            where = e.filename or store.run_dir(C.run_id(cfg)).path
            raise StoreError(f"{where}: cannot create the run directory ({e.strerror or e})") from None
        tokens = steps * cfg.train.batch_size * cfg.model.seq_len
        out.append(Planned(cfg, rd.id, tokens, tokens * fpt, _really_done(cfg, rd)))
    return out


def _really_done(cfg: C.RunConfig, rd: RunDir) -> bool:
    """Done, and a ``finished`` status borne out by the metrics (``train.done_outcome``); otherwise the run
    is dispatched and its worker resumes it, saying why."""
    return done_outcome(cfg, rd)[0] is not None


def _duration(s: float) -> str:
    """45s, 6m10s, 2h03m: short at any sweep length."""
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


@dataclass
class _Seen:
    """What the progress line knows of one run."""

    tokens: int  # trained so far, as last read
    final: bool = False  # ended (or skipped as done): no more reads
    running_since: float | None = None  # when this line first saw it running, for "most recent"
    loss: float | None = None  # its latest train_loss while running


class Progress:
    """One line: runs done of total, the latest train loss of the running runs, tokens/s, elapsed, ETA.
    Rewritten in place on a terminal, printed every ``interval`` seconds otherwise (CI logs stay short).

    ``runs 3/12 | train loss 2.31 (a1b2c3) 2.05 (d4e5f6) | 41,200 tokens/s | elapsed 2m00s | ETA 6m10s``

    The ETA is remaining FLOPs over the mean FLOP rate of this sweep so far (FLOPs trained since it started
    / elapsed): FLOPs, not tokens, so that a sweep of mixed model sizes is right, and a mean over all the
    sweep's work rather than a window, which jumps when a run ends or a status is rewritten. Only what is
    trained during this sweep counts toward the rate: progress a run had when the sweep started is the
    baseline, and a run that restarts from step 0 gives its tokens back to the remaining work without
    taking them from the work done. Files are read only when the line is drawn (and the train-loss tail
    only for running runs).
    """

    WINDOW_S = 60.0  # tokens/s is shown over the last minute: the current throughput, not the mean
    MAX_WIDTH = 110  # above this, the train-loss column collapses to its compact form

    def __init__(
        self,
        planned: list[Planned],
        store: Store,
        stream: TextIO = sys.stderr,
        interval: float = 15.0,
        *,
        clock: Callable[[], float] = time.time,
    ):
        self.planned, self.store, self.stream, self.clock = planned, store, stream, clock
        self.tty = stream.isatty()
        self.interval = 0.5 if self.tty else interval
        self.t0 = clock()
        self.last_print = -math.inf
        self.width = 0  # longest line drawn so far: a rewrite pads to it so no old characters remain
        self.work_tokens = 0  # trained during this sweep, over all runs (never decreases)
        self.work_flops = 0.0
        self.history: list[tuple[float, int]] = [(self.t0, 0)]
        self.seen: dict[str, _Seen] = {}
        for p in planned:
            if p.done:
                self.seen[p.run_id] = _Seen(p.tokens_total, final=True)
                continue
            rd = store.run_dir(p.run_id)
            tokens = _int(self._status(p.run_id).get("tokens")) or 0
            # A failed status carries no tokens; the metrics tail still tells how far the run had come.
            row = rd.last_metric_row("train_loss") or {}
            self.seen[p.run_id] = _Seen(max(tokens, _int(row.get("tokens")) or 0))

    def _status(self, run_id: str) -> dict[str, Any]:
        try:
            return self.store.run_dir(run_id).read_status()
        except OSError:  # an unreadable status is the worker's failure to report, not the progress line's
            return {}

    def _observe(self, outcomes: dict[str, Outcome], now: float) -> None:
        for p in self.planned:
            s = self.seen[p.run_id]
            if s.final:
                continue
            st = self._status(p.run_id)
            state, tokens = st.get("state"), _int(st.get("tokens"))
            running = state == "running" and p.run_id not in outcomes
            if running:
                # With train.log_every the latest train_loss row is fresher than the status (written at
                # evaluations and checkpoints), so it also advances the run's position.
                row = self.store.run_dir(p.run_id).last_metric_row("train_loss")
                if row is not None:
                    value = row.get("value")
                    s.loss = float(value) if isinstance(value, (int, float)) else None
                    tokens = max(tokens or 0, _int(row.get("tokens")) or 0)
                s.running_since = s.running_since or now
            else:
                s.running_since, s.loss = None, None
            if tokens is not None:
                gained = tokens - s.tokens
                if gained > 0:
                    self.work_tokens += gained
                    self.work_flops += gained * p.flops_total / max(1, p.tokens_total)
                s.tokens = tokens  # lower after a restart from step 0: that work is to be done again
            if state in DONE_STATES or p.run_id in outcomes:
                s.final = True

    def _losses(self, compact: bool) -> str:
        order = {p.run_id: i for i, p in enumerate(self.planned)}
        live = [(rid, s) for rid, s in self.seen.items() if s.running_since is not None and s.loss is not None]
        if not live:
            return ""
        live.sort(key=lambda x: (-(x[1].running_since or 0.0), order[x[0]]))
        if len(live) <= 3 and not compact:
            return " | train loss " + " ".join(f"{s.loss:.2f} ({rid[:6]})" for rid, s in live)
        losses = [s.loss for _, s in live if s.loss is not None and math.isfinite(s.loss)]
        if not losses:
            return f" | train loss -- ({len(live)} runs)"
        lo, hi = min(losses), max(losses)
        span = f"{lo:.2f}" if lo == hi else f"{lo:.2f}-{hi:.2f}"
        return f" | train loss {span} ({len(live)} runs)"

    def eta(self, now: float) -> float | None:
        """Seconds left, or None before any work of this sweep (no rate to go by)."""
        remaining = sum(
            max(0, p.tokens_total - self.seen[p.run_id].tokens) * p.flops_total / max(1, p.tokens_total)
            for p in self.planned
            if not self.seen[p.run_id].final
        )
        if remaining <= 0:
            return 0.0
        if self.work_flops <= 0:
            return None
        return remaining / (self.work_flops / max(1e-9, now - self.t0))

    def line(self, outcomes: dict[str, Outcome]) -> str:
        now = self.clock()
        self._observe(outcomes, now)
        done = sum(1 for p in self.planned if p.done or p.run_id in outcomes)
        self.history.append((now, self.work_tokens))
        while len(self.history) > 2 and now - self.history[1][0] > self.WINDOW_S:
            self.history.pop(0)
        t_old, tok_old = self.history[0]
        rate = (self.work_tokens - tok_old) / max(1e-9, now - t_old)
        eta = self.eta(now)
        failed = sum(1 for o in outcomes.values() if o.status != "finished")
        head = f"runs {done}/{len(self.planned)}" + (f", {failed} not finished" if failed else "")
        tail = (
            f" | {rate:,.0f} tokens/s | elapsed {_duration(now - self.t0)}"
            f" | ETA {'--' if eta is None else _duration(eta)}"
        )
        text = head + self._losses(compact=False) + tail
        if len(text) > self.max_width():
            text = head + self._losses(compact=True) + tail
        if len(text) > self.max_width():  # a narrow terminal: the losses go first, they are the least needed
            text = head + tail
        return text

    def max_width(self) -> int:
        """:data:`MAX_WIDTH`, or less on a narrower terminal: a line that wraps cannot be rewritten in place
        (each redraw would start a new row). Read at each draw, since a window can be resized."""
        if not self.tty:
            return self.MAX_WIDTH
        return max(20, min(self.MAX_WIDTH, shutil.get_terminal_size((80, 24)).columns - 1))

    def _pad(self, text: str, cut: bool = True) -> str:
        """``text`` over the line drawn before (padded to the longest so far, within the terminal). The progress
        line is cut to the terminal; a message (``cut=False``) may wrap, since a newline ends it."""
        limit = self.max_width()
        if cut:
            text = text[:limit]
        self.width = min(max(self.width, len(text)), limit)
        return "\r" + text.ljust(self.width)

    def say(self, text: str) -> None:
        """A line of its own, above the progress line."""
        self.stream.write((self._pad(text, cut=False) if self.tty else text) + "\n")
        self.stream.flush()

    def update(self, outcomes: dict[str, Outcome], final: bool = False) -> None:
        now = self.clock()
        if not final and now - self.last_print < self.interval:
            return
        self.last_print = now
        text = self.line(outcomes)
        if self.tty:
            self.stream.write(self._pad(text) + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def run_experiment(
    exp: Experiment,
    store: Store,
    *,
    workers: int | None = None,
    threads: int | None = None,
    executor: Executor | None = None,
    progress: bool = True,
    on_outcome: Callable[[Outcome], None] | None = None,
    on_start: Callable[[list[Planned]], None] | None = None,
) -> list[Outcome]:
    """Train every run of ``exp`` not yet done; finished runs are skipped, unfinished ones resume.

    ``threads`` per run defaults to cores // workers; pass 1 on a machine shared with other jobs (two
    threads on a busy 2-core machine can run several times slower than one).
    """
    fresh = not store.path.exists()
    store.ensure_writable()
    try:
        planned = plan(exp, store)
    except BaseException:
        # A mistake found while preparing the data (an empty corpus, a file that cannot be read) must not
        # leave behind a store that this call created: nothing of value is in it yet. Unless another driver
        # started on the same new store meanwhile and a worker of its has begun a run (a lock or metrics).
        begun = any(
            store.run_dir(r).lock_path.exists() or store.run_dir(r).metrics_path.exists() for r in store.run_ids()
        )
        if fresh and not begun:
            shutil.rmtree(store.path, ignore_errors=True)
        raise
    # Longest first (by FLOPs): the last run to start is then a short one, which keeps every worker
    # busy until near the end (the LPT rule; makespan within 4/3 of optimal).
    todo = sorted((p for p in planned if not p.done), key=lambda p: -p.flops_total)
    if on_start:
        on_start(planned)
    own = executor is None
    if executor is None:
        # Threads per run follow the requested worker count, not how many runs remain: a resumed run then
        # gets the thread count it started with, which bitwise-exact resume on CPU needs.
        executor = LocalExecutor(workers=workers, threads_per_worker=threads)
    specs = {
        p.run_id: RunSpec(
            p.cfg, str(store.run_dir(p.run_id).path), str(store.cache_dir), log=exp.log, experiment=exp.name
        )
        for p in todo
    }
    futures = {rid: executor.submit(spec) for rid, spec in specs.items()}
    waiting: dict[str, float] = {}  # runs another worker holds -> when we last looked at them
    told: set[str] = set()
    outcomes: dict[str, Outcome] = {}
    prog = Progress(planned, store) if progress else None
    say = prog.say if prog else _say

    def finish(out: Outcome) -> None:
        outcomes[out.id] = out
        if on_outcome:
            on_outcome(out)

    try:
        while len(outcomes) < len(specs):
            for rid, fut in list(futures.items()):
                if not fut.done():
                    continue
                del futures[rid]
                out = _result(rid, fut)
                if out.status != ELSEWHERE:
                    finish(out)
                    if out.unwritable:  # every other run would fail the same way: stop now (and exit 2)
                        raise StoreError(
                            f"{store.path}: the store cannot be written, so the sweep stopped (run {rid}: "
                            f"{out.error}); free space or fix permissions, then run the same command to resume"
                        )
                    continue
                if rid not in told:  # once: a run taken over and lost again is still the same news
                    told.add(rid)
                    say(f"run {rid}: {out.error or 'running elsewhere'}; waiting")
                waiting[rid] = time.time()
            for rid, last in list(waiting.items()):
                if time.time() - last < WAIT_POLL_S:
                    continue
                waiting[rid] = time.time()
                verdict = _elsewhere(store.run_dir(rid))
                if isinstance(verdict, Outcome):
                    del waiting[rid]
                    say(f"run {rid}: {verdict.status} elsewhere")
                    finish(verdict)
                elif verdict is not None:  # the other worker is gone: take the run over (and resume it)
                    del waiting[rid]
                    say(f"run {rid}: {verdict}; taking it over")
                    futures[rid] = executor.submit(specs[rid])
            if prog:
                prog.update(outcomes)
            time.sleep(0.1)
    except BaseException:  # Ctrl-C, or a bug here: stop the workers rather than leave them training
        executor.shutdown(cancel=True)
        raise
    if prog:
        prog.update(outcomes, final=True)
    if own:
        executor.shutdown()
    skipped = [
        Outcome(p.run_id, store.run_dir(p.run_id).read_status()["state"], skipped=True) for p in planned if p.done
    ]
    return skipped + [outcomes[p.run_id] for p in todo]


# How often the driver looks at a run another worker holds: a status read and a lock read per second are
# nothing, and a run that ends elsewhere is then reported within a second.
WAIT_POLL_S = 1.0


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _result(rid: str, fut: Future[Outcome]) -> Outcome:
    """The future's outcome; an executor that failed (its monitor died, a remote job was lost) fails the
    run, it does not stop the sweep or leave it waiting."""
    try:
        return fut.result()
    except CancelledError:
        return Outcome(rid, "failed", error="cancelled")
    except Exception as e:
        return Outcome(rid, "failed", error=f"executor: {e}")


def _elsewhere(rd: RunDir) -> Outcome | str | None:
    """A run another worker holds: its outcome once it has ended, a reason to take it over when that
    worker is gone (lock released or stale, run not ended), or None while it still runs."""
    try:
        st = rd.read_status()
        state = st.get("state")
        if state in ENDED_STATES:
            error = st.get("error") or st.get("reason")
            return Outcome(rd.id, state, st.get("step", 0), st.get("final_val_loss"), error, skipped=True)
        lock = RunLock(rd)
        h = lock.holder()
    except OSError as e:
        return Outcome(rd.id, "failed", error=f"cannot read its status or lock ({e.strerror or e})")
    if h is None:
        return "its worker released it unfinished"
    if lock.is_stale(h):
        return f"the lock of {h} is stale"
    return None
