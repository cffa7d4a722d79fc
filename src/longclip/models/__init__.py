"""Image-text models. ``clip``: CLIP towers with a stretched position table (Long-CLIP)."""

from .base import DualEncoder
from .clip import LongCLIPModel, stretch_clip

__all__ = ["DualEncoder", "LongCLIPModel", "stretch_clip"]
