"""TensorBoard: event files in ``<run_dir>/tensorboard/``, written by torch's SummaryWriter (needs ``tensorboard``).

One scalar per metric (``hessian/top1`` groups under ``hessian`` in the UI) at ``global_step`` = the training step;
the flattened config as the HParams plugin's session. Values are stored as float32 (``Summary.Value.simple_value``).

Resume: the writer opens with ``purge_step = 0``: it writes a ``SessionLog.START`` event at step 0, and TensorBoard's
reader (EventAccumulator) then drops every event of the earlier files, so the view is rebuilt by this attempt alone:
the rows metrics.jsonl holds up to the checkpoint (``open_trackers``'s history), then the new ones. Nothing shows
twice, and nothing an earlier attempt failed to flush (or never mirrored: ``[log]`` switched on later) is missing.
"""

from __future__ import annotations

from typing import Any

from .base import LogConfig, Opening, flatten


class TensorBoardTracker:
    def __init__(self, ctx: Opening):
        from torch.utils.tensorboard import SummaryWriter  # imports the tensorboard package

        self.writer = SummaryWriter(log_dir=str(ctx.run_dir / "tensorboard"), purge_step=0)
        self.last_step = ctx.start_step or 0
        self._hparams(ctx)

    def _hparams(self, ctx: Opening) -> None:
        from torch.utils.tensorboard.summary import hparams

        # The HParams plugin takes bool, str, int and float only; a list or None goes as its text.
        values = {k: v if isinstance(v, bool | str | int | float) else str(v) for k, v in flatten(ctx.config).items()}
        exp, ssi, sei = hparams(values, {})
        writer = self.writer._get_file_writer()  # what SummaryWriter.add_hparams uses, minus its sub-run directory
        for summary in (exp, ssi, sei):
            writer.add_summary(summary)

    def log(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            if r["value"] is not None:
                self.writer.add_scalar(r["metric"], float(r["value"]), global_step=int(r["step"]))
            self.last_step = max(self.last_step, int(r["step"]))
        # The writer buffers in a thread: flush so a crash loses nothing a checkpoint covers (resume never
        # re-logs rows at or before its step). One flush per evaluation is cheap.
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.add_text("scalescope/status", status, global_step=self.last_step)
        self.writer.close()


def open(log: LogConfig, ctx: Opening) -> TensorBoardTracker:  # noqa: A001 - the registry's entry point
    del log
    return TensorBoardTracker(ctx)
