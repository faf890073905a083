"""Dataclass options: one field per option, with help, choices and bounds in its metadata.

Every config class in the suite (the run config, the evaluator's config, each strategy's
hyperparameters) is a dataclass whose fields are declared with :func:`opt`. From those
fields alone this module derives JSON round-tripping, ``--set key=value`` parsing with type
coercion, and validation that names the bad value and the valid choices or range.
A field may carry a JSON/CLI ``key`` that differs from its Python name (``lambda_`` -> ``lambda``).
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import typing
from dataclasses import Field
from typing import Any, Iterable

from .errors import UserError


def opt(default: Any, help: str, *, choices: Iterable[Any] | str | None = None, min: float | None = None,
        max: float | str | None = None, min_exclusive: bool = False, key: str | None = None,
        finite: bool = True, protocol: bool = True, how: bool = False) -> Any:
    """Declare one option: default, a help text with its unit, and optional choices/bounds.

    ``choices`` is a tuple, or the ``"module:NAME"`` of the registry or module constant that owns
    them (``"cl_diffusion.profiles:PROFILES"``), read when first needed, so the list lives once.
    ``max`` may name another option (``max="num_timesteps"``): :class:`~cl_diffusion.config.Config`
    checks the bound against that option's value. A float option must be finite (no nan/inf)
    unless it declares ``finite=False``. ``protocol=False``: bookkeeping (seed, paths, logging), not
    part of the experimental protocol, so a run does not "differ from the paper" by it.
    ``how=True``: it says where or how fast to compute, not what (device, precision), so a
    re-evaluation may change it.
    """
    meta = {"help": help, "choices": choices if choices is None or isinstance(choices, str) else tuple(choices),
            "min": min, "max": max, "min_exclusive": min_exclusive, "key": key, "finite": finite,
            "protocol": protocol, "how": how}
    return dataclasses.field(default=default, metadata=meta)


def redefault(owner: type, name: str, default: Any) -> Any:
    """Re-declare the option ``name`` of the dataclass ``owner`` with another default, keeping its
    help, choices and bounds: ``lambda_: float = redefault(Base.Params, "lambda_", 0.75)``."""
    f = owner.__dataclass_fields__[name]
    return dataclasses.field(default=default, metadata=f.metadata)


def choices_of(f: Field) -> tuple[Any, ...] | None:
    """The valid values of ``f``, or None when any value of its type goes. A ``"module:NAME"``
    reference is resolved here: a registry gives its names, a mapping its keys, a sequence itself."""
    c = f.metadata.get("choices")
    if not isinstance(c, str):
        return c
    module, _, name = c.partition(":")
    owner = getattr(importlib.import_module(module), name)
    return tuple(owner.names() if hasattr(owner, "names") else owner)


def key_of(f: Field) -> str:
    """The JSON / ``--set`` name of a field."""
    return f.metadata.get("key") or f.name


def option_fields(obj_or_cls: Any) -> list[Field]:
    """The option fields of a dataclass (nested dataclass fields excluded)."""
    hints = typing.get_type_hints(obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls))
    return [f for f in dataclasses.fields(obj_or_cls) if not _is_dataclass_type(hints.get(f.name))]


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _base_type(cls: type, f: Field) -> type:
    tp = typing.get_type_hints(cls)[f.name]
    if typing.get_origin(tp) is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0]
    return tp


def coerce(cls: type, f: Field, raw: Any) -> Any:
    """Convert ``raw`` (a CLI string or a JSON value) to the field's type, or raise UserError."""
    tp = _base_type(cls, f)
    name = key_of(f)
    try:
        if tp is bool:
            if isinstance(raw, bool):
                return raw
            s = str(raw).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            if isinstance(raw, bool):
                raise ValueError
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            return int(raw) if not isinstance(raw, str) else int(raw.strip())
        if tp is float:
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if tp is str:
            return str(raw)
    except (TypeError, ValueError):
        wanted = "bool (true/false, yes/no, on/off, 1/0)" if tp is bool else f"{tp.__name__}{_bounds_text(f)}"
        raise UserError(f"bad value {raw!r} for {name}: expected {wanted}") from None
    return raw


def _bounds_text(f: Field, linked: tuple[str, Any] | None = None) -> str:
    """`` >= 0 and <= 1`` for the bounds in ``f``'s metadata ('' when it has none); a ``max`` naming
    another option reads ``<= num_timesteps``, or ``<= num_timesteps (1000)`` given ``linked``
    (that option's key and value)."""
    m, parts = f.metadata, []
    if m.get("min") is not None:
        parts.append(f"{'>' if m.get('min_exclusive') else '>='} {m['min']}")
    if linked is not None:
        parts.append(f"<= {linked[0]} ({linked[1]})")
    elif m.get("max") is not None:
        parts.append(f"<= {m['max']}")
    return (" " + " and ".join(parts)) if parts else ""


