"""What every image-text model in this package shares, whatever its text encoder.

A model family subclasses ``DualEncoder``: it provides ``encode_text`` (ids and attention mask; the pooling is its
own) and ``encode_image`` on ready tensors, a ``tokenizer`` (a ``longclip.text.TextTokenizer``), an
``image_transform``, its ``context_length`` (from its config), ``from_checkpoint`` and ``save_pretrained``. This
class turns them into the user-facing pieces: CLIP-style logits, and the batch helpers ``embed_texts`` /
``embed_images`` that take raw texts and images, batch them efficiently and return features in input order. They
talk to the tokenizer only through the protocol (its ``pad_id``, ``truncate``, ``chunk`` and ``pad``).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..batching import DEFAULT_TOKEN_BUDGET, plan_batches
from ..errors import CheckpointError
from ..images import ImageLoadError, ImageTransform
from ..precision import resolve_dtype  # noqa: F401  (re-exported: longclip.models.resolve_dtype)
from ..text import TextBatch, TextTokenizer

if TYPE_CHECKING:
    import os

    from ..checkpoints import Checkpoint

logger = logging.getLogger(__name__)

LongTextMode = Literal["truncate", "chunk", "error"]
DTypeName = Literal["auto", "float32", "float16", "bfloat16"]
_PROGRESS_MIN_BATCHES = 8  # below this a progress bar is noise


class DualEncoder(nn.Module):
    """Base class: an image encoder and a text encoder mapping into one embedding space.

    Attributes:
        family: The name this class is registered under (``longclip.models.register_family``).
        tokenizer: The family's tokenizer, with the model's context length.
        image_transform: Image preprocessing: image -> ``[3, H, W]`` tensor.
    """

    family: ClassVar[str] = ""
    tokenizer: TextTokenizer
    image_transform: ImageTransform

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, normalize: bool = False
    ) -> torch.Tensor:
        """Text features ``[N, embed_dim]`` of ids ``[N, L]`` padded with the tokenizer's ``pad_id``.

        Args:
            input_ids: Token ids.
            attention_mask: 1 on real tokens, 0 on padding; a family whose pooling can do without it (CLIP pools
                its end token) accepts None.
            normalize: L2-normalize the features.
        """
        raise NotImplementedError

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Image features ``[N, embed_dim]`` of preprocessed images ``[N, 3, H, W]``."""
        raise NotImplementedError

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> DualEncoder:
        """Build the model from a checkpoint's config and state dict (no file is opened, except side files such as
        the tokenizer's and preprocessor's in ``checkpoint.directory``)."""
        raise NotImplementedError

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write safetensors weights, ``config.json`` and tokenizer / preprocessor files that ``longclip.load``
        reads back."""
        raise NotImplementedError

    def towers(self) -> dict[str, list[nn.Module]]:
        """The modules of each tower, ``{"vision": [...], "text": [...]}`` (projections included), for freezing."""
        raise NotImplementedError

    def compile_towers(self, towers: Sequence[str] = ("vision",), **options: Any) -> DualEncoder:
        """Compile the modules of the named towers in place with ``torch.compile`` (``options`` are its own).

        The image tower sees one input shape (a fixed image size), so it compiles once; measured 1.27x faster image
        embedding on a 2-core CPU after a first call that compiles (``benchmarks/RESULTS.md``). Text batches vary in
        length (token-budget batching), so compiling the text tower recompiles per length unless
        ``dynamic=True``: it is left out by default. Weights and saving are unchanged.
        """
        available = self.towers()
        unknown = [name for name in towers if name not in available]
        if unknown:
            raise ValueError(f"unknown tower(s) {unknown}; this model has {sorted(available)}")
        for name in towers:
            for module in available[name]:
                module.compile(**options)
        return self

    @property
    def logit_scale(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def embed_dim(self) -> int:
        """Width of the shared embedding space."""
        raise NotImplementedError

    @property
    def context_length(self) -> int:
        """The most tokens a text may have (start and end tokens included), from the model's config."""
        raise NotImplementedError

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

    def forward(self, image: torch.Tensor, text: torch.Tensor | TextBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP's scaled cosine similarities, as OpenAI CLIP and Long-CLIP return them.

        Args:
            image: Preprocessed images ``[n_images, 3, H, W]``.
            text: Token ids ``[n_texts, L]`` (``longclip.tokenize``'s output) or a ``TextBatch`` (what a family
                that pools over the attention mask needs).

        Returns:
            ``(logits_per_image [n_images, n_texts], logits_per_text [n_texts, n_images])``.
        """
        image_features = self.encode_image(image, normalize=True)
        if isinstance(text, TextBatch):
            text_features = self.encode_text(text.input_ids, text.attention_mask, normalize=True)
        else:
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
        token_budget: int | None = DEFAULT_TOKEN_BUDGET,
    ) -> torch.Tensor:
        """Embed texts of any length, returning ``[len(texts), dim]`` float32 features in input order.

        Texts are sorted by token count and batched with their neighbours (``longclip.batching.plan_batches``), so
        short texts are never padded to the long ones (the result equals embedding each text alone).

        Args:
            texts: The texts.
            batch_size: At most this many texts per forward pass.
            normalize: L2-normalize the features.
            long_texts: What to do with a text longer than the context: ``"truncate"`` cuts it with the
                tokenizer's ``truncate`` (CLIP's keeps the end token last, as Long-CLIP does); ``"chunk"`` splits it
                with the tokenizer's ``chunk`` into consecutive pieces that fit, embeds each, and returns the
                renormalized mean of the L2-normalized piece embeddings (so it needs ``normalize=True``);
                ``"error"`` raises ``ValueError`` naming the text.
            progress: Show a progress bar; by default only for inputs of many batches.
            token_budget: At most this many padded tokens per forward pass (bounds memory; None: only
                ``batch_size`` bounds a batch).
        """
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a list of texts; wrap a single text in a list")
        if long_texts not in ("truncate", "chunk", "error"):
            raise ValueError(f"long_texts must be 'truncate', 'chunk' or 'error', got {long_texts!r}")
        if long_texts == "chunk" and not normalize:
            raise ValueError("long_texts='chunk' averages normalized piece embeddings; it needs normalize=True")
        texts = list(texts)
        pieces, owners = self._split_texts(texts, long_texts)
        features = self.embed_tokens(
            pieces, batch_size=batch_size, normalize=normalize, progress=progress, token_budget=token_budget
        )
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
        token_budget: int | None = DEFAULT_TOKEN_BUDGET,
    ) -> torch.Tensor:
        """Embed already tokenized texts (lists of ids, special tokens included, each fitting the context).

        Lists are grouped by length (``longclip.batching.plan_batches``: neighbours in length order, at most
        ``batch_size`` lists and ``token_budget`` padded tokens per batch, cut where padding plus per-batch overhead
        is least), each batch only as wide as its longest list (padded by the tokenizer, with its attention mask).
        Returns ``[len(token_ids), dim]`` float32 features in input order.
        """
        limit = self.context_length
        for i, ids in enumerate(token_ids):
            if len(ids) > limit:
                raise ValueError(f"token list {i} has {len(ids)} ids, more than the context length {limit}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        plan = plan_batches([len(ids) for ids in token_ids], batch_size, token_budget)
        features = torch.empty(len(token_ids), self.embed_dim)
        for batch in self._progress(plan, progress, "texts"):
            text = self.tokenizer.pad([token_ids[i] for i in batch]).to(self.device)
            features[batch] = self.encode_text(text.input_ids, text.attention_mask, normalize=normalize).float().cpu()
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
                pieces.append(self.tokenizer.truncate(ids, limit))
                owners.append(i)
            else:
                chunks = self.tokenizer.chunk(texts[i], limit)
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
        return self._progress([items[i : i + batch_size] for i in range(0, len(items), batch_size)], progress, unit)

    @staticmethod
    def _progress(batches: list[list[int]], progress: bool | None, unit: str) -> Iterator[list[int]]:
        """Yield the batches, with a progress bar counting items when there are many batches (or when asked)."""
        show = len(batches) >= _PROGRESS_MIN_BATCHES if progress is None else progress
        with tqdm(total=sum(len(b) for b in batches), unit=unit, disable=not show) as bar:
            for batch in batches:
                yield batch
                bar.update(len(batch))


def check_state_dict(
    expected: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor], where: object
) -> None:
    """Compare a state dict with a module's (``expected``, e.g. built on the meta device) by names and shapes.

    Raises:
        CheckpointError: Tensors are missing, left over or shaped differently; the message names them.
    """
    problems = []
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:8])}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:8])}")
    for name in sorted(set(expected) & set(state_dict)):
        want, got = tuple(expected[name].shape), tuple(state_dict[name].shape)
        if want != got:
            problems.append(f"tensor {name} has shape {got}, expected {want}")
    if problems:
        raise CheckpointError(f"{where} does not hold the weights its config describes ({'; '.join(problems[:8])})")


@contextlib.contextmanager
def quiet_transformers_progress() -> Iterator[None]:
    """Silence transformers' progress bars ("Loading weights", "Writing model shards") for one load or save.

    transformers 5 draws them through ``transformers.utils.logging.tqdm`` on every ``from_pretrained`` /
    ``save_pretrained``, also in the middle of training and evaluation output. The switch is global, so the
    previous state (transformers' and huggingface_hub's, which ``enable_progress_bar`` also flips) is restored.
    """
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
    from transformers.utils import logging as hf_logging

    if not hf_logging.is_progress_bar_enabled():
        yield
        return
    hub_was_disabled = are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()
        if hub_was_disabled:
            disable_progress_bars()
