"""LLM2CLIP stage 1: caption-contrastive tuning of a language model with LoRA (``--method llm2clip-text``).

LLM2CLIP (Huang et al., 2024, Sec. 3) tunes the language model so that its mean-pooled embeddings tell captions of
different images apart: supervised SimCSE (Gao et al., 2021) over two captions of the same image, with in-batch
negatives and the data's hard negatives (a ``hard_negative`` column, a ``neg.txt`` in webdataset shards), as
llm2vec's ``HardNegativeNLLLoss``: cosine similarities of each query to every document and every hard negative of the
global batch times a scale of 50, cross-entropy towards its own document. The query side carries an instruction that
is read but not pooled. Only LoRA adapters train (``peft``; r 16, alpha 32, dropout 0.05 on the attention and MLP
projections; lr 2e-4). The optional masked-next-token stage that may come before it is ``--method llm2clip-mntp``
(``llm2clip_mntp.py``).

The trained language model is saved as a transformers directory (LoRA merged, or the adapter beside the base
weights with ``--no-merge``) that ``longclip llm-embed --model`` reads. Caption-to-caption retrieval accuracy on
held-out pairs (``--heldout``) is measured before and after and written to ``caption_retrieval.json``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..distributed import gather_with_grad
from ..losses import LossOutput
from .base import Task

logger = logging.getLogger(__name__)

DEFAULT_INSTRUCTION = "Given a caption, retrieve a caption that describes the same image: "
# Linear layers LoRA adapts: Llama-like names, then BERT-like ones ("dense" covers BERT's attention output and MLP).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "query", "key", "value",
                "dense")  # fmt: skip


def caption_contrastive_loss(
    queries: torch.Tensor, documents: torch.Tensor, negatives: torch.Tensor | None = None, scale: float = 50.0
) -> torch.Tensor:
    """llm2vec's hard-negative NLL loss: query ``i`` must pick document ``i`` among all documents and negatives.

    Args:
        queries: ``[N, D]`` query embeddings (any norm; cosine similarity is used).
        documents: ``[N, D]`` their positive documents; the other rows are in-batch negatives.
        negatives: ``[M, D]`` hard negatives, appended as further candidates for every query.
        scale: Multiplies the cosine similarities (llm2vec: 50, i.e. temperature 0.02).

    Returns:
        The mean cross-entropy (one direction, query -> document).
    """
    if queries.shape != documents.shape:
        raise ValueError(f"queries {tuple(queries.shape)} and documents {tuple(documents.shape)} must match")
    candidates = documents if negatives is None else torch.cat([documents, negatives])
    scores = F.normalize(queries, dim=-1) @ F.normalize(candidates, dim=-1).T * scale
    return F.cross_entropy(scores, torch.arange(queries.shape[0], device=queries.device))


@dataclass
class LLM2CLIPTextOptions:
    """Settings of caption-contrastive tuning."""

    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    scale: float = field(default=50.0, metadata={"help": "similarity scale of the contrastive loss (1/temperature)"})
    instruction: str = field(default=DEFAULT_INSTRUCTION, metadata={"help": "instruction read before each query"})
    query: str = field(default="long", metadata={"help": "which caption is the query", "choices": ["long", "short"]})
    pooling: str = field(default="mean", metadata={"help": "pooling of hidden states", "choices": ["mean", "last"]})
    bidirectional: bool = field(default=True, metadata={"help": "switch a decoder's causal mask off (LLM2Vec)"})
    context_length: int = field(default=512, metadata={"help": "most tokens per caption"})
    merge: bool = field(default=True, metadata={"help": "merge LoRA into the saved weights (else save it apart)"})
    heldout: str | None = field(
        default=None, metadata={"help": "pairs file (as --data) for caption-to-caption retrieval before/after"}
    )

    def __post_init__(self) -> None:
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be at least 1, got {self.lora_r}")
        if self.query not in ("long", "short"):
            raise ValueError(f"query must be 'long' or 'short', got {self.query!r}")
        if self.scale <= 0:
            raise ValueError(f"scale must be positive, got {self.scale}")


class LanguageOnlyModel(nn.Module):
    """What the language-model stages train: a language model and its tokenizer, no image tower.

    The training loop reads ``logit_scale`` (a fixed value here, logged only) and ``image_transform`` (images are
    decoded by the shared data path but unused; a 32-pixel transform keeps that cheap).
    """

    def __init__(self, language, tokenizer, log_scale: float = 0.0):
        super().__init__()
        from ...images import ImageTransform

        self.language_model = language
        self.tokenizer = tokenizer
        self.image_transform = ImageTransform.for_size(32)
        self.register_buffer("_log_scale", torch.tensor(float(log_scale)), persistent=False)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self._log_scale

    @property
    def device(self) -> torch.device:
        return self._log_scale.device


class CaptionEncoder(LanguageOnlyModel):
    """What caption-contrastive tuning trains: a pooled language model; ``logit_scale`` is the similarity scale."""

    def __init__(self, language, tokenizer, scale: float):
        super().__init__(language, tokenizer, math.log(scale))
        self.heldout: tuple[list[str], list[str]] | None = None
        self.retrieval_before: float | None = None

    def embed(self, texts: list[str], instruction: str = "") -> torch.Tensor:
        """Pooled embeddings of texts (with gradients), the instruction read but not pooled."""
        batch, pool = self.tokenizer.batch_with_instruction(texts, instruction)
        batch, pool = batch.to(self.device), pool.to(self.device)
        return self.language_model(batch.input_ids, batch.attention_mask, pool)

    @torch.no_grad()
    def caption_retrieval(self, queries: list[str], documents: list[str], instruction: str) -> float:
        """Share of queries whose most similar document (cosine) is their own."""
        was_training = self.training
        self.eval()
        q = torch.cat([self.embed(queries[i : i + 32], instruction) for i in range(0, len(queries), 32)])
        d = torch.cat([self.embed(documents[i : i + 32]) for i in range(0, len(documents), 32)])
        self.train(was_training)
        hits = (F.normalize(q, dim=-1) @ F.normalize(d, dim=-1).T).argmax(dim=1).cpu() == torch.arange(len(q))
        return float(hits.float().mean())


def lora_targets(model: nn.Module) -> list[str]:
    """The ``LORA_TARGETS`` names that are Linear layers of ``model``."""
    found = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    targets = [t for t in LORA_TARGETS if t in found]
    if not targets:
        raise ValueError(f"found none of the LoRA target layers {LORA_TARGETS} in {type(model).__name__}")
    return targets


def save_lora_model(peft_model, tokenizer, directory: Path, merge: bool) -> None:
    """Write a LoRA-tuned model as a plain transformers directory: merged, or the base with ``lora/`` beside it."""
    # Saved as the model it was (causal for a decoder); bidirectional attention is a choice made when loading.
    peft_model.config.__dict__.pop("is_causal", None)
    if merge:
        peft_model.merge_and_unload().save_pretrained(directory)
    else:
        peft_model.save_pretrained(directory / "lora")
        peft_model.unload().save_pretrained(directory)  # the base weights, LoRA layers taken out unmerged
    tokenizer.save_pretrained(directory)


class LLM2CLIPTextTask(Task):
    """Caption-contrastive tuning: long caption (behind the instruction) <-> short caption of the same image."""

    name = "llm2clip-text"
    options_class = LLM2CLIPTextOptions
    defaults = {"lr": 2e-4, "warmup_steps": 0}

    @classmethod
    def prepare_model(cls, config, options: LLM2CLIPTextOptions) -> CaptionEncoder:
        from peft import LoraConfig, get_peft_model

        from ...models.language import load_language_model

        language, tokenizer = load_language_model(
            config.model, pooling=options.pooling, bidirectional=options.bidirectional,
            context_length=options.context_length,
        )  # fmt: skip
        lora = LoraConfig(
            r=options.lora_r, lora_alpha=options.lora_alpha, lora_dropout=options.lora_dropout,
            target_modules=lora_targets(language.model),
        )  # fmt: skip
        language.model = get_peft_model(language.model, lora)
        model = CaptionEncoder(language, tokenizer, options.scale)
        if options.heldout:
            from ...data import read_pairs

            pairs = read_pairs(options.heldout)
            model.heldout = ([p.caption for p in pairs], [p.short_caption for p in pairs])
            if options.query == "short":
                model.heldout = model.heldout[::-1]
            model.retrieval_before = model.caption_retrieval(*model.heldout, options.instruction)
            logger.info("caption-to-caption retrieval on held-out pairs before tuning: %.4f", model.retrieval_before)
        return model

    def collate(self, items: list[dict | None]) -> dict[str, Any]:
        """Queries (behind the instruction) and documents; the items' hard negatives, if any, as a third text.

        Hard negatives are read as documents are (no instruction). An item without one adds none, so a batch may
        hold fewer negatives than rows (``negative_*`` keys are absent when it holds none).
        """
        good = [item for item in items if item is not None]
        long, short = [i["caption"] for i in good], [i["short_caption"] for i in good]
        queries, documents = (long, short) if self.options.query == "long" else (short, long)
        query, query_pool = self.model.tokenizer.batch_with_instruction(queries, self.options.instruction)
        document, document_pool = self.model.tokenizer.batch_with_instruction(documents, "")
        batch = {
            "query_ids": query.input_ids, "query_mask": query.attention_mask, "query_pool": query_pool,
            "document_ids": document.input_ids, "document_mask": document.attention_mask,
            "document_pool": document_pool,
            "indices": torch.tensor([item["index"] for item in good], dtype=torch.long),
            "num_bad": len(items) - len(good),
        }  # fmt: skip
        negatives = [item["hard_negative"] for item in good if item.get("hard_negative")]
        if negatives:
            negative, negative_pool = self.model.tokenizer.batch_with_instruction(negatives, "")
            batch.update(negative_ids=negative.input_ids, negative_mask=negative.attention_mask,
                         negative_pool=negative_pool)  # fmt: skip
        return batch

    def forward(self, batch: dict[str, Any]) -> LossOutput:
        language = self.model.language_model
        q = language(batch["query_ids"], batch["query_mask"], batch["query_pool"])
        d = language(batch["document_ids"], batch["document_mask"], batch["document_pool"])
        if "negative_ids" in batch:
            n = language(batch["negative_ids"], batch["negative_mask"], batch["negative_pool"])
        else:
            # No rows, but part of the graph: under DDP another rank may have hard negatives, and every rank must
            # then take part in the gather's backward all-reduce.
            n = d[:0]
        with self.full_precision():
            gather = lambda t: gather_with_grad(t.float(), self.context)  # noqa: E731
            q, d, n = gather(q), gather(d), gather(n)
            loss = caption_contrastive_loss(q, d, n if len(n) else None, scale=self.options.scale)
        return LossOutput(loss, {"loss_caption": float(loss.detach()), "hard_negatives": float(len(n))})

    def validator(self, pairs: list):
        """Caption-to-caption retrieval on the held-out pairs: each query caption must find its own document."""
        queries, documents = [p.caption for p in pairs], [p.short_caption for p in pairs]
        if self.options.query == "short":
            queries, documents = documents, queries

        def validate(model: CaptionEncoder) -> dict[str, float]:
            return {"caption_retrieval": model.caption_retrieval(queries, documents, self.options.instruction)}

        return validate

    def after_step(self) -> None:
        """Nothing to clamp: the similarity scale is fixed."""

    def save_final(self, directory: Path, config) -> Path:
        """Write the tuned language model (LoRA merged, or the adapter beside the base) and its tokenizer."""
        final = directory / "language_model"
        report = None
        if self.model.heldout is not None:
            after = self.model.caption_retrieval(*self.model.heldout, self.options.instruction)
            report = {"heldout_pairs": len(self.model.heldout[0]), "before": self.model.retrieval_before,
                      "after": after}  # fmt: skip
            (directory / "caption_retrieval.json").write_text(json.dumps(report, indent=2) + "\n")
            logger.info("caption-to-caption retrieval on held-out pairs: %.4f before, %.4f after", report["before"],
                        after)  # fmt: skip
        save_lora_model(self.model.language_model.model, self.model.tokenizer, final, self.options.merge)
        settings = {"pooling": self.options.pooling, "bidirectional": self.options.bidirectional,
                    "context_length": self.options.context_length, "merged": self.options.merge,
                    "caption_retrieval": report}  # fmt: skip
        (final / "llm2clip_text.json").write_text(json.dumps(settings, indent=2) + "\n")
        return final
