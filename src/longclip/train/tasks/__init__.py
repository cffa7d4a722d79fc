"""Training methods: the ``Task`` interface, the registry, and the built-in methods (one registry line each)."""

from __future__ import annotations

from .base import NoOptions, Task, available_tasks, get_task, register_task
from .clip import CLIPOptions, CLIPTask
from .llm2clip import LLM2CLIPOptions, LLM2CLIPTask
from .llm2clip_mntp import LLM2CLIPMNTPOptions, LLM2CLIPMNTPTask
from .llm2clip_text import LLM2CLIPTextOptions, LLM2CLIPTextTask
from .longclip import LongCLIPOptions, LongCLIPTask
from .tulip import TulipDistillOptions, TulipDistillTask, TulipFinetuneOptions, TulipFinetuneTask

register_task(LongCLIPTask)
register_task(CLIPTask)
register_task(TulipDistillTask)
register_task(TulipFinetuneTask)
register_task(LLM2CLIPMNTPTask)
register_task(LLM2CLIPTextTask)
register_task(LLM2CLIPTask)

__all__ = [
    "CLIPOptions",
    "CLIPTask",
    "LLM2CLIPMNTPOptions",
    "LLM2CLIPMNTPTask",
    "LLM2CLIPOptions",
    "LLM2CLIPTask",
    "LLM2CLIPTextOptions",
    "LLM2CLIPTextTask",
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
