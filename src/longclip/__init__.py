"""longclip: CLIP models that read long text.

>>> import longclip
>>> model, preprocess = longclip.load("BeichenZhang/LongCLIP-B")
>>> text = longclip.tokenize(["A man is crossing the street with a red car parked nearby."])
>>> image = preprocess("demo.png").unsqueeze(0)
>>> logits_per_image, logits_per_text = model(image, text)

Names are imported on first use: ``import longclip`` stays fast (the CLI's ``--help`` does not wait for torch and
transformers to load).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "load": "api",
    "load_from_clip": "api",
    "Checkpoint": "checkpoints",
    "CheckpointError": "checkpoints",
    "Layout": "checkpoints",
    "available_models": "checkpoints",
    "read_checkpoint": "checkpoints",
    "register_layout": "checkpoints",
    "ImageLoadError": "images",
    "open_image": "images",
    "DualEncoder": "models",
    "LongCLIPModel": "models",
    "build_model": "models",
    "register_family": "models",
    "fold_positional_tables": "positions",
    "stretch_positional_embedding": "positions",
    "LongCLIPProcessor": "processing",
    "TextBatch": "text",
    "TextTokenizer": "text",
    "LongCLIPTokenizer": "tokenizer",
    "tokenize": "tokenizer",
}
__all__ = [
    "Checkpoint",
    "CheckpointError",
    "DualEncoder",
    "ImageLoadError",
    "Layout",
    "LongCLIPModel",
    "LongCLIPProcessor",
    "LongCLIPTokenizer",
    "TextBatch",
    "TextTokenizer",
    "available_models",
    "build_model",
    "fold_positional_tables",
    "load",
    "load_from_clip",
    "open_image",
    "read_checkpoint",
    "register_family",
    "register_layout",
    "stretch_positional_embedding",
    "tokenize",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .api import load, load_from_clip
    from .checkpoints import Checkpoint, CheckpointError, Layout, available_models, read_checkpoint, register_layout
    from .images import ImageLoadError, open_image
    from .models import DualEncoder, LongCLIPModel, build_model, register_family
    from .positions import fold_positional_tables, stretch_positional_embedding
    from .processing import LongCLIPProcessor
    from .text import TextBatch, TextTokenizer
    from .tokenizer import LongCLIPTokenizer, tokenize
