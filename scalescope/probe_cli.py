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
)


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run directory: STORE/runs/<id>")
    p.add_argument("--step", type=int, default=None, help="step (default: the latest checkpoint)")
    p.add_argument("--json", action="store_true")


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
