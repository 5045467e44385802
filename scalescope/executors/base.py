"""The executor protocol: a run spec, the worker that trains it, and what an executor must offer.

A :class:`RunSpec` is plain picklable data, and the worker (:func:`execute`) is a pure function of it that
writes only the spec's run directory, so a Ray task or a Slurm job can run the same spec unchanged.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from ..config import RunConfig
from ..train import Outcome, train


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
    return train(spec.config, spec.run_dir, cache_dir=spec.cache_dir, threads=spec.threads)
