"""Analyses: from a store's runs and metrics to results (no command-line parsing here; see scalescope.cli).

* :mod:`~scalescope.analyses.critical_batch`: the critical batch size from a batch-size sweep;
* :mod:`~scalescope.analyses.phase_change`: the induction-head phase change of a run over training steps;
* :mod:`~scalescope.analyses.transitions`: is a change abrupt, and is a jump real or a metric artifact;
* :mod:`~scalescope.analyses.emergence`: those tests on every capability a store's runs logged;
* :mod:`~scalescope.analyses.prompt_length`: demonstrations needed against the number of tasks.
"""
