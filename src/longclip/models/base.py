"""What every image-text model in this package shares, whatever its text encoder.

A subclass provides ``encode_text`` / ``encode_image`` on ready tensors, a ``tokenizer`` and an
``image_transform``; this class turns them into the user-facing pieces: CLIP-style logits, and the batch helpers
``embed_texts`` / ``embed_images`` that take raw texts and images, batch them efficiently and return features in
input order.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..images import ImageLoadError, ImageTransform
from ..tokenizer import LongCLIPTokenizer, pad_token_ids

logger = logging.getLogger(__name__)

LongTextMode = Literal["truncate", "chunk", "error"]
_PROGRESS_MIN_BATCHES = 8  # below this a progress bar is noise


class DualEncoder(nn.Module):
    """Base class: an image encoder and a text encoder mapping into one embedding space."""

    tokenizer: LongCLIPTokenizer
    image_transform: ImageTransform

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        raise NotImplementedError

    @property
    def logit_scale(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def embed_dim(self) -> int:
        """Width of the shared embedding space."""
        raise NotImplementedError

    @property
    def context_length(self) -> int:
        return self.tokenizer.context_length

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def preprocess(self) -> ImageTransform:
        """The image preprocessing callable: image -> ``[3, H, W]`` tensor (the second value ``load`` returns)."""
        return self.image_transform

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP's scaled cosine similarities, as OpenAI CLIP and Long-CLIP return them.

        Returns:
            ``(logits_per_image [n_images, n_texts], logits_per_text [n_texts, n_images])``.
        """
        image_features = self.encode_image(image, normalize=True)
        text_features = self.encode_text(text, normalize=True)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.T
        return logits_per_image, logits_per_image.T

    @torch.no_grad()
    def embed_texts(
        self,
        texts: Sequence[str],
        batch_size: int = 64,
        normalize: bool = True,
        long_texts: LongTextMode = "truncate",
        progress: bool | None = None,
    ) -> torch.Tensor:
        """Embed texts of any length, returning ``[len(texts), dim]`` float32 features in input order.

        Texts are sorted by token count and batched with their neighbours, so short texts are never padded to the
        longest one in the input (the result equals embedding each text alone).

        Args:
            texts: The texts.
            batch_size: Texts per forward pass.
            normalize: L2-normalize the features.
            long_texts: What to do with a text longer than the context: ``"truncate"`` cuts it (end token kept
                last, as Long-CLIP does); ``"chunk"`` splits it into consecutive pieces that fit, embeds each, and
                returns the renormalized mean of the L2-normalized piece embeddings (so it needs ``normalize=True``);
                ``"error"`` raises ``ValueError`` naming the text.
            progress: Show a progress bar; by default only for inputs of many batches.
        """
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a list of texts; wrap a single text in a list")
        if long_texts not in ("truncate", "chunk", "error"):
            raise ValueError(f"long_texts must be 'truncate', 'chunk' or 'error', got {long_texts!r}")
        if long_texts == "chunk" and not normalize:
            raise ValueError("long_texts='chunk' averages normalized piece embeddings; it needs normalize=True")
        texts = list(texts)
        pieces, owners = self._split_texts(texts, long_texts)
        features = self.embed_tokens(pieces, batch_size=batch_size, normalize=normalize, progress=progress)
        if long_texts == "chunk":
            summed = torch.zeros(len(texts), features.shape[1])
            summed.index_add_(0, torch.tensor(owners, dtype=torch.long), features)
            counts = torch.bincount(torch.tensor(owners, dtype=torch.long), minlength=len(texts))
            features = F.normalize(summed / counts[:, None], dim=-1)
        return features

    @torch.no_grad()
    def embed_tokens(
        self,
        token_ids: Sequence[Sequence[int]],
        batch_size: int = 64,
        normalize: bool = True,
        progress: bool | None = None,
    ) -> torch.Tensor:
        """Embed already tokenized texts (lists of ids, start and end tokens included, each fitting the context).

        Lists are sorted by length and batched with their neighbours, each batch only as wide as its longest list,
        so no text is computed with more padding than its batch needs. Returns ``[len(token_ids), dim]`` float32
        features in input order.
        """
        order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]), reverse=True)
        features = torch.empty(len(token_ids), self.embed_dim)
        for batch in self._batches(order, batch_size, progress, "texts"):
            tokens = pad_token_ids([token_ids[i] for i in batch], max(len(token_ids[i]) for i in batch))
            features[batch] = self.encode_text(tokens.to(self.device), normalize=normalize).float().cpu()
        return features

    def _split_texts(self, texts: list[str], long_texts: LongTextMode) -> tuple[list[list[int]], list[int]]:
        """Token id lists to embed and, for each, the index of the text it belongs to."""
        limit = self.context_length
        pieces, owners = [], []
        for i, ids in enumerate(self.tokenizer.encode(texts)):
            if len(ids) <= limit:
                pieces.append(ids)
                owners.append(i)
            elif long_texts == "error":
                raise ValueError(f"text {i} has {len(ids)} tokens, more than the context length {limit}")
            elif long_texts == "truncate":
                pieces.append([*ids[: limit - 1], ids[-1]])
                owners.append(i)
            else:
                chunks = self.tokenizer.chunk(texts[i])
                pieces.extend(chunks)
                owners.extend([i] * len(chunks))
        return pieces, owners

    @torch.no_grad()
    def embed_images(
        self,
        images: Sequence,
        batch_size: int = 32,
        normalize: bool = True,
        skip_errors: bool = False,
        progress: bool | None = None,
    ) -> torch.Tensor:
        """Embed images (paths, bytes, PIL images or arrays), returning ``[len(images), dim]`` float32 features.

        Args:
            images: The images, in any form ``longclip.images.open_image`` accepts, or ``[3, H, W]`` tensors that
                ``preprocess`` already made.
            batch_size: Images per forward pass.
            normalize: L2-normalize the features.
            skip_errors: On an unreadable image, log a warning naming it and fill its row with NaN instead of
                raising, so one bad file does not lose the rest of the work.
            progress: Show a progress bar; by default only for inputs of many batches.
        """
        images = list(images)
        features = torch.full((len(images), self.embed_dim), math.nan)
        failed: list[int] = []
        for batch in self._batches(list(range(len(images))), batch_size, progress, "images"):
            pixels, kept = [], []
            for i in batch:
                try:
                    image = images[i]
                    pixels.append(image if isinstance(image, torch.Tensor) else self.image_transform(image))
                    kept.append(i)
                except (ImageLoadError, FileNotFoundError) as e:
                    if not skip_errors:
                        raise
                    logger.warning("skipping image %d: %s", i, e)
                    failed.append(i)
            if pixels:
                pixels = torch.stack(pixels).to(self.device)
                features[kept] = self.encode_image(pixels, normalize=normalize).float().cpu()
        if images and len(failed) == len(images):
            raise ImageLoadError(str(images[failed[0]]), f"none of the {len(images)} images could be loaded")
        return features

    def _batches(self, items: list[int], batch_size: int, progress: bool | None, unit: str) -> Iterator[list[int]]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
        show = len(batches) >= _PROGRESS_MIN_BATCHES if progress is None else progress
        with tqdm(total=len(items), unit=unit, disable=not show) as bar:
            for batch in batches:
                yield batch
                bar.update(len(batch))
