"""Bundled task streams, one file each. Importing this package registers every module in it,
so a new file dropped here appears in ``BENCHMARKS``, ``--list`` and the contract tests."""
import importlib
import pkgutil

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")
