"""Exceptions shared across packages (here so that ``models`` can raise them without importing ``checkpoints``)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint could not be read or is not what it claims to be. The message names the file or tensor."""
