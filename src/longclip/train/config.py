"""The training settings every method shares, with the Long-CLIP paper's defaults.

Each method's own settings live in its task's options dataclass (``longclip.train.tasks``); a method may also give
other defaults for these common ones (``Task.defaults``, applied by ``TrainConfig.for_method`` and the CLI).
``longclip train`` builds its command-line options from both (their ``help`` metadata), so a default is written
once. These defaults are Long-CLIP's fine-tuning settings: AdamW (betas 0.9/0.999, eps 1e-8, weight decay 0.01),
learning rate 1e-6 after 200 warm-up steps then cosine decay, 6 epochs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal


def _opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    model: str = _opt(None, "model to train: a file, directory or hub id longclip.load reads (the method adapts it)")
    data: str = _opt(None, "ShareGPT4V .json, .csv/.tsv table (image, caption[, short_caption]) or webdataset urls")
    output: str = _opt(None, "run directory: checkpoints, metrics.jsonl, final model")
    method: str = _opt("longclip", "training method (longclip train --method NAME --help lists its own options)")
    image_root: str | None = _opt(None, "folder that relative image paths in --data are resolved against")

    epochs: int = _opt(6, "passes over the training data")
    batch_size: int = _opt(128, "images per device per step")
    lr: float = _opt(1e-6, "peak learning rate")
    weight_decay: float = _opt(1e-2, "AdamW weight decay")
    beta1: float = _opt(0.9, "AdamW beta1")
    beta2: float = _opt(0.999, "AdamW beta2")
    eps: float = _opt(1e-8, "AdamW epsilon")
    warmup_steps: int = _opt(200, "linear warm-up steps before cosine decay")
    grad_clip: float | None = _opt(None, "clip the gradient norm to this value")
    seed: int = _opt(0, "seed for data order and initialisation")
    precision: Literal["fp32", "bf16", "fp16"] = _opt("fp32", "autocast precision", choices=["fp32", "bf16", "fp16"])

    val_rows: int = _opt(0, "hold out the first N rows for validation (ShareGPT4V-1k: 1000)")
    max_bad_fraction: float = _opt(0.01, "fail if more than this share of images cannot be read")
    num_workers: int = _opt(2, "data-loading worker processes per rank")
    samples_per_epoch: int | None = _opt(None, "epoch length for webdataset streams (required for them)")

    save_every: int = _opt(500, "write a training checkpoint every N steps")
    keep_checkpoints: int = _opt(3, "training checkpoints to keep")
    resume: str | None = _opt(None, "'auto' (newest checkpoint in --output) or a checkpoint directory")
    max_steps: int | None = _opt(None, "length of the run in steps (default: epochs x steps per epoch)")
    stop_after_steps: int | None = _opt(
        None, "end this run after N steps with a checkpoint; the schedule still spans the whole run (for --resume)"
    )
    log_every: int = _opt(10, "write metrics every N steps")
    report_to: str = _opt("", "also log to: comma-separated 'tensorboard', 'wandb'")
    device: str | None = _opt(None, "cpu or cuda (default: cuda when available)")

    def __post_init__(self) -> None:
        for name in ("model", "data", "output"):
            if not getattr(self, name):
                raise ValueError(f"TrainConfig.{name} is required")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if not 0 <= self.max_bad_fraction <= 1:
            raise ValueError(f"max_bad_fraction must be between 0 and 1, got {self.max_bad_fraction}")
        for name in ("batch_size", "epochs", "save_every", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_steps", "stop_after_steps", "samples_per_epoch"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 (or unset), got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be 0 or more, got {self.warmup_steps}")

    @classmethod
    def for_method(cls, method: str = "longclip", **settings) -> TrainConfig:
        """A config with ``method``'s own defaults for common settings (its ``Task.defaults``), then ``settings``."""
        from .tasks import get_task

        return cls(method=method, **{**get_task(method).defaults, **settings})

    @classmethod
    def options(cls):
        """The fields with their help text, for building command-line options."""
        return fields(cls)
