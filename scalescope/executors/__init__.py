"""Executors send run specs somewhere to be trained and hand back their outcomes.

The protocol is deliberately tiny: ``submit(spec) -> Future[Outcome]`` and ``shutdown()``. A
:class:`RunSpec` is plain picklable data, and the worker (:func:`execute`) is a pure function of it that
writes only the spec's run directory, so a Ray task or a Slurm job can run the same spec unchanged.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from ..config import RunConfig
from ..train import Outcome


@dataclass(frozen=True)
class RunSpec:
    config: RunConfig
    run_dir: str
    cache_dir: str
    threads: int | None = None


class Executor(Protocol):
    def submit(self, spec: RunSpec) -> Future[Outcome]: ...

    def shutdown(self, cancel: bool = False) -> None: ...


def execute(spec: RunSpec) -> Outcome:
    """The worker: train the spec's run (or resume it, or skip it if done). Safe in any process."""
    from ..train import train

    return train(spec.config, spec.run_dir, cache_dir=spec.cache_dir, threads=spec.threads)


from .local import LocalExecutor  # noqa: E402

__all__ = ["Executor", "LocalExecutor", "RunSpec", "execute"]
