"""longclip: CLIP models that read long text.

>>> import longclip
>>> model, preprocess = longclip.load("BeichenZhang/LongCLIP-B")
>>> text = longclip.tokenize(["A man is crossing the street with a red car parked nearby."])
>>> image = preprocess("demo.png").unsqueeze(0)
>>> logits_per_image, logits_per_text = model(image, text)
"""

from .api import load, load_from_clip
from .checkpoints import CheckpointError, available_models
from .images import ImageLoadError, open_image
from .models import DualEncoder, LongCLIPModel
from .positions import fold_positional_tables, stretch_positional_embedding
from .processing import LongCLIPProcessor
from .tokenizer import LongCLIPTokenizer, tokenize

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "DualEncoder",
    "ImageLoadError",
    "LongCLIPModel",
    "LongCLIPProcessor",
    "LongCLIPTokenizer",
    "available_models",
    "fold_positional_tables",
    "load",
    "load_from_clip",
    "open_image",
    "stretch_positional_embedding",
    "tokenize",
]
