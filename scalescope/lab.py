"""Running an experiment: prepare data once, create run directories, dispatch, show progress."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import config as C
from .data import build_source
from .executors import Executor, LocalExecutor, RunSpec
from .model import flops_per_token
from .rundir import DONE_STATES
from .schedule import budget_steps
from .store import Store
from .sweep import Experiment
from .train import Outcome


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
            vocab[key] = src.vocab_size
        fpt = flops_per_token(cfg.model, vocab[key])
        steps = budget_steps(cfg, fpt)
        rd = store.add(cfg, experiment=exp.name)
        tokens = steps * cfg.train.batch_size * cfg.model.seq_len
        out.append(Planned(cfg, rd.id, tokens, tokens * fpt, rd.is_done()))
    return out


class Progress:
    """One line: runs done of total, aggregate tokens/s, ETA. Rewritten in place on a terminal, printed
    every ``interval`` seconds otherwise (CI logs stay short)."""

    def __init__(self, planned: list[Planned], store: Store, stream=sys.stderr, interval: float = 15.0):
        self.planned, self.store, self.stream = planned, store, stream
        self.tty = stream.isatty()
        self.interval = 0.5 if self.tty else interval
        self.t0 = time.time()
        self.history: list[tuple[float, int]] = [(self.t0, self._tokens())]
        self.last_print = 0.0

    def _tokens(self) -> int:
        total = 0
        for p in self.planned:
            st = self.store.run_dir(p.run_id).read_status()
            total += p.tokens_total if st.get("state") in DONE_STATES else st.get("tokens", 0)
        return total

    def line(self, outcomes: dict[str, Outcome]) -> str:
        done = sum(1 for p in self.planned if p.done or p.run_id in outcomes)
        tokens, now = self._tokens(), time.time()
        el = now - self.t0
        # Rate over the last minute: the throughput changes as runs finish and workers go idle.
        self.history.append((now, tokens))
        while len(self.history) > 2 and now - self.history[1][0] > 60:
            self.history.pop(0)
        t_old, tok_old = self.history[0]
        rate = (tokens - tok_old) / max(1e-9, now - t_old)
        remaining = sum(p.tokens_total for p in self.planned) - tokens
        eta = remaining / rate if rate > 0 else float("nan")
        eta_s = "--" if eta != eta else f"{int(eta // 60)}m{int(eta % 60):02d}s"
        failed = sum(1 for o in outcomes.values() if o.status != "finished")
        extra = f", {failed} not finished" if failed else ""
        return f"runs {done}/{len(self.planned)}{extra} | {rate:,.0f} tokens/s | elapsed {el:.0f}s | ETA {eta_s}"

    def update(self, outcomes: dict[str, Outcome], final: bool = False) -> None:
        now = time.time()
        if not final and now - self.last_print < self.interval:
            return
        self.last_print = now
        text = self.line(outcomes)
        if self.tty:
            self.stream.write("\r" + text.ljust(90) + ("\n" if final else ""))
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
        # leave behind a store that this call created: nothing of value is in it yet.
        if fresh:
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
    futures = {
        p.run_id: executor.submit(RunSpec(p.cfg, str(store.run_dir(p.run_id).path), str(store.cache_dir))) for p in todo
    }
    outcomes: dict[str, Outcome] = {}
    prog = Progress(planned, store) if progress else None
    try:
        while len(outcomes) < len(futures):
            for rid, fut in futures.items():
                if rid not in outcomes and fut.done():
                    outcomes[rid] = fut.result()
                    if on_outcome:
                        on_outcome(outcomes[rid])
            if prog:
                prog.update(outcomes)
            time.sleep(0.1)
    except KeyboardInterrupt:
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
