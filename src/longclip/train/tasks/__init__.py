"""Training methods: the ``Task`` interface, the registry, and the built-in methods (one registry line each)."""

from __future__ import annotations

from .base import NoOptions, Task, available_tasks, get_task, register_task
from .clip import CLIPOptions, CLIPTask
from .longclip import LongCLIPOptions, LongCLIPTask

register_task(LongCLIPTask)
register_task(CLIPTask)

__all__ = [
    "CLIPOptions",
    "CLIPTask",
    "LongCLIPOptions",
    "LongCLIPTask",
    "NoOptions",
    "Task",
    "available_tasks",
    "get_task",
    "register_task",
]
