"""Deprecated: the library is the installable package ``ddpm_ood`` (``src/ddpm_ood/``).

``import src.api`` (and every other ``src.<module>``) still works from the repository's root for
one release, with a DeprecationWarning, and gives the very module ``ddpm_ood.<module>``; the
older ``src.detector`` gives ``ddpm_ood.api``. Write ``from ddpm_ood import OODDetector``.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

RENAMED = {"detector": "api"}  # module paths that moved before the package did


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``src.X`` -> the module ``ddpm_ood.X`` itself (one module object, so patches and isinstance agree)."""

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith(__name__ + "."):
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        old = spec.name[len(__name__) + 1:]
        new = "ddpm_ood." + RENAMED.get(old, old)
        warnings.warn(f"{spec.name} is deprecated: import {new} (the installable package ddpm_ood)",
                      DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        sys.modules[spec.name] = module
        return module

    def exec_module(self, module):
        pass  # already executed as ddpm_ood.X


sys.meta_path.insert(0, _Alias())
