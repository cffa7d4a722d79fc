"""``LongCLIPProcessor``: tokenizer and image preprocessing of a model in one object, like transformers' processors."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .images import ImageTransform
from .tokenizer import LongCLIPTokenizer, get_tokenizer


class LongCLIPProcessor:
    """Turns texts and images into the ``input_ids`` and ``pixel_values`` a model takes.

    Args:
        tokenizer: The tokenizer (its context length is the model's).
        image_transform: The image preprocessing.
    """

    def __init__(self, tokenizer: LongCLIPTokenizer, image_transform: ImageTransform):
        self.tokenizer = tokenizer
        self.image_transform = image_transform

    def __call__(
        self, text: str | Sequence[str] | None = None, images: Sequence | None = None, truncate: bool = True
    ) -> dict[str, torch.Tensor]:
        """Tokenize ``text`` and preprocess ``images``; returns a dict with ``input_ids`` and/or ``pixel_values``.

        Args:
            text: A text or texts.
            images: Images in any form ``longclip.open_image`` accepts (a single one is also accepted).
            truncate: Cut texts longer than the context (end token kept), instead of raising ``ValueError``.
        """
        if text is None and images is None:
            raise ValueError("pass text, images or both")
        out: dict[str, torch.Tensor] = {}
        if text is not None:
            out["input_ids"] = self.tokenizer(text, truncate=truncate)
        if images is not None:
            if not isinstance(images, (list, tuple)):
                images = [images]
            out["pixel_values"] = self.image_transform.batch(images)
        return out

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, revision: str | None = None) -> LongCLIPProcessor:
        """The processor of any CLIP-family checkpoint ``longclip.load`` accepts.

        A transformers directory's weights are not read (its config says all); a single ``.pt`` file is read to
        learn its architecture, but no model is built.

        Raises:
            ValueError: The checkpoint is of another model family (its tokenizer is ``model.tokenizer``).
        """
        from .checkpoints import read_config  # imported here: models import this module, and never checkpoints
        from .models import LongCLIPModel, family_for
        from .models.clip import clip_config, clip_context_length

        checkpoint = read_config(name_or_path, revision)
        if not issubclass(family_for(checkpoint), LongCLIPModel):
            raise ValueError(
                f"{name_or_path} is a {checkpoint.family!r} model; LongCLIPProcessor is CLIP's. "
                "Use the model's own tokenizer and image_transform (longclip.load)"
            )
        config = clip_config(checkpoint.config)  # fills in what config.json leaves at transformers' defaults
        size = config.vision_config.image_size
        if checkpoint.directory is not None:
            transform = ImageTransform.from_directory(checkpoint.directory, size)
        else:
            transform = ImageTransform.for_size(size)
        return cls(get_tokenizer(clip_context_length(config)), transform)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write transformers tokenizer and image-processor files."""
        self.tokenizer.save_pretrained(Path(directory))
        self.image_transform.image_processor.save_pretrained(Path(directory))
