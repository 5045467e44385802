"""Instruments: measurements that run on the evaluation schedule and are stored with the run, or offline on a
stored run (``scalescope probe NAME RUN_DIR``). The hook is :mod:`.registry`; each built-in instrument is one
module here that registers itself on import.

Adding a built-in instrument is one module plus one line in the registry lines below.
"""

from __future__ import annotations

# The registry lines: importing a built-in module registers its instruments (one line per module).
from . import (
    basic,
    covariance,
    curvature,
    fewshot,
    fourier,
    icl,
    icl_regression,
    induction,
    linear_probe,
    margin_bound,
    noise_scale,
    quanta,
    task_id,
)
from .registry import (
    COMMON_OPTIONS,
    Instrument,
    Option,
    Probe,
    ProbeContext,
    Result,
    available,
    build,
    check,
    check_options,
    check_token_input,
    register,
    requires_data_kind,
    resolve,
)

__all__ = [
    "COMMON_OPTIONS",
    "Instrument",
    "Option",
    "Probe",
    "ProbeContext",
    "Result",
    "available",
    "basic",
    "build",
    "check",
    "check_options",
    "check_token_input",
    "covariance",
    "curvature",
    "fewshot",
    "fourier",
    "icl",
    "icl_regression",
    "induction",
    "linear_probe",
    "margin_bound",
    "noise_scale",
    "quanta",
    "register",
    "requires_data_kind",
    "resolve",
    "task_id",
]
