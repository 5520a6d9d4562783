"""Errors a user can cause, each naming the offending field and value.

`SamriInputError` is a `ValueError`, so library callers can catch either; the MONAI Label app maps
it to HTTP 4xx and the CLI to a non-zero exit with the message.
"""

from __future__ import annotations

from typing import Any


class SamriInputError(ValueError):
    """Bad user input: a request field, an image, a checkpoint path.

    Args:
        field: name of the offending field as the user wrote it (e.g. ``"roi"``, ``"foreground[1]"``).
        value: the offending value (shortened in the message when long).
        reason: what is wrong and, where possible, what is expected.
    """

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        shown = repr(value)
        if len(shown) > 200:
            shown = shown[:197] + "..."
        super().__init__(f"{field}={shown}: {reason}")


class CheckpointError(SamriInputError):
    """A checkpoint file that is missing, unreadable or does not match the model."""
