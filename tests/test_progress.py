"""The sweep's progress line (lab.Progress): train-loss column, a steady FLOP-based ETA, tty vs log output.

Runs are fake: status.json and metrics.jsonl written by hand, and a clock the test moves."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest

from scalescope.lab import Planned, Progress, _duration
from scalescope.rundir import RunDir
from scalescope.train import Outcome


class FakeStore:
    """Only what Progress reads: ``run_dir``."""

    def __init__(self, root: Path):
        self.root = root

    def run_dir(self, rid: str) -> RunDir:
        (self.root / rid).mkdir(parents=True, exist_ok=True)
        return RunDir(self.root / rid)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def planned(rid: str, tokens: int, fpt: float = 1.0, done: bool = False) -> Planned:
    return Planned(cfg=None, run_id=rid, tokens_total=tokens, flops_total=tokens * fpt, done=done)  # type: ignore[arg-type]


def status(store: FakeStore, rid: str, state: str, **fields) -> None:
    store.run_dir(rid).write_status(state, **fields)


def train_loss(store: FakeStore, rid: str, tokens: int, value: float) -> None:
    row = {"step": tokens, "tokens": tokens, "flops": tokens, "wall_s": 0.0, "metric": "train_loss", "value": value}
    store.run_dir(rid).append_metrics([row])


def make(tmp_path: Path, plan: list[Planned], tty: bool = False) -> tuple[FakeStore, Clock, Stream, Progress]:
    store, clock, stream = FakeStore(tmp_path), Clock(), Stream(tty)
    return store, clock, stream, Progress(plan, store, stream, clock=clock)  # type: ignore[arg-type]


def test_duration() -> None:
    assert [_duration(s) for s in (0, 45.9, 60, 370, 3599, 7380)] == ["0s", "45s", "1m00s", "6m10s", "59m59s", "2h03m"]


def test_train_loss_column_shows_running_runs_most_recent_first(tmp_path: Path) -> None:
    ids = ["aaaaaa11", "bbbbbb22", "cccccc33", "dddddd44", "eeeeee55"]
    store, clock, _, prog = make(tmp_path, [planned(r, 1000) for r in ids])
    status(store, ids[0], "running", tokens=100)
    train_loss(store, ids[0], 100, 3.0)
    train_loss(store, ids[0], 200, 2.3123)  # the latest row is the one shown
    clock.t += 10
    line = prog.line({})
    assert "train loss 2.31 (aaaaaa) |" in line
    status(store, ids[1], "running", tokens=0)
    train_loss(store, ids[1], 50, 2.05)
    status(store, ids[2], "finished", tokens=1000)  # ended runs drop out of the column
    train_loss(store, ids[2], 1000, 1.5)
    status(store, ids[3], "running", tokens=0)  # running but no train_loss row yet: nothing to show
    clock.t += 10
    line = prog.line({})
    assert "train loss 2.05 (bbbbbb) 2.31 (aaaaaa) |" in line, line
    assert len(line) <= Progress.MAX_WIDTH
    # A run whose worker returned (failed) while its status still says running is not running.
    clock.t += 10
    assert "train loss 2.31 (aaaaaa) |" in prog.line({ids[1]: Outcome(ids[1], "failed")})
    # Two more start running.
    for rid, loss in zip(ids[3:], (4.5, 1.25)):
        train_loss(store, rid, 10, loss)
    status(store, ids[4], "running", tokens=0)
    status(store, ids[1], "running", tokens=50)
    clock.t += 10
    line = prog.line({})
    # ids[1] ended for this sweep (its outcome came back); the three others, the latest to run first.
    assert "| train loss 1.25 (eeeeee) 4.50 (dddddd) 2.31 (aaaaaa) |" in line, line
    # More than three running (a new sweep sees ids[1] running again): the range over all of them.
    _, clock, _, prog = make(tmp_path, [planned(r, 1000) for r in ids])
    clock.t += 10
    line = prog.line({})
    assert "| train loss 1.25-4.50 (4 runs) |" in line, line
    assert line.startswith("runs 0/5 | ")  # a finished status alone is not an outcome of this sweep


def test_eta_dashes_until_this_sweep_has_trained_something(tmp_path: Path) -> None:
    store, clock, _, prog = make(tmp_path, [planned("r1", 1000), planned("r2", 1000)])
    status(store, "r1", "running", tokens=0)
    clock.t += 30
    assert prog.line({}).endswith("ETA --")
    status(store, "r1", "running", tokens=500)
    clock.t += 30
    # 500 tokens (FLOPs at 1 per token) in 60 s; 1500 left -> 180 s.
    assert prog.line({}).endswith("ETA 3m00s")


def test_progress_from_before_the_sweep_and_restarts_are_not_this_sweeps_rate(tmp_path: Path) -> None:
    store = FakeStore(tmp_path)
    # r1: an earlier sweep's worker died at 600 tokens (stale running status); its checkpoint is at 400.
    status(store, "r1", "running", tokens=600)
    # r2: failed earlier (a failed status carries no tokens); its metrics reached 300 tokens.
    status(store, "r2", "failed", error="boom")
    train_loss(store, "r2", 300, 2.0)
    clock, stream = Clock(), Stream(False)
    prog = Progress([planned("r1", 1000), planned("r2", 1000, fpt=4.0)], store, stream, clock=clock)  # type: ignore[arg-type]
    status(store, "r1", "running", tokens=400)  # resumed from its checkpoint: a step back, not work
    status(store, "r2", "running", tokens=300)
    clock.t += 10
    prog.line({})
    assert prog.work_tokens == 0 and prog.eta(clock.t) is None
    status(store, "r1", "running", tokens=500)
    train_loss(store, "r2", 350, 1.9)  # the train_loss tail is fresher than the status
    clock.t += 10
    prog.line({})
    assert prog.work_tokens == 150
    assert prog.work_flops == pytest.approx(100 * 1.0 + 50 * 4.0)
    # r1 restarts from step 0 (a refused checkpoint): its tokens go back to the remaining work, the work
    # done stays, and tokens/s is never negative.
    status(store, "r1", "running", tokens=0)
    clock.t += 10
    line = prog.line({})
    assert prog.work_tokens == 150
    remaining = 1000 * 1.0 + 650 * 4.0
    assert prog.eta(clock.t) == pytest.approx(remaining / (300.0 / 30))
    assert "| 5 tokens/s |" in line, line  # 150 tokens over the 30 s since the first line


def _old_window_eta(history: list[tuple[float, int]], now: float, tokens: int, total: int) -> float:
    """The ETA of the previous progress line (tokens over a 60-s window), kept here for comparison."""
    history.append((now, tokens))
    while len(history) > 2 and now - history[1][0] > 60:
        history.pop(0)
    t_old, tok_old = history[0]
    rate = max(0.0, (tokens - tok_old) / max(1e-9, now - t_old))
    return (total - tokens) / rate if rate > 0 else math.inf


def test_eta_is_steady_where_the_window_eta_jumps(tmp_path: Path) -> None:
    """One worker at a constant FLOP rate trains runs of three model sizes one after another. Statuses are
    written only at checkpoints (every quarter of a run) and at the end, train_loss rows every 10 s of work
    (train.log_every), so what the line sees moves in steps. The true remaining time is remaining FLOPs
    over the FLOP rate, known exactly."""
    flops_per_s = 1e9
    sizes = [(6e6, 40), (2e6, 60), (6e5, 90), (6e6, 40), (2e6, 60), (6e5, 90)]  # (FLOPs per token, seconds)
    plan = [planned(f"run{i}", int(s * flops_per_s / fpt), fpt) for i, (fpt, s) in enumerate(sizes)]
    ends = [sum(s for _, s in sizes[: i + 1]) for i in range(len(sizes))]
    store, clock, _, prog = make(tmp_path, plan)
    t_start, total_s = clock.t, ends[-1]
    old_hist: list[tuple[float, int]] = [(t_start, 0)]
    seen: dict[int, tuple[float, float, float]] = {}  # t -> (new ETA, old ETA, truth)
    for t in range(5, total_s, 5):  # a line every 5 s (a terminal draws more often still)
        clock.t = t_start + t
        for i, (p, (_, s)) in enumerate(zip(plan, sizes)):
            start = ends[i] - s
            if t >= ends[i]:
                status(store, p.run_id, "finished", tokens=p.tokens_total)
            elif t >= start:
                quarter = int(4 * (t - start) / s)  # the last checkpoint written
                status(store, p.run_id, "running", tokens=p.tokens_total * quarter // 4)
                logged = (t - start) // 10 * 10  # seconds of work covered by the last train_loss row
                if logged:
                    train_loss(store, p.run_id, p.tokens_total * logged // s, 2.0)
        prog.line({})
        eta = prog.eta(clock.t)
        # The old line's token count: tokens_total for an ended run, the status's tokens otherwise.
        states = [store.run_dir(p.run_id).read_status() for p in plan]
        tokens = sum(
            p.tokens_total if st["state"] == "finished" else st.get("tokens", 0) for p, st in zip(plan, states)
        )
        old = _old_window_eta(old_hist, clock.t, tokens, sum(p.tokens_total for p in plan))
        seen[t] = (math.inf if eta is None else eta, old, total_s - t)
    # From a quarter of the sweep until a fifth of it is left. The line lags by at most one log interval
    # (10 s of work) behind the truth: that underestimates the rate by at most 10/95 and overestimates the
    # remaining work by at most 10/76, together within 1.17x.
    window = [t for t in seen if 0.25 * total_s <= t <= 0.8 * total_s]
    new_err = max(abs(seen[t][0] / seen[t][2] - 1) for t in window)
    old_err = max(abs(seen[t][1] / seen[t][2] - 1) for t in window)

    # How far the ETA moves from one line to the next (5 s apart), either way.
    def steps(k: int) -> float:
        return max(max(seen[t][k] / seen[t - 5][k], seen[t - 5][k] / seen[t][k]) for t in window)

    print(f"ETA error in the window: new {new_err:.0%}, old window method {old_err:.0%}")
    print(f"largest move between lines: new {steps(0):.2f}x, old {steps(1):.2f}x")
    assert new_err < 0.2
    assert old_err > 1.0  # tokens/s of a small model after a large one's: 10x the rate, same FLOP rate
    assert steps(0) < 1.2  # 5 s less to go, plus one log row's worth of lag
    assert steps(1) > 2.0


def test_tty_rewrites_in_place_and_logs_print_every_interval(tmp_path: Path, monkeypatch) -> None:
    import os
    import shutil

    monkeypatch.setattr(shutil, "get_terminal_size", lambda fallback=(80, 24): os.terminal_size((200, 24)))
    store, clock, stream, prog = make(tmp_path, [planned("r1", 1000)], tty=False)
    for _ in range(10):  # 45 s of updates every 5 s: printed at 0, 15, 30, 45
        prog.update({})
        clock.t += 5
    assert stream.getvalue().count("\n") == 4
    prog.update({}, final=True)  # the last line is always printed
    assert stream.getvalue().count("\n") == 5 and "\r" not in stream.getvalue()

    store, clock, stream, prog = make(tmp_path, [planned("r1", 1000)], tty=True)
    prog.update({})
    clock.t += 0.1
    prog.update({})  # within 0.5 s: not drawn again
    assert stream.getvalue().count("\r") == 1 and "\n" not in stream.getvalue()
    prog.say("run r1: something to say that is longer than the progress line itself, by some margin")
    clock.t += 1
    prog.update({}, final=True)
    lines = stream.getvalue().split("\r")[1:]
    assert lines[-1].endswith("\n") and len(lines[-1]) == len(lines[-2])  # padded over the longer line


def test_a_narrow_terminal_never_wraps_the_line(tmp_path: Path, monkeypatch) -> None:
    # A line longer than the terminal wraps, and "\r" then returns to the wrapped row: every redraw would start
    # a new row (seen by a hostile user at 60 columns). Each drawn line must fit in columns - 1.
    import os
    import shutil

    monkeypatch.setattr(shutil, "get_terminal_size", lambda fallback=(80, 24): os.terminal_size((40, 24)))
    store, clock, stream, prog = make(tmp_path, [planned(f"run{i}", 1000) for i in range(4)], tty=True)
    for i in range(4):
        status(store, f"run{i}", "running", tokens=100 * (i + 1))
        train_loss(store, f"run{i}", 100 * (i + 1), 2.0 + i)
    for _ in range(3):
        prog.update({})
        clock.t += 1
    prog.say("run run1: a message much longer than forty columns, which is not cut")
    prog.update({}, final=True)
    drawn = [seg.rstrip("\n") for seg in stream.getvalue().split("\r")[1:]]
    message = [seg for seg in drawn if seg.startswith("run run1:")]
    assert len(message) == 1 and message[0].endswith("which is not cut")  # a message is whole (a newline ends it)
    lines = [seg for seg in drawn if seg not in message]
    assert lines and all(len(seg) <= 39 for seg in lines), [len(s) for s in lines]
    assert lines[-1].startswith("runs 0/4")
