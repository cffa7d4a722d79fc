"""``LongCLIPProcessor``: tokenizer and image preprocessing of a model in one object, like transformers' processors."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from .checkpoints import config_from_openai, read_state_dict
from .checkpoints.hub import resolve
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
        """The processor of any checkpoint ``longclip.load`` accepts, without loading the model's weights."""
        path = resolve(name_or_path, revision)
        if path.is_dir() and (path / "config.json").is_file():
            from transformers import CLIPConfig

            config = CLIPConfig.from_pretrained(path)
            transform = ImageTransform.from_directory(path, config.vision_config.image_size)
        else:
            from .checkpoints import _single_weight_file

            file = _single_weight_file(path) if path.is_dir() else path
            config = config_from_openai(read_state_dict(file))
            transform = ImageTransform.for_size(config.vision_config.image_size)
        return cls(get_tokenizer(config.text_config.max_position_embeddings), transform)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write transformers tokenizer and image-processor files."""
        self.tokenizer.save_pretrained(Path(directory))
        self.image_transform.image_processor.save_pretrained(Path(directory))
