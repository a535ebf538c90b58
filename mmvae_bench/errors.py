"""The one user-error type (re-exported by :mod:`mmvae_bench.api`)."""

from __future__ import annotations

__all__ = ["BenchError", "NonFiniteLossError"]


class BenchError(Exception):
    """A user error: bad config or flag, unknown name, missing or corrupt file.

    The CLI prints ``error: <message>`` to stderr and exits with code 2. Anything that is not a
    ``BenchError`` is a bug and keeps its traceback.
    """


class NonFiniteLossError(BenchError):
    """A loss became NaN or infinite; names the stage, epoch and step.

    A subclass of :class:`BenchError` (a diverging config is the user's, not a bug) that the
    sweep runner catches to mark the trial failed while the other trials go on.
    """

    def __init__(self, stage: str, epoch: int, step: int, value: float) -> None:
        self.stage, self.epoch, self.step, self.value = stage, epoch, step, value
        super().__init__(
            f"non-finite loss ({value}) in stage '{stage}', epoch {epoch}, step {step}; "
            "lower the learning rate or check the config"
        )
