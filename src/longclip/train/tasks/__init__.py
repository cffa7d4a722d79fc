"""Training methods: the ``Task`` interface, the registry, and the built-in methods (one registry line each)."""

from __future__ import annotations

from .base import NoOptions, Task, available_tasks, get_task, register_task
from .clip import CLIPOptions, CLIPTask
from .longclip import LongCLIPOptions, LongCLIPTask
from .tulip import TulipDistillOptions, TulipDistillTask, TulipFinetuneOptions, TulipFinetuneTask

register_task(LongCLIPTask)
register_task(CLIPTask)
register_task(TulipDistillTask)
register_task(TulipFinetuneTask)

__all__ = [
    "CLIPOptions",
    "CLIPTask",
    "LongCLIPOptions",
    "LongCLIPTask",
    "NoOptions",
    "Task",
    "TulipDistillOptions",
    "TulipDistillTask",
    "TulipFinetuneOptions",
    "TulipFinetuneTask",
    "available_tasks",
    "get_task",
    "register_task",
]
