"""Executors send run specs somewhere to be trained and hand back their outcomes.

The protocol is deliberately tiny (:mod:`.base`): ``submit(spec) -> Future[Outcome]`` and ``shutdown()``;
:mod:`.local` runs specs in local processes, :mod:`.ray` as Ray tasks and :mod:`.slurm` as Slurm job
arrays through submitit (both optional extras, imported only by their ``make_*`` factory below).

Who writes the run directory: the driver has created it with its config before it submits the spec; the
worker owns it while it holds the run's lock (:mod:`scalescope.runlock`); a worker that cannot claim it
answers ``Outcome(id, "elsewhere")`` without writing anything; an executor writes into it only the
failure of a worker that died (see :mod:`scalescope.rundir`). :class:`~scalescope.train.Outcome` is
defined beside ``train``, which returns it: the executors only pass it on, and ``train`` must not import
the executors that call it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import ELSEWHERE, Executor, RunSpec, execute
from .local import LocalExecutor

__all__ = ["ELSEWHERE", "Executor", "LocalExecutor", "RunSpec", "execute", "make_ray_executor", "make_slurm_executor"]


def make_ray_executor(
    address: str | None = None, threads_per_run: int = 1, num_gpus_per_run: float = 0, max_retries: int = 3
) -> Executor:
    """A :class:`~scalescope.executors.ray.RayExecutor`, importing Ray only now (it is an optional extra:
    ``pip install 'scalescope[ray]'``). Raises ConfigError when Ray is not installed or not reachable."""
    try:
        from .ray import RayExecutor
    except ImportError as e:
        from ..errors import ConfigError

        raise ConfigError(
            f"the Ray executor needs Ray ({e}); install it with: pip install 'scalescope[ray]'",
            field="--executor",
        ) from None
    return RayExecutor(address, threads_per_run, num_gpus_per_run, max_retries)


def make_slurm_executor(folder: str | Path, **options: Any) -> Executor:
    """A :class:`~scalescope.executors.slurm.SlurmExecutor` (options as its constructor's), importing
    submitit only now (it is an optional extra: ``pip install 'scalescope[slurm]'``). Raises ConfigError
    when submitit is not installed or an option is bad."""
    try:
        from .slurm import SlurmExecutor
    except ImportError as e:
        from ..errors import ConfigError

        raise ConfigError(
            f"the Slurm executor needs submitit ({e}); install it with: pip install 'scalescope[slurm]'",
            field="--executor",
        ) from None
    return SlurmExecutor(folder, **options)
