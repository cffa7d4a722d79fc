"""LLM2CLIP stage 2: the adapter and CLIP's vision encoder against cached caption embeddings (``--method llm2clip``).

LLM2CLIP (Huang et al., 2024, Sec. 3.2) keeps the tuned language model frozen and embeds every caption once
(``longclip llm-embed``); this stage reads those embeddings, so no language-model forward pass runs. Per image it
picks the long or the short caption at random (50/50 by default), maps its cached embedding through the adapter
and trains adapter and vision tower (fully, partly or not at all) with CLIP's loss over the global batch.

``--model`` is a CLIP (any checkpoint ``longclip.load`` reads as the ``clip`` family); its vision tower, projection
and temperature start the model. The saved model carries the language model the cache was made with (read from the
cache's metadata) when it is still where the cache says, so it answers ``encode_text`` like any other.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..distributed import gather_with_grad
from ..losses import LossOutput, contrastive_loss
from .base import Task

logger = logging.getLogger(__name__)


@dataclass
class LLM2CLIPOptions:
    """Settings of adapter and vision training on a text-embedding cache."""

    text_cache: str | None = field(default=None, metadata={"help": "cache folder longclip llm-embed wrote (required)"})
    long_probability: float = field(default=0.5, metadata={"help": "chance of the long caption for each image"})
    adapter_blocks: int = field(default=4, metadata={"help": "residual blocks of the adapter"})
    adapter_expansion: int = field(default=2, metadata={"help": "MLP width of each block, times the input width"})
    adapter_dropout: float = field(default=0.0, metadata={"help": "dropout inside the adapter's blocks"})
    normalize_input: bool = field(default=False, metadata={"help": "L2-normalize cached embeddings first"})
    train_vision_layers: int = field(
        default=-1, metadata={"help": "last vision layers to train (-1: all, 0: vision frozen, adapter only)"}
    )
    attach_language_model: bool = field(
        default=True, metadata={"help": "save the cache's language model inside the final model"}
    )

    def __post_init__(self) -> None:
        if not self.text_cache:
            raise ValueError("--method llm2clip needs --text-cache (a folder written by longclip llm-embed)")
        if not 0.0 <= self.long_probability <= 1.0:
            raise ValueError(f"long_probability must be between 0 and 1, got {self.long_probability}")
        if self.train_vision_layers < -1:
            raise ValueError(f"train_vision_layers must be -1, 0 or a layer count, got {self.train_vision_layers}")


class LLM2CLIPTask(Task):
    """CLIP's loss between images and adapted cached caption embeddings."""

    name = "llm2clip"
    options_class = LLM2CLIPOptions
    defaults = {"lr": 1e-5, "warmup_steps": 0}

    def __init__(self, model, options: LLM2CLIPOptions | None = None, context=None):
        super().__init__(model, options, context)
        from ...data.text_cache import TextEmbeddingCache

        self.cache = TextEmbeddingCache(self.options.text_cache)

    @classmethod
    def prepare_model(cls, config, options: LLM2CLIPOptions):
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        from ...api import load_model
        from ...data.text_cache import TextEmbeddingCache
        from ...models.clip import LongCLIPModel
        from ...models.llm2clip import AdapterConfig, LLM2CLIPModel, TextAdapter

        clip = load_model(config.model, dtype="float32", expect=LongCLIPModel)
        cache = TextEmbeddingCache(options.text_cache)
        settings = {k: v for k, v in clip.config.vision_config.to_dict().items() if k != "model_type"}
        vision_config = CLIPVisionConfig(**{**settings, "projection_dim": clip.config.projection_dim})
        vision = CLIPVisionModelWithProjection(vision_config)
        vision.vision_model.load_state_dict(clip.clip.vision_model.state_dict())
        vision.visual_projection.load_state_dict(clip.clip.visual_projection.state_dict())
        adapter = TextAdapter(
            AdapterConfig(
                cache.dim, clip.config.projection_dim, options.adapter_blocks, options.adapter_expansion,
                options.adapter_dropout, options.normalize_input,
            )
        )  # fmt: skip
        scale = float(clip.logit_scale.detach())
        model = LLM2CLIPModel(vision, adapter, logit_scale=scale, image_transform=clip.preprocess)
        freeze_vision_layers(model, options.train_vision_layers)
        return model

    def collate(self, items: list[dict | None]) -> dict[str, Any]:
        good = [item for item in items if item is not None]
        p = self.options.long_probability
        texts = [item["caption"] if random.random() < p else item["short_caption"] for item in good]
        return {
            "pixels": torch.stack([item["pixels"] for item in good]) if good else torch.empty(0),
            "text_embeddings": self.cache.lookup(texts) if good else torch.empty(0, self.cache.dim),
            "indices": torch.tensor([item["index"] for item in good], dtype=torch.long),
            "num_bad": len(items) - len(good),
        }

    def forward(self, batch: dict[str, Any]) -> LossOutput:
        image = self.model.encode_image(batch["pixels"], normalize=True)
        text = self.model.encode_embeddings(batch["text_embeddings"], normalize=True)
        scale = self.model.logit_scale.exp()
        with self.full_precision():
            gather = lambda t: gather_with_grad(t.float(), self.context)  # noqa: E731
            loss = contrastive_loss(gather(image), gather(text), scale.float())
        return LossOutput(loss, {"loss_clip": float(loss.detach())})

    def validator(self, pairs: list):
        """Retrieval R@1 of the held-out pairs against their cached caption embeddings through the adapter (no
        language model is loaded while training); None, with a warning, if the cache lacks their captions."""
        from ..validation import feature_retrieval_validator

        missing = [text for p in pairs for text in (p.caption, p.short_caption) if text not in self.cache]
        if missing:
            logger.warning(
                "no validation: %d held-out captions are not in the text cache %s (first: %r)",
                len(missing), self.cache.directory, missing[0][:80],
            )  # fmt: skip
            return None

        def text_features(texts: list[str]) -> torch.Tensor:
            with torch.no_grad():
                embeddings = self.cache.lookup(texts).to(self.model.device)
                return self.model.encode_embeddings(embeddings, normalize=True).float()

        return feature_retrieval_validator(pairs, text_features)

    def save_final(self, directory: Path, config) -> Path:
        """Save the model, with the cache's language model attached when it can be loaded."""
        settings = self.cache.metadata
        if self.options.attach_language_model and settings.get("model"):
            from ...models.language import load_language_model

            try:
                language, tokenizer = load_language_model(
                    settings["model"], pooling=settings.get("pooling", "mean"),
                    bidirectional=settings.get("bidirectional", False),
                    context_length=settings.get("context_length"), pool_prefix=settings.get("pool_prefix", True),
                )  # fmt: skip
                self.model.attach_language_model(language.to(self.model.device), tokenizer)
            except (OSError, ValueError) as e:
                logger.warning("saving without a language model: %s could not be loaded (%s)", settings["model"], e)
        return super().save_final(directory, config)


