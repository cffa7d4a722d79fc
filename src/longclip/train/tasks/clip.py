"""Plain CLIP contrastive training (Radford et al., 2021): image <-> caption, symmetric cross-entropy.

Trains any model family as it is (no stretching): what ``longclip reproduce`` pre-trains its small CLIP with, and a
baseline for fine-tuning on long captions without Long-CLIP's additions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..distributed import gather_with_grad
from ..losses import LossOutput, contrastive_loss
from .base import Task


@dataclass
class CLIPOptions:
    """Settings of plain contrastive training."""

    caption: Literal["long", "short"] = field(
        default="long", metadata={"help": "which caption of each pair to train on", "choices": ["long", "short"]}
    )
    label_smoothing: float = field(default=0.0, metadata={"help": "label smoothing of the cross-entropies"})
    freeze_vision: bool = field(default=False, metadata={"help": "train only the text tower"})
    freeze_text: bool = field(default=False, metadata={"help": "train only the image tower"})

    def __post_init__(self) -> None:
        if self.caption not in ("long", "short"):
            raise ValueError(f"caption must be 'long' or 'short', got {self.caption!r}")
        if self.freeze_vision and self.freeze_text:
            raise ValueError("freezing both towers leaves nothing to train")


class CLIPTask(Task):
    """CLIP's loss over the global batch (features gathered across ranks with their gradients)."""

    name = "clip"
    options_class = CLIPOptions

    @classmethod
    def prepare_model(cls, config, options: CLIPOptions):
        from ...api import load_model
        from ..freezing import freeze_tower

        model = load_model(config.model, dtype="float32")
        for tower, frozen in (("vision", options.freeze_vision), ("text", options.freeze_text)):
            if frozen:
                freeze_tower(model, tower)
        return model

    def forward(self, batch: dict[str, Any]) -> LossOutput:
        key = self.options.caption
        image = self.model.encode_image(batch["pixels"], normalize=True)
        text = self.model.encode_text(batch[f"{key}_ids"], batch.get(f"{key}_mask"), normalize=True)
        scale = self.model.logit_scale.exp()
        with self.full_precision():
            gather = lambda t: gather_with_grad(t.float(), self.context)  # noqa: E731
            loss = contrastive_loss(gather(image), gather(text), scale.float(), self.options.label_smoothing)
        return LossOutput(loss, {"loss_clip": float(loss.detach())})
