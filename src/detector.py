"""Deprecated: the Python API moved to :mod:`src.api` (``from src.api import OODDetector``)."""
import warnings

from src.api import OODDetector  # noqa: F401

warnings.warn("src.detector is deprecated: import OODDetector from src.api", DeprecationWarning, stacklevel=2)
