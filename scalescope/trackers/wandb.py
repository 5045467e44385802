"""Weights & Biases, always offline: ``<store>/wandb/offline-run-<time>-<run id>/run-<run id>.wandb``, one per attempt.

Nothing reaches the network at run time; ``wandb sync <store>/wandb/offline-run-*`` uploads later. The W&B run id is
the scalescope run id (``resume="allow"``), the flattened config is the run's config, each evaluation is one history
row at ``step`` = the training step. Console capture, system metrics, git and code saving are off: a worker's stdout
stays its own and a run costs one ``wandb-core`` service per process.

Resume: offline, W&B cannot see the earlier attempt, so each attempt writes its own ``.wandb`` file. Before opening,
the earlier files of this run id are read with W&B's own reader (``wandb leet inspect --json``) and the steps of each
metric they already hold are skipped, so the attempts together hold each step once. A run that starts over from step
0 cannot delete the earlier files (they are W&B's, perhaps already synced): their steps stay, under the same id.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from .base import LogConfig, Opening, flatten


def held_steps(wandb_dir: Path, run_id: str) -> dict[str, int]:
    """Metric -> last step the offline runs of ``run_id`` under ``wandb_dir`` hold, read by wandb's reader."""
    held: dict[str, int] = {}
    for path in sorted(wandb_dir.glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")):
        for rec in read_records(path):
            if rec.get("type") != "history":
                continue
            step = int(rec["history"].get("step", {}).get("num", 0))
            for key in rec["history"].get("item", {}):
                if not key.startswith("_"):
                    held[key] = max(held.get(key, -1), step)
    return held


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a ``.wandb`` transaction log as JSON objects (``wandb leet inspect --json``)."""
    out = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


class WandbTracker:
    def __init__(self, log: LogConfig, ctx: Opening):
        import wandb

        wandb_dir = ctx.store / "wandb"
        wandb_dir.mkdir(parents=True, exist_ok=True)
        self.held = held_steps(wandb_dir, ctx.run_id) if ctx.start_step is not None else {}
        settings = wandb.Settings(
            console="off",
            x_disable_stats=True,
            x_disable_meta=True,
            x_disable_machine_info=True,
            disable_git=True,
            save_code=False,
            silent=True,
            reinit="create_new",  # several runs may be open in one process (an in-process lab)
        )
        config = json.loads(json.dumps(flatten(ctx.config), default=str))  # paths and the like as text
        self.run = wandb.init(
            mode="offline",
            dir=str(ctx.store),
            project=log.wandb_project or ctx.experiment,
            group=ctx.experiment,
            id=ctx.run_id,
            name=ctx.run_id,
            resume="allow",
            config=config,
            settings=settings,
        )

    def log(self, rows: list[dict[str, Any]]) -> None:
        by_step: dict[int, dict[str, float]] = {}
        for r in rows:
            step = int(r["step"])
            if r["value"] is not None and step > self.held.get(r["metric"], -1):
                by_step.setdefault(step, {})[r["metric"]] = float(r["value"])
        for step in sorted(by_step):
            self.run.log(by_step[step], step=step)

    def close(self, status: str) -> None:
        self.run.summary["scalescope/status"] = status
        self.run.finish(exit_code=0 if status == "finished" else 1)


def open(log: LogConfig, ctx: Opening) -> WandbTracker:  # noqa: A001 - the registry's entry point
    return WandbTracker(log, ctx)
