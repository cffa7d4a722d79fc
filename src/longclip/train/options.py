"""Command-line options for training, generated from ``TrainConfig`` and the chosen method's options dataclass.

A default is written once, in the dataclass field; a method's ``Task.defaults`` replace common defaults (so
``longclip train --method tulip-distill --help`` shows that method's learning rate). The CLI only calls these.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Sequence
from typing import Any

from .config import TrainConfig
from .tasks import available_tasks, get_task

REQUIRED = ("model", "data", "output")


def method_from_argv(argv: Sequence[str], default: str = "longclip") -> str:
    """The ``--method`` given in ``argv`` (before the parser that depends on it is built), else ``default``."""
    for i, arg in enumerate(argv):
        if arg == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--method="):
            return arg.split("=", 1)[1]
    return default


def add_train_arguments(parser: argparse.ArgumentParser, method: str = "longclip") -> None:
    """Add one flag per common setting and per setting of ``method``, with the method's defaults and help."""
    task = get_task(method)
    common = parser.add_argument_group("settings of every method")
    _add_fields(common, TrainConfig, overrides=task.defaults, skip=("method",))
    common.add_argument(
        "--method", default=method, choices=available_tasks(), help="training method (default: longclip)"
    )
    own = parser.add_argument_group(f"settings of --method {method}")
    _add_fields(own, task.options_class)


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, Any]:
    """The ``TrainConfig`` and method options that parsed ``add_train_arguments`` flags describe."""
    task = get_task(args.method)
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    options = task.options_class(**{f.name: getattr(args, f.name) for f in dataclasses.fields(task.options_class)})
    return config, options


def _add_fields(group, cls: type, overrides: dict[str, Any] | None = None, skip: Sequence[str] = ()) -> None:
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        required = cls is TrainConfig and field.name in REQUIRED
        default = (overrides or {}).get(field.name, field.default)
        kind = hints[field.name]
        help_text = field.metadata.get("help", "") + ("" if required or default is None else f" (default: {default})")
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        convert = base if base in (int, float) else str
        group.add_argument(
            flag, type=convert, default=default, required=required, choices=field.metadata.get("choices"),
            help=help_text,
        )  # fmt: skip
