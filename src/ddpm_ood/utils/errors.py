"""The errors that mean "bad input or a state the user must resolve", in one leaf module.

Every script reports a :class:`UserError` as one line naming the file or value and what to
do, and exits with status 2 (no traceback). This module imports nothing heavy, so the
scripts' error boundary (``ddpm_ood.cli.run_main``) and ``--help`` never load torch.
"""
from __future__ import annotations


class UserError(Exception):
    """Base class: the message names the file or value that is wrong and says what to do."""


class DataError(UserError, ValueError):
    """A problem with an input file or a data argument."""


class ConfigError(UserError, ValueError):
    """A config value or setting that cannot work; the message names the file and the key."""


class CheckpointError(UserError, ValueError):
    """A model file that cannot be used."""


class DownloadError(UserError, RuntimeError):
    """A dataset could be neither downloaded nor found on disk."""


class LPIPSUnavailable(UserError, RuntimeError):
    """The AlexNet backbone weights of LPIPS could not be found or downloaded."""


class ScoringError(UserError, ValueError):
    """Results that cannot be scored; the message names the file, row and value."""


class ManifestError(ScoringError):
    """A results file's settings manifest that cannot be read; the message names it."""


class NonFiniteLoss(UserError, RuntimeError):
    """Training met a non-finite loss or gradient; nothing was updated or saved from it."""


class WriteError(UserError, RuntimeError):
    """An output could not be written (permissions, full disk); any earlier version is untouched."""


class RunLocked(UserError, RuntimeError):
    """Another process is working on the same run folder."""
