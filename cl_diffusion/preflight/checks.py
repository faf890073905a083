"""Preflight, early part: what can be refused before torch is imported (whose import is most of a
failing command's start-up): the strategy name, read from the source files, the profile, the run
and evaluation options, and the paths (the output folder, the data root).
"""
from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import UserError, choice_error

#: Options that a flag chooses and ``--set`` may not: option key -> the flag.
FLAG_OPTIONS = {"strategy": "--strategy", "benchmark": "--benchmark", "profile": "--profile"}


def early_checks(strategy: str | None, profile: str | None, sets: Sequence[tuple[str, str]],
                 run_fields: dict[str, Any], flags: dict[str, str] = FLAG_OPTIONS) -> None:
    """Refuse what needs no torch: an unknown strategy (when every registration is a literal name,
    read from the source files), an unknown profile, a ``--set`` of an option a flag chooses
    (``flags``), a bad run or evaluation option, a bad path."""
    from ..config import Config
    from ..profiles import PROFILES

    for key, value in sets:
        if key in flags:
            raise UserError(f"bad --set {key}={value}: {key} is chosen with {flags[key]}, not --set")
    # the bundled strategies' package, registry and entry-point group (cl_diffusion/strategy.py);
    # tests/test_preflight.py checks that these names agree with STRATEGIES.names()
    names = static_names("cl_diffusion.strategies", "STRATEGIES", "cl_diffusion.strategies")
    if strategy and names is not None and strategy not in names:
        raise choice_error("strategy", strategy, names)
    if profile:
        PROFILES.get(profile)
    cfg = Config()  # the run and evaluation sections only: strategy options are checked later
    for key, value in [*((k, v) for k, v in run_fields.items() if v is not None), *sets]:
        if key in cfg.keys():
            cfg.set(key, value)
    for s in cfg.sections():
        check = getattr(s, "check", None)
        if callable(check):
            check()
    check_paths(cfg.run.out, cfg.run.data_root)


def static_names(package: str, registry: str, entry_point_group: str | None = None) -> list[str] | None:
    """The names registered in ``package``'s modules, read from the source without importing it:
    the literal first argument of every ``.register(...)`` and ``.add(...)`` call (a superset, so a
    name missing from it is not registered); None when ``<registry>.register``/``.add`` is called
    with a name that is not a literal, or an installed plugin may register more. The registry
    stays the one declaration: tests/test_preflight.py checks that the two agree."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    if entry_point_group is not None:
        from importlib.metadata import entry_points

        if entry_points(group=entry_point_group):
            return None
    names: list[str] = []
    for folder in spec.submodule_search_locations:
        for path in sorted(Path(folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in ("register", "add")):
                    continue
                first = node.args[0] if node.args else None
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    names.append(first.value)
                elif node.func.attr == "register" or getattr(node.func.value, "id", None) == registry:
                    return None
    return sorted(set(names))


def check_paths(out: str, data_root: str) -> None:
    """``out`` is (or can be made) a writable folder; a ``data_root``, if given, is a folder."""
    check_out_dir(out, "out")
    if data_root and not Path(data_root).expanduser().is_dir():
        what = "a file, not a folder" if Path(data_root).expanduser().exists() else "no such folder"
        raise UserError(f"bad value {data_root!r} for data_root: {what}; give the folder that holds the dataset, "
                        "or leave it empty to search the usual places")


def check_out_dir(path: str | os.PathLike, option: str) -> None:
    """``path`` is a writable folder or can be made as one; UserError naming ``option`` if not."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"bad value {str(path)!r} for {option}: it is a file, not a folder; choose a folder "
                        "(it is made if missing)")
    base = p
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise UserError(f"bad value {str(path)!r} for {option}: {base} is a file, so no folder can be made in it")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"bad value {str(path)!r} for {option}: {base} is not writable; choose a folder you can "
                        "write to")


def check_new_dir(path: str | os.PathLike, option: str) -> None:
    """``path`` does not exist yet and can be made as a folder."""
    if Path(path).expanduser().exists():
        raise UserError(f"bad value {str(path)!r} for {option}: it exists; choose a new folder (results are "
                        "never overwritten)")
    check_out_dir(path, option)
