"""Bundled strategies, one file each. Importing this package registers every module in it,
so a new file dropped here is picked up by the CLI, ``--list`` and the contract tests."""
import importlib
import pkgutil

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")
