"""``scalescope probe NAME RUN_DIR [--step S] [--json]``: run an instrument offline on a stored run.

Each instrument module that offers an offline command lists itself in ``PROBE_MODULES`` and defines
``add_probe_command(subparsers)``, which adds its sub-command with ``fn=`` a handler returning an exit
code. Load the run with :func:`scalescope.instruments.offline.load_run`.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

PROBE_MODULES = (
    "scalescope.instruments.noise_scale",
    "scalescope.instruments.curvature",
    "scalescope.instruments.covariance",
    "scalescope.instruments.icl",
    "scalescope.instruments.induction",
    "scalescope.instruments.icl_regression",
    "scalescope.instruments.task_id",
    "scalescope.instruments.fewshot",
)


def add_common(p: argparse.ArgumentParser, *, batches_of: str | None = None) -> None:
    """RUN_DIR, --step and --json; with ``batches_of`` (what one batch holds: "sequences", "prompts") also
    --n-batches and --batch-size, checked by :func:`scalescope.instruments.offline.check_batch_options`."""
    p.add_argument("run_dir", help="a run directory: STORE/runs/<id>")
    p.add_argument("--step", type=int, default=None, help="step (default: the latest checkpoint)")
    p.add_argument("--json", action="store_true")
    if batches_of:
        p.add_argument("--n-batches", type=int, default=4, help="probe batches (default 4)")
        p.add_argument(
            "--batch-size",
            type=int,
            default=None,
            help=f"{batches_of} per batch (default: the run's micro-batch or batch size)",
        )


def add_probe_parser(sub: Any) -> None:
    p = sub.add_parser("probe", help="run an instrument offline on a stored run")
    psub = p.add_subparsers(dest="probe", required=True)
    for name in PROBE_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(mod, "add_probe_command"):
            mod.add_probe_command(psub)
