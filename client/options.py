"""Settings declared once, as dataclass fields with their default and help, from which the
command line is built: a method's or a task's options, and the run's own.

    @dataclass(frozen=True)
    class CraftOptions:
        popsize: int = option(40, "CMA-ES population: candidates per generation")

`add_options` turns each field into a flag (`popsize` -> `--popsize`) of the field's type, with
the field's default; `values` reads them back into the dataclass.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def option(default: Any, help: str, **flag: Any) -> Any:
    """A dataclass field that is also a flag; `flag`: more of argparse's add_argument keywords
    (choices, action). `default`: immutable, or dataclasses.MISSING for a required flag."""
    return dataclasses.field(default=default, metadata={"help": help, "flag": flag})


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def option_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of `cls` that are flags (those made with `option`)."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def _value_type(annotation: Any) -> Any:
    """int for `int` and `int | None`; None for a bool (a switch) or a tuple (repeated)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return _value_type(args[0])
    return None if annotation in (bool, tuple) or typing.get_origin(annotation) is tuple else annotation


def add_options(parser: argparse._ActionsContainer, cls: type, only: tuple[str, ...] | None = None) -> None:
    """One flag per option field of `cls` (or of those named in `only`), typed and defaulted as
    the field is; a field without a default is a required flag."""
    hints = typing.get_type_hints(cls)
    for f in option_fields(cls):
        if only is not None and f.name not in only:
            continue
        flag = dict(f.metadata["flag"])
        kind = _value_type(hints[f.name])
        if hints[f.name] is bool:
            flag.setdefault("action", "store_true")
        elif kind is not None:
            flag.setdefault("type", kind)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            flag["required"] = True
        else:  # argparse appends to a list default: a copy, so the field's default stays as it is
            flag["default"] = list(default_of(f)) if flag.get("action") == "append" else default_of(f)
        parser.add_argument(flag_name(f.name), dest=f.name, help=f.metadata["help"], **flag)


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    assert f.default_factory is not dataclasses.MISSING  # callers ask only of a field with a default
    return f.default_factory()


def values(cls: type[T], args: argparse.Namespace, **more: Any) -> T:
    """`cls` from the parsed flags of its option fields (and `more`, for its other fields)."""
    given: dict[str, Any] = {f.name: getattr(args, f.name) for f in option_fields(cls) if hasattr(args, f.name)}
    for name, value in given.items():
        if isinstance(value, list):
            given[name] = tuple(value)
    return cls(**given, **more)


def given_flags(argv: list[str]) -> list[str]:
    """The long flags written in `argv` (`--lr 1` and `--lr=1` both give `--lr`)."""
    return [a.split("=", 1)[0] for a in argv if a.startswith("--")]


def defaults(cls: type) -> dict[str, Any]:
    """The option fields' defaults (those that have one)."""
    return {
        f.name: default_of(f)
        for f in option_fields(cls)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }
