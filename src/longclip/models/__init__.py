"""Image-text models: ``DualEncoder`` subclasses, one per model family, and the registry that picks one.

``clip``: CLIP towers with a stretched position table (Long-CLIP); ``tulip``: relative positions (TULIP).
A family is added with one ``register_family`` line (here, or from user code through these public names).
"""

from .base import DualEncoder, check_state_dict, quiet_transformers_progress, resolve_dtype
from .clip import LongCLIPConfig, LongCLIPModel, stretch_clip
from .registry import Family, build_model, families, family_for, register_family
from .tulip import TulipConfig, TulipModel, tulip_from_clip

register_family("clip", LongCLIPModel, ("clip",))
register_family("tulip", TulipModel, ("tulip",))

__all__ = [
    "DualEncoder",
    "Family",
    "LongCLIPConfig",
    "LongCLIPModel",
    "build_model",
    "check_state_dict",
    "families",
    "family_for",
    "quiet_transformers_progress",
    "register_family",
    "resolve_dtype",
    "stretch_clip",
    "TulipConfig",
    "TulipModel",
    "tulip_from_clip",
]
