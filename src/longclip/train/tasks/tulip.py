"""TULIP's two training stages (Najdenkoska et al., "TULIP: Token-length Upgraded CLIP", 2024).

* ``tulip-distill`` (relative-position distillation): a student whose text tower has relative positions starts
  from a CLIP's text weights without the position table and learns to give the frozen CLIP teacher's text
  embeddings: loss ``1 - cos(student(caption), teacher(caption cut at 77 tokens))``. Only the student's text tower
  trains; the student reads the full caption up to its own context.
* ``tulip-finetune`` (relative-position expansion): CLIP's contrastive loss on (image, long caption) plus on
  (image, short caption = the caption's first sentence), whole model or chosen towers; optionally the context is
  extended first, with the rotary base rescaled by dynamic NTK (recorded in the model's config, so inference uses
  the frequencies training used).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ...tokenizer import CLIP_CONTEXT_LENGTH, DEFAULT_CONTEXT_LENGTH
from ..distributed import gather_with_grad
from ..losses import LossOutput, contrastive_loss
from .base import Task


def _opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


def _load_student(config, context_length: int, position_encoding: str, rope_theta: float, cope_positions: int):
    """``config.model`` as a TULIP: a TULIP as it is, any CLIP converted (its text position table dropped)."""
    from ...api import load_model
    from ...models import TulipModel, tulip_from_clip

    model = load_model(config.model, dtype="float32")
    if isinstance(model, TulipModel):
        return model
    return tulip_from_clip(
        model, context_length=context_length, position_encoding=position_encoding, rope_theta=rope_theta,
        cope_positions=cope_positions,
    )  # fmt: skip


@dataclass
class TulipDistillOptions:
    """Stage 1 settings (TULIP's values are the defaults)."""

    teacher: str | None = _opt(None, "the frozen teacher CLIP (anything longclip.load reads); required")
    teacher_context: int = _opt(CLIP_CONTEXT_LENGTH, "tokens the teacher sees (the caption is cut, end token kept)")
    context_length: int = _opt(DEFAULT_CONTEXT_LENGTH, "the student's text context when it starts from a CLIP")
    position_encoding: Literal["rope", "cope"] = _opt(
        "rope", "the student's relative positions", choices=["rope", "cope"]
    )
    rope_theta: float = _opt(10000.0, "rotary base of a student built from a CLIP")
    cope_positions: int = _opt(64, "rows of CoPE's position table (npos_max) of a student built from a CLIP")

    def __post_init__(self) -> None:
        if not self.teacher:
            raise ValueError("tulip-distill needs --teacher (the CLIP whose text embeddings the student learns)")
        if self.position_encoding not in ("rope", "cope"):
            raise ValueError(f"position_encoding must be 'rope' or 'cope', got {self.position_encoding!r}")
        if self.teacher_context < 2:
            raise ValueError(f"teacher_context must be at least 2, got {self.teacher_context}")


class TulipDistillTask(Task):
    """Cosine distillation of a frozen CLIP's text embeddings into a relative-position text tower."""

    name = "tulip-distill"
    options_class = TulipDistillOptions
    defaults: dict[str, Any] = {"lr": 5e-4, "weight_decay": 0.1, "warmup_steps": 1000}

    def __init__(self, model, options: TulipDistillOptions | None = None, context=None):
        super().__init__(model, options, context)
        from ...api import load_model

        teacher = load_model(self.options.teacher, device=self.context.device, dtype="float32")
        if teacher.context_length < self.options.teacher_context:
            raise ValueError(
                f"the teacher reads {teacher.context_length} tokens, fewer than --teacher-context "
                f"{self.options.teacher_context}"
            )
        self.teacher = teacher.requires_grad_(False).eval()

    @classmethod
    def prepare_model(cls, config, options: TulipDistillOptions):
        """The student (built from ``config.model``); everything but its text tower frozen."""
        from ..freezing import freeze_tower

        model = _load_student(
            config, options.context_length, options.position_encoding, options.rope_theta, options.cope_positions
        )
        freeze_tower(model, "vision")
        model.logit_scale.requires_grad_(False)
        return model

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # a frozen teacher stays in eval mode (no dropout), whatever the task's mode
        return self

    def collate(self, items: list[dict | None]) -> dict[str, Any]:
        good = [item for item in items if item is not None]
        captions = [item["caption"] for item in good]
        student = self.model.tokenizer.batch(captions, truncate=True)
        teacher_tokenizer = self.teacher.tokenizer
        cut = [
            teacher_tokenizer.truncate(ids, self.options.teacher_context) for ids in teacher_tokenizer.encode(captions)
        ]
        teacher = teacher_tokenizer.pad(cut)
        return {
            "ids": student.input_ids,
            "mask": student.attention_mask,
            "teacher_ids": teacher.input_ids,
            "teacher_mask": teacher.attention_mask,
            "indices": torch.tensor([item["index"] for item in good], dtype=torch.long),
            "num_bad": len(items) - len(good),
        }

    def forward(self, batch: dict[str, Any]) -> LossOutput:
        student = self.model.encode_text(batch["ids"], batch["mask"], normalize=True)
        with torch.no_grad():
            target = self.teacher.encode_text(batch["teacher_ids"], batch["teacher_mask"], normalize=True)
        with self.full_precision():
            loss = (1 - (student.float() * target.float()).sum(-1)).mean()
        return LossOutput(loss, {"loss_distill": float(loss.detach())})


@dataclass
class TulipFinetuneOptions:
    """Stage 2 settings (TULIP's values are the defaults)."""

    short_loss_weight: float = _opt(1.0, "weight of the (image, short caption) CLIP loss; 0 disables it")
    label_smoothing: float = _opt(0.0, "label smoothing of the contrastive cross-entropies")
    freeze_vision: bool = _opt(False, "train only the text tower")
    freeze_text: bool = _opt(False, "train only the image tower")
    extend_context: int | None = _opt(None, "lengthen the text context to this many tokens before training")
    ntk_factor: float | None = _opt(
        None, "with --extend-context: rescale the rotary base by dynamic NTK with this factor (TULIP: 8)"
    )

    def __post_init__(self) -> None:
        if self.freeze_vision and self.freeze_text:
            raise ValueError("freezing both towers leaves nothing to train")
        if self.ntk_factor is not None and self.extend_context is None:
            raise ValueError("--ntk-factor rescales the rotary base toward --extend-context; give both")
        if self.ntk_factor is not None and self.ntk_factor < 1:
            raise ValueError(f"ntk_factor must be at least 1, got {self.ntk_factor}")
        if self.short_loss_weight < 0:
            raise ValueError(f"short_loss_weight must be 0 or more, got {self.short_loss_weight}")


class TulipFinetuneTask(Task):
    """CLIP loss on long captions plus weighted CLIP loss on short captions, over the global batch."""

    name = "tulip-finetune"
    options_class = TulipFinetuneOptions
    defaults: dict[str, Any] = {"lr": 1e-5, "weight_decay": 0.1}

    @classmethod
    def prepare_model(cls, config, options: TulipFinetuneOptions):
        """The TULIP in ``config.model`` (a CLIP is converted with TULIP's defaults), extended and frozen as asked."""
        from ..freezing import freeze_tower

        model = _load_student(config, DEFAULT_CONTEXT_LENGTH, "rope", 10000.0, 64)
        if options.extend_context is not None:
            model.extend_context(options.extend_context, options.ntk_factor)
        for tower, frozen in (("vision", options.freeze_vision), ("text", options.freeze_text)):
            if frozen:
                freeze_tower(model, tower)
        return model

    def forward(self, batch: dict[str, Any]) -> LossOutput:
        model = self.model
        image = model.encode_image(batch["pixels"], normalize=True)
        long_text = model.encode_text(batch["long_ids"], batch.get("long_mask"), normalize=True)
        parts, weight = {}, self.options.short_loss_weight
        short_text = model.encode_text(batch["short_ids"], batch.get("short_mask"), normalize=True) if weight else None
        scale = model.logit_scale.exp().float()
        with self.full_precision():
            gather = lambda t: gather_with_grad(t.float(), self.context)  # noqa: E731
            images = gather(image)
            loss = contrastive_loss(images, gather(long_text), scale, self.options.label_smoothing)
            parts["loss_long"] = float(loss.detach())
            if short_text is not None:
                short = contrastive_loss(images, gather(short_text), scale, self.options.label_smoothing)
                parts["loss_short"] = float(short.detach())
                loss = loss + weight * short
        return LossOutput(loss, parts)
