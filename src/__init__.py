"""Deprecated: the library is the installable package ``ddpm_ood`` (``src/ddpm_ood/``).

``import src.api`` (and every other ``src.<module>`` of version 0.4) still works from the
repository's root until version 0.6, with a DeprecationWarning, and gives the very module of the
package (``src.data`` is ``ddpm_ood.data.loading``: ``ddpm_ood/_moved.py`` lists where each module
went); the older ``src.detector`` gives ``ddpm_ood.api``. Write ``from ddpm_ood import OODDetector``.
"""
from __future__ import annotations

import sys

from ddpm_ood._moved import MOVED, ModuleAlias

RENAMED = {"detector": "api"}  # module paths that moved before the package did


class _SourceAlias(ModuleAlias):
    """``src.X`` (any X, submodules too) -> ``ddpm_ood.`` + X's home since 0.5."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith("src."):
            old = fullname[len("src."):]
            self.renamed.setdefault(old, "ddpm_ood." + MOVED.get(old, RENAMED.get(old, old)))
        return super().find_spec(fullname, path, target)


sys.meta_path.insert(0, _SourceAlias("src", {}))