def check(cls: type, f: Field, value: Any) -> None:
    """Check choices, finiteness and bounds declared in the field's metadata (a ``max`` naming
    another option is checked by :func:`check_linked`)."""
    m, name, choices = f.metadata, key_of(f), choices_of(f)
    if choices is not None and value not in choices:
        listed = ", ".join(str(c) for c in choices)
        raise UserError(f"bad value {value!r} for {name}; valid choices: {listed}")
    if isinstance(value, float) and m.get("finite", True) and not math.isfinite(value):
        raise UserError(f"bad value {value!r} for {name}: must be a finite number{_bounds_text(f)}")
    lo, hi = m.get("min"), m.get("max")
    if lo is not None and (value < lo or (m.get("min_exclusive") and value == lo)):
        raise UserError(f"bad value {value!r} for {name}: must be{_bounds_text(f)}")
    if hi is not None and not isinstance(hi, str) and value > hi:
        raise UserError(f"bad value {value!r} for {name}: must be{_bounds_text(f)}")


def linked_max(f: Field) -> str | None:
    """The key of the option that bounds ``f`` from above (``max="num_timesteps"``), if any."""
    hi = f.metadata.get("max")
    return hi if isinstance(hi, str) else None


def check_linked(f: Field, value: Any, bound_key: str, bound: Any) -> None:
    """Check ``value`` of ``f`` against ``bound``, the value of the option ``bound_key``."""
    if value > bound:
        raise UserError(f"bad value {value!r} for {key_of(f)}: must be{_bounds_text(f, (bound_key, bound))}")


def validate(obj: Any) -> None:
    """Check every option field of ``obj`` against its metadata."""
    for f in option_fields(obj):
        check(type(obj), f, getattr(obj, f.name))


def to_dict(obj: Any) -> dict[str, Any]:
    """JSON-ready dict, using each field's key; nested dataclasses become nested dicts."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        out[key_of(f)] = to_dict(v) if dataclasses.is_dataclass(v) else v
    return out


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Inverse of :func:`to_dict`. Unknown keys raise UserError naming the valid keys."""
    fields = {key_of(f): f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"unknown {where} key {unknown[0]!r}; valid keys: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, f in fields.items():
        if key not in data:
            continue
        tp = hints[f.name]
        if _is_dataclass_type(tp):
            kwargs[f.name] = from_dict(tp, data[key], where=key)
        else:
            kwargs[f.name] = coerce(cls, f, data[key])
    return cls(**kwargs)


def set_option(obj: Any, key: str, raw: Any) -> bool:
    """Set the option named ``key`` on ``obj`` (coerced and checked). Returns False if no such key."""
    for f in option_fields(obj):
        if key_of(f) == key:
            value = coerce(type(obj), f, raw)
            check(type(obj), f, value)
            setattr(obj, f.name, value)
            return True
    return False


def option_keys(obj: Any) -> list[str]:
    return [key_of(f) for f in option_fields(obj)]


def describe(obj: Any) -> list[tuple[str, Any, str]]:
    """(key, current value, help) for each option, for ``--list``."""
    return [(key_of(f), getattr(obj, f.name), f.metadata.get("help", "")) for f in option_fields(obj)]


def add_flags(parser: Any, cls: type, keys: Iterable[str], show_default: bool = True,
              defaults: dict[str, Any] | None = None, required: bool = False, note: str = "") -> None:
    """Add ``--key-name`` flags for the options ``keys`` of the dataclass ``cls``: help, default and
    choices come from the field, so a flag never restates what its option declares. Values stay
    strings (default None: not given) and are coerced and checked like ``--set`` values
    (:func:`flag_values`). ``defaults`` gives a command's own default for some keys (the flag then
    has that value when not given); ``note`` is appended to each help text."""
    fields = {key_of(f): f for f in option_fields(cls)}
    defaults = defaults or {}
    for key in keys:
        f = fields[key]
        choices = choices_of(f)
        shown = defaults.get(key, f.default)
        parts = [f"default {chr(39) * 2 if shown == '' else shown}" if show_default else "",
                 f"choices: {' | '.join(map(str, choices))}" if choices else "", note]
        extra = "; ".join(part for part in parts if part)
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, metavar=key.upper(), required=required,
                            default=defaults.get(key),
                            help=f"{f.metadata.get('help', '')}" + (f" ({extra})" if extra else ""))


def flag_values(args: Any, cls: type, keys: Iterable[str]) -> dict[str, Any]:
    """The flags ``keys`` of ``args`` that were given (or have a command default), coerced to their
    option's type and checked against its choices and bounds (:class:`UserError` otherwise)."""
    fields = {key_of(f): f for f in option_fields(cls)}
    out: dict[str, Any] = {}
    for key in keys:
        raw = getattr(args, key, None)
        if raw is not None:
            out[key] = coerce(cls, fields[key], raw)
            check(cls, fields[key], out[key])
    return out


def keys_where(obj_or_cls: Any, flag: str, value: bool = True) -> list[str]:
    """Keys of the options whose metadata ``flag`` (``protocol``, ``how``) is ``value``."""
    return [key_of(f) for f in option_fields(obj_or_cls) if f.metadata.get(flag, flag == "protocol") == value]
