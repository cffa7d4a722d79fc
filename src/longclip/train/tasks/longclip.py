"""Long-CLIP's fine-tuning (Zhang et al., "Long-CLIP", ECCV 2024): knowledge-preserving stretching, kept position rows,
and primary component matching — long caption <-> image features, short caption <-> image features rebuilt from
their top principal components.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ...positions import LONGCLIP_KEEP_POSITIONS
from ..losses import LongCLIPObjective, LossOutput
from .base import Task


def _opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class LongCLIPOptions:
    """Long-CLIP's own settings (the paper's values are the defaults)."""

    keep_positions: int = _opt(
        LONGCLIP_KEEP_POSITIONS, "leading text positions kept frozen (knowledge-preserving stretching)"
    )
    stretch: Literal["kps", "linear"] = _opt(
        "kps", "how a 77-token CLIP is stretched to 248 positions", choices=["kps", "linear"]
    )
    pca_components: int = _opt(32, "principal components of the image features matched with short captions")
    short_loss_weight: float = _opt(1.0, "weight of the short-caption (coarse-grained) loss; 0 disables it")
    label_smoothing: float = _opt(0.1, "label smoothing of the contrastive cross-entropies")
    freeze_vision: bool = _opt(False, "train only the text tower")
    freeze_text: bool = _opt(False, "train only the image tower")
    save_pt: bool = _opt(False, "also write the final model in the released Long-CLIP .pt format")

    def __post_init__(self) -> None:
        if self.freeze_vision and self.freeze_text:
            raise ValueError("freezing both towers leaves nothing to train")
        if self.stretch not in ("kps", "linear"):
            raise ValueError(f"stretch must be 'kps' or 'linear', got {self.stretch!r}")
        if self.pca_components < 1:
            raise ValueError(f"pca_components must be at least 1, got {self.pca_components}")


class LongCLIPTask(Task):
    """Fine-grained loss on long captions plus weighted coarse-grained loss on short captions (see ``losses``)."""

    name = "longclip"
    options_class = LongCLIPOptions
    defaults: dict[str, Any] = {}  # TrainConfig's defaults are Long-CLIP's own

    def __init__(self, model, options: LongCLIPOptions | None = None, context=None):
        super().__init__(model, options, context)
        opts = self.options
        self.objective = LongCLIPObjective(
            opts.pca_components, opts.short_loss_weight, opts.label_smoothing, self.context
        )

    @classmethod
    def prepare_model(cls, config, options: LongCLIPOptions):
        """A 77-token CLIP is stretched to 248 positions; a Long-CLIP is continued as it is. Kept rows frozen."""
        from ...api import load_model
        from ...models import LongCLIPModel
        from ...positions import freeze_position_rows, stretch_clip
        from ...tokenizer import CLIP_CONTEXT_LENGTH
        from ..freezing import freeze_tower

        model = load_model(config.model, dtype="float32", expect=LongCLIPModel)
        if model.context_length == CLIP_CONTEXT_LENGTH and model.keep_positions is None:
            stretch_clip(model.clip, keep_positions=options.keep_positions, mode=options.stretch)
        # Linear stretching moves every row, so no row is kept from CLIP; knowledge-preserving stretching keeps them.
        freeze_position_rows(model.clip, options.keep_positions if options.stretch == "kps" else 0)
        if options.freeze_vision:
            freeze_tower(model, "vision")
        if options.freeze_text:
            freeze_tower(model, "text")
        if options.save_pt:  # find out now, not after hours of training
            from ...checkpoints import check_pt_compatible

            check_pt_compatible(model.config)
        return model

    def forward(self, batch: dict[str, Any]) -> LossOutput:
        model = self.model
        image = model.encode_image(batch["pixels"], normalize=True)
        long_text = model.encode_text(batch["long_ids"], batch.get("long_mask"), normalize=True)
        short_text = model.encode_text(batch["short_ids"], batch.get("short_mask"), normalize=True)
        scale = model.logit_scale.exp()
        with self.full_precision():  # the loss in float32: softmax over a large batch loses too much in half
            return self.objective(image.float(), long_text.float(), short_text.float(), scale.float())

    def counters(self) -> dict[str, float]:
        return {"svd_failures": self.objective.svd_failures}

    def load_counters(self, counters: dict[str, float]) -> None:
        self.objective.svd_failures = int(counters.get("svd_failures", 0))

    def save_final(self, directory: Path, config) -> Path:
        from ...checkpoints import save_longclip_pt
        from ...positions import merge_position_rows

        merge_position_rows(self.model.clip)
        final = super().save_final(directory, config)
        if self.options.save_pt:
            save_longclip_pt(self.model.clip, directory / "longclip.pt")
        return final
