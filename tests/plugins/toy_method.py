"""A toy method added from outside the package, through its public extension points only (issue: "the seams hold").

- A model family: ``HashedWords``, a bag-of-words text encoder (words hashed into buckets, mean-pooled over the
  attention mask, its own tokenizer with pad id != 0 and no end token) beside a linear image tower on 8x8 pixels.
  Registered with ``longclip.models.register_family``; saves safetensors + config.json, loads with ``longclip.load``.
- A training task: ``toy-distill`` distils the student's text features into a frozen teacher's (any model
  ``longclip.load`` reads, given by ``--teacher``): loss ``1 - cos(student, teacher)``, plus CLIP's loss so the image
  tower trains too. Registered with ``longclip.train.register_task``.

Importing this module registers both; ``tests/plugins/run_longclip.py`` imports it and runs the ``longclip`` CLI, so
``torchrun`` can train the toy under DDP exactly as it trains a built-in method.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import longclip
from longclip.images import ImageTransform
from longclip.models import DualEncoder, register_family
from longclip.text import TextBatch
from longclip.train import LossOutput, Task, register_task
from longclip.train.distributed import gather_with_grad
from longclip.train.losses import contrastive_loss


class HashedWordTokenizer:
    """Lower-cased whitespace words hashed into ``buckets`` ids (1..buckets); 0 starts a text; pad is buckets + 1."""

    def __init__(self, buckets: int, context_length: int):
        self.buckets = buckets
        self.pad_id = buckets + 1
        self.context_length = context_length

    def encode(self, texts: str | Sequence[str]) -> list[list[int]]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return [[0, *(1 + zlib.crc32(w.encode()) % self.buckets for w in t.lower().split())] for t in texts]

    def truncate(self, ids: Sequence[int], length: int) -> list[int]:
        return list(ids[:length])

    def chunk(self, text: str, length: int | None = None) -> list[list[int]]:
        step = (length or self.context_length) - 1
        body = self.encode(text)[0][1:]
        return [[0, *body[i : i + step]] for i in range(0, len(body), step)] or [[0]]

    def pad(self, ids: Sequence[Sequence[int]], length: int | None = None, truncate: bool = False) -> TextBatch:
        rows = [self.truncate(r, self.context_length) if truncate else list(r) for r in ids]
        width = length or max((len(r) for r in rows), default=0)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            if len(row) > width:
                raise ValueError(f"text {i} has {len(row)} tokens, more than {width}")
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return TextBatch(input_ids, mask)

    def batch(self, texts: str | Sequence[str], truncate: bool = False) -> TextBatch:
        return self.pad(self.encode(texts), truncate=truncate)

    def save_pretrained(self, directory) -> None:
        pass  # everything it needs is in config.json


class HashedWords(DualEncoder):
    family = "toy-hashed-words"

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        dim = config["embed_dim"]
        self.tokenizer = HashedWordTokenizer(config["buckets"], config["context_length"])
        self.words = nn.Embedding(config["buckets"] + 2, dim)
        self.image = nn.Linear(3 * 8 * 8, dim)
        self.scale = nn.Parameter(torch.tensor(2.0))
        self.image_transform = ImageTransform.for_size(8)

    @property
    def context_length(self) -> int:
        return self.config["context_length"]

    @property
    def embed_dim(self) -> int:
        return self.config["embed_dim"]

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.scale

    def towers(self) -> dict[str, list[nn.Module]]:
        return {"vision": [self.image], "text": [self.words]}

    def encode_text(self, input_ids, attention_mask=None, normalize=False):
        if attention_mask is None:
            attention_mask = (input_ids != self.tokenizer.pad_id).long()
        mask = attention_mask.to(self.device, self.dtype)[..., None]
        features = (self.words(input_ids.to(self.device)) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_image(self, pixels, normalize=False):
        features = self.image(pixels.to(self.device, self.dtype).flatten(1))
        return F.normalize(features, dim=-1) if normalize else features

    @classmethod
    def from_checkpoint(cls, checkpoint) -> HashedWords:
        model = cls(checkpoint.config)
        model.load_state_dict(checkpoint.state_dict)
        return model

    def save_pretrained(self, directory) -> None:
        os.makedirs(directory, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, f"{directory}/model.safetensors")
        with open(f"{directory}/config.json", "w") as f:
            json.dump({**self.config, "model_type": self.family}, f)


@dataclass
class ToyDistillOptions:
    teacher: str = field(default="", metadata={"help": "the frozen teacher (anything longclip.load reads)"})
    distill_weight: float = field(default=1.0, metadata={"help": "weight of 1 - cos(student, teacher)"})

    def __post_init__(self) -> None:
        if not self.teacher:
            raise ValueError("toy-distill needs --teacher")


class ToyDistillTask(Task):
    name = "toy-distill"
    options_class = ToyDistillOptions
    defaults = {"lr": 0.05, "warmup_steps": 1, "weight_decay": 0.0}

    def __init__(self, model, options=None, context=None):
        super().__init__(model, options, context)
        teacher, _ = longclip.load(self.options.teacher, dtype="float32")
        self.teacher = teacher.requires_grad_(False).eval()
        self.distilled = 0

    def collate(self, items):
        good = [item for item in items if item is not None]
        text = self.model.tokenizer.batch([item["caption"] for item in good], truncate=True)
        teacher_text = self.teacher.tokenizer.batch([item["caption"] for item in good], truncate=True)
        return {
            "pixels": torch.stack([item["pixels"] for item in good]),
            "ids": text.input_ids,
            "mask": text.attention_mask,
            "teacher_ids": teacher_text.input_ids,
            "teacher_mask": teacher_text.attention_mask,
            "indices": torch.tensor([item["index"] for item in good], dtype=torch.long),
            "num_bad": len(items) - len(good),
        }

    def forward(self, batch) -> LossOutput:
        student = self.model.encode_text(batch["ids"], batch["mask"], normalize=True)
        with torch.no_grad():
            target = self.teacher.encode_text(batch["teacher_ids"], batch["teacher_mask"], normalize=True)
        image = self.model.encode_image(batch["pixels"], normalize=True)
        distill = (1 - (student * target).sum(-1)).mean()
        gather = lambda t: gather_with_grad(t, self.context)  # noqa: E731
        clip = contrastive_loss(gather(image), gather(student), self.model.logit_scale.exp())
        self.distilled += len(batch["indices"])
        loss = self.options.distill_weight * distill + clip
        return LossOutput(loss, {"loss_distill": float(distill.detach()), "loss_clip": float(clip.detach())})

    def counters(self) -> dict[str, float]:
        return {"distilled_texts": self.distilled}

    def load_counters(self, counters) -> None:
        self.distilled = int(counters.get("distilled_texts", 0))


register_family(HashedWords.family, HashedWords, (HashedWords.family,))
register_task(ToyDistillTask)
