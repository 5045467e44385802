"""Scaling laws: fit, bootstrap, extrapolate and check (issue 3).

Every law follows one contract (scikit-learn's): options in the constructor, ``fit(X, y)`` returns self,
fitted values end in ``_`` (``params_``, ``ci_``, ``r2_``, ``rmsle_``, ``n_points_``,
``bootstrap_params_``, ``diagnostics_``: which parameters the data pin, and a verdict ok / weak /
unidentified), ``predict`` and ``predict_interval`` (calibrated prediction intervals); bad input raises
:class:`FitError` (:mod:`scalescope.errors`, re-exported here as part of the laws API). Also here: the
sigmoid law of abrupt transitions (:mod:`~scalescope.laws.sigmoid`) and the noisy quadratic model
(:mod:`~scalescope.laws.nqm`).
"""

from ..errors import FitError, NotFittedError
from .base import Estimator, Law
from .bnsl import BrokenNeuralScalingLaw
from .chinchilla import (
    ChinchillaLaw,
    chinchilla_loss,
    compute_optimal_allocation,
    compute_optimal_exponents,
    hoffmann_grid,
)
from .critical_batch import CriticalBatchLaw, StepsExamplesFit, fit_steps_examples
from .diagnostics import FitDiagnostics, ParameterDiagnostic
from .frontier import ComputeFrontierLaw, frontier_mask
from .holdout import HoldoutResult, holdout_largest
from .isoflop import IsoFLOPAnalysis
from .nqm import NQM, nqm_from_measurements
from .power import PowerLaw, SaturatingPowerLaw
from .select import Selection, compare_laws
from .sigmoid import SigmoidLaw, width_decades
from .trend import SmoothTrend, exact_match_link
from .varpro import ChinchillaCrossCheck, ChinchillaVarPro, compare_chinchilla

__all__ = [
    "BrokenNeuralScalingLaw",
    "ChinchillaCrossCheck",
    "ChinchillaLaw",
    "ChinchillaVarPro",
    "ComputeFrontierLaw",
    "CriticalBatchLaw",
    "Estimator",
    "FitDiagnostics",
    "FitError",
    "HoldoutResult",
    "IsoFLOPAnalysis",
    "Law",
    "NQM",
    "NotFittedError",
    "ParameterDiagnostic",
    "PowerLaw",
    "SaturatingPowerLaw",
    "Selection",
    "SigmoidLaw",
    "SmoothTrend",
    "StepsExamplesFit",
    "chinchilla_loss",
    "compare_chinchilla",
    "compare_laws",
    "compute_optimal_allocation",
    "compute_optimal_exponents",
    "exact_match_link",
    "fit_steps_examples",
    "frontier_mask",
    "hoffmann_grid",
    "holdout_largest",
    "nqm_from_measurements",
    "width_decades",
]
