"""The forecast ledger: predictions recorded before the runs they predict exist, scored once they do.

* :mod:`~scalescope.forecast.ledger`: ``STORE/forecasts/<id>.json``, content-hashed ids, the registry of
  record kinds (kind -> scorer) and :func:`score_store`, which scores every record by its kind;
* :mod:`~scalescope.forecast.laws`: a scaling law's prediction of a run's final loss (the default kind);
* :mod:`~scalescope.forecast.crossing`: the scale at which a metric crosses a threshold (Schaeffer et al.
  2023), recorded by ``scalescope emergence --forecast``;
* :mod:`~scalescope.forecast.quanta`: which skills a larger model will have learned, recorded by
  ``scalescope quanta --forecast``.

``scalescope forecast --store DIR --target-n N --target-d D`` records a law forecast;
``scalescope forecast --store DIR --score`` scores every kind.
"""

# The record kinds: importing each module registers its scorer with the ledger (registry lines).
from . import crossing, laws, quanta  # noqa: F401
from .crossing import (
    CrossingForecast,
    crossing_record,
    forecast_crossing,
    observed_crossing,
    record_crossing_forecast,
    score_crossing,
    score_crossing_runs,
)
from .laws import final_points, make_forecast, match_mask, record_forecast, score_record, target_text
from .ledger import forecast_id, forecasts_dir, kind_of, load_forecasts, register_kind, score_store

__all__ = [
    "CrossingForecast",
    "crossing_record",
    "final_points",
    "forecast_crossing",
    "forecast_id",
    "forecasts_dir",
    "kind_of",
    "load_forecasts",
    "make_forecast",
    "match_mask",
    "observed_crossing",
    "record_crossing_forecast",
    "record_forecast",
    "register_kind",
    "score_crossing",
    "score_crossing_runs",
    "score_record",
    "score_store",
    "target_text",
]
