"""Settings that carry their own documentation: dataclass fields with help text, unit, bounds and a CLI flag.

The model config (``model.ModelConfig``) and the training settings (``training.config.TrainConfig``) are dataclasses
of such fields, so each fact about a setting — what it means, its unit, its default, what values it may take,
its command-line flag, whether ``udvd train --resume`` may change it — is written once, beside the field, and the
checks, the ``--help`` texts and the error messages are derived from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

KINDS = (int, float, str, bool, tuple)


@dataclass(frozen=True)
class Spec:
    """What a setting may be. ``kind``: int, float, str, bool, or tuple (of floats); ``optional``: None is allowed
    (meaning: chosen elsewhere, ``default_text`` says how); ``low`` / ``high``: bounds, inclusive unless
    ``low_open`` / ``high_open``; a bound given as a string names another field of the same settings (its value);
    ``choices``: the allowed values; ``flag``: the command-line flag (default ``--field-name``); ``resume``: a
    resumed training run may change it."""

    help: str
    kind: type
    unit: str = ""
    low: float | str | None = None
    high: float | str | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None
    optional: bool = False
    flag: str | None = None
    default_text: str | None = None
    resume: bool = False


def setting(default: Any, help: str, kind: type, **spec: Any) -> Any:
    """A dataclass field with default ``default`` documented by a :class:`Spec` (``help``, ``kind``, ``**spec``)."""
    if kind not in KINDS:
        raise TypeError(f"kind must be one of {KINDS}, got {kind!r}")
    return dataclasses.field(default=default, metadata={"spec": Spec(help=help, kind=kind, **spec)})


def fields(settings: Any) -> Iterator[tuple[dataclasses.Field, Spec]]:
    """(field, spec) of every documented field of a settings dataclass (class or instance), in order."""
    for f in dataclasses.fields(settings):
        if "spec" in f.metadata:
            yield f, f.metadata["spec"]


def spec_of(settings: Any, name: str) -> Spec:
    return next(s for f, s in fields(settings) if f.name == name)


def flag(settings: Any, name: str) -> str:
    """The command-line flag of field ``name``."""
    spec = spec_of(settings, name)
    return spec.flag or "--" + name.replace("_", "-")


def interval(spec: Spec, values: dict[str, Any] | None = None) -> str:
    """The allowed range of a number setting as text, e.g. ``(0, 1]``; bounds naming fields are shown by name
    (or by value, given ``values``)."""

    def bound(b: float | str | None, inf: str) -> str:
        if b is None:
            return inf
        if isinstance(b, str):
            return f"{values[b]:g}" if values is not None and isinstance(values.get(b), (int, float)) else b
        return f"{b:g}"

    lo, hi = bound(spec.low, "-inf"), bound(spec.high, "inf")
    left = "(" if spec.low_open or spec.low is None else "["
    right = ")" if spec.high_open or spec.high is None else "]"
    return f"{left}{lo}, {hi}{right}"


def describe(spec: Spec, values: dict[str, Any] | None = None) -> str:
    """What values a setting takes, for help texts and messages (bounds naming fields by value, given ``values``)."""
    if spec.choices is not None:
        return "one of " + ", ".join(map(str, spec.choices))
    if spec.kind is int and spec.high is None and isinstance(spec.low, int) and not spec.low_open:
        return "a positive integer" if spec.low == 1 else f"an integer >= {spec.low}"
    if spec.kind in (int, float):
        noun = "an integer" if spec.kind is int else "a finite number"
        return noun if spec.low is None and spec.high is None else f"{noun} in {interval(spec, values)}"
    if spec.kind is tuple:
        return "finite numbers"
    return {bool: "true or false", str: "a string"}[spec.kind]


def _is(kind: type, value: Any) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, kind)


def check_value(spec: Spec, value: Any, label: str, values: dict[str, Any] | None = None) -> None:
    """ValueError ``"<label> must be ..., got <value>"`` unless ``value`` fits ``spec`` (bounds naming other fields
    are read from ``values``)."""
    if value is None and spec.optional:
        return
    ok = _is(spec.kind, value)
    if ok and spec.kind is tuple:
        ok = all(_is(float, v) for v in value)
    if ok and spec.choices is not None:
        ok = value in spec.choices
    if ok and spec.kind in (int, float):
        lo = values[spec.low] if isinstance(spec.low, str) and values else spec.low
        hi = values[spec.high] if isinstance(spec.high, str) and values else spec.high
        if lo is not None and isinstance(lo, (int, float)):
            ok = value > lo if spec.low_open else value >= lo
        if ok and hi is not None and isinstance(hi, (int, float)):
            ok = value < hi if spec.high_open else value <= hi
    if not ok:
        allowed = describe(spec, values)
        shown = " ".join(map(str, value)) if isinstance(value, (tuple, list)) else repr(value)
        raise ValueError(f"{label} must be {allowed}{' or unset' if spec.optional else ''}, got {shown}")


def check(settings: Any, label: Callable[[str], str] | None = None) -> None:
    """Check every documented field of a settings instance; ValueError naming the first bad one (by ``label(name)``,
    default the field name)."""
    values = dataclasses.asdict(settings)
    for f, spec in fields(settings):
        check_value(spec, getattr(settings, f.name), label(f.name) if label else f.name, values)


def help_text(spec: Spec, default: Any) -> str:
    """``--help`` text: the help, the unit and allowed values, and the default."""
    unit = f"; {spec.unit}" if spec.unit else ""
    values = "" if spec.kind in (bool, str) and spec.choices is None else f"; {describe(spec)}"
    if spec.default_text is not None:
        shown = spec.default_text
    elif isinstance(default, float):
        shown = f"{default:g}"
    else:
        shown = "none" if default is None else str(default)
    return f"{spec.help}{unit}{values} (default: {shown})"


def add_arguments(parser: argparse.ArgumentParser, settings: type, names: list[str] | None = None,
                  defaults: dict[str, Any] | None = None, default_texts: dict[str, str] | None = None,
                  required: tuple[str, ...] = ()) -> None:
    """Add one option per documented field of ``settings`` (or those in ``names``) to ``parser``.

    Options have no argparse default (``argparse.SUPPRESS``): only the flags a user typed appear in the parsed
    namespace, so a default can never pass for a choice (``--resume`` relies on it). Booleans that default to
    True become ``--no-...`` switches that store False, the others ``store_true``. ``defaults`` / ``default_texts``
    override the defaults shown in the help (e.g. ``udvd finetune``'s); ``required`` names the options argparse
    demands."""
    for f, spec in fields(settings):
        if names is not None and f.name not in names:
            continue
        default = (defaults or {}).get(f.name, f.default)
        text = help_text(spec, default) if f.name not in (default_texts or {}) else help_text(
            dataclasses.replace(spec, default_text=default_texts[f.name]), default)  # type: ignore[index]
        kwargs: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=text, required=f.name in required)
        if spec.kind is bool:
            kwargs["action"] = "store_false" if f.default is True else "store_true"
        elif spec.kind is tuple:
            kwargs.update(type=float, nargs="+", metavar="X")
        else:
            kwargs["type"] = spec.kind
            if spec.choices is not None:
                kwargs["choices"] = spec.choices
        parser.add_argument(spec.flag or "--" + f.name.replace("_", "-"), **kwargs)
