"""The one error family of the core: every failure a stage reports says whether a retry can help.

Orchestrators (the Dagster assets, a script, a notebook) catch `DistillError` and read
`retryable`: a config or data error (retryable False) fails at once; a lost endpoint, a GPU out
of memory or a store locked too long (retryable True) may pass on a later try.
"""

from __future__ import annotations


class DistillError(Exception):
    """A failure with a message that names what to fix, and whether retrying can help."""

    retryable: bool = False

    def __init__(self, message: str = "", *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class StageError(DistillError):
    """A stage cannot do its work (missing input, nothing left to train on, ...)."""