def freeze_vision_layers(model, train_layers: int) -> None:
    """Freeze the vision tower except its last ``train_layers`` layers, post-LayerNorm and projection (-1: none).

    With ``train_layers=0`` the whole tower is frozen and only the adapter (and temperature) train.
    """
    if train_layers < 0:
        return
    vision = model.vision
    layers = vision.vision_model.encoder.layers
    if train_layers > len(layers):
        raise ValueError(f"train_vision_layers={train_layers}, but the vision tower has {len(layers)} layers")
    for p in vision.parameters():
        p.requires_grad_(False)
    if train_layers == 0:
        return
    trained = [*layers[len(layers) - train_layers :], vision.vision_model.post_layernorm, vision.visual_projection]
    for module in trained:
        for p in module.parameters():
            p.requires_grad_(True)


def build_text_cache(
    model: str,
    data: str,
    output: str | Path,
    image_root: str | None = None,
    pooling: str = "mean",
    bidirectional: bool = False,
    context_length: int | None = None,
    pool_prefix: bool = True,
    shard_size: int = 4096,
    batch_size: int = 32,
    device: str | None = None,
) -> Path:
    """Embed every caption of a data set with a frozen language model into a cache (``longclip llm-embed``).

    Under torchrun each rank embeds its own share of the shards; a rerun resumes (``longclip.data.text_cache``).
    The language model's name and settings are recorded, so ``--method llm2clip`` can attach it to the saved model.

    Args:
        model: Language model: ``minilm`` / ``smollm2`` (packaged), a ``.gguf`` file, a directory or a hub id.
        data: Pairs file (``.json`` / ``.csv`` / ``.tsv``) whose long and short captions are embedded.
        output: The cache folder.
        image_root: As ``longclip train --image-root`` (only for reading the data file).
        pooling, bidirectional, context_length, pool_prefix: As ``load_language_model``.
        shard_size: Captions per shard file.
        batch_size: Captions per forward pass.
        device: cpu or cuda (default: cuda when available).

    Returns:
        The path of the cache's ``index.json``.
    """
    from ...data import read_pairs
    from ...data.text_cache import unique_captions, write_text_cache
    from ...models.language import embed_captions, load_language_model
    from ..distributed import setup_distributed, teardown_distributed

    captions = unique_captions(read_pairs(data, image_root))
    if not captions:
        raise ValueError(f"{data} holds no captions to embed")
    context = setup_distributed(device)
    try:
        language, tokenizer = load_language_model(
            model, pooling=pooling, bidirectional=bidirectional, context_length=context_length,
            pool_prefix=pool_prefix,
        )  # fmt: skip
        language = language.to(context.device).eval()
        settings = {"model": str(Path(model).resolve()) if Path(model).exists() else model, "pooling": pooling,
                    "bidirectional": bidirectional, "context_length": tokenizer.context_length,
                    "pool_prefix": pool_prefix}  # fmt: skip
        return write_text_cache(
            captions, lambda texts: embed_captions(language, tokenizer, texts, batch_size), output,
            shard_size=shard_size, rank=context.rank, world_size=context.world_size, barrier=context.barrier,
            metadata=settings,
        )  # fmt: skip
    finally:
        teardown_distributed()
