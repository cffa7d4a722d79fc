"""LLM2CLIP's optional first stage: masked next-token prediction on captions (``--method llm2clip-mntp``).

LLM2Vec (BehnamGhader et al., 2024) turns a decoder into a text encoder in steps: switch its causal mask off, then
teach it to use the now visible later tokens with masked next-token prediction (MNTP), then contrastive tuning.
LLM2CLIP runs MNTP on captions before its caption-contrastive stage (``--method llm2clip-text``). Here:

* the decoder runs with bidirectional attention (``longclip.models.language.set_bidirectional``);
* a share of each caption's tokens (``--mask-probability``, 0.2 as LLM2Vec's Llama settings) is chosen; the first
  token (nothing precedes it), special tokens (begin-of-text...) and padding never are. A chosen token becomes the
  mask token (the tokenizer's own, else ``--mask-token``, LLM2Vec's ``_`` for Llama) 80% of the time, a random token
  10% and stays 10% (BERT's rule, which LLM2Vec's Llama settings keep); ``--full-masking`` always masks;
* the token at position ``i`` is predicted from the output at position ``i - 1`` through the model's own language
  modelling head, as the causal model was pretrained to predict it: cross-entropy over the chosen tokens. The head
  runs on those positions only (for Llama-, Mistral- or Qwen-like models the same logits as the full forward pass;
  models that post-process their logits, such as Gemma 2's soft-capping, are not handled);
* only LoRA adapters train (r 16, alpha 32, dropout 0.05 on the attention and MLP projections, as ``llm2clip-text``);
* the long and the short caption of each image are both training texts (``--text``).

The result, ``OUTPUT/language_model/``, is a transformers directory of the decoder with its head (LoRA merged, or
beside the base weights with ``--no-merge``) that ``--method llm2clip-text --model`` and ``longclip llm-embed`` read.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import LossOutput
from .base import Task
from .llm2clip_text import LanguageOnlyModel, lora_targets, save_lora_model

logger = logging.getLogger(__name__)

IGNORE = -100  # label of positions that predict nothing (PyTorch's ignore_index)
TEXTS = ("both", "long", "short")


@dataclass
class LLM2CLIPMNTPOptions:
    """Settings of masked next-token prediction."""

    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    mask_probability: float = field(
        default=0.2, metadata={"help": "share of caption tokens to predict (LLM2Vec: 0.2 for Llama-like models)"}
    )
    mask_token: str = field(
        default="_", metadata={"help": "token put in place of masked ones when the tokenizer has no mask token"}
    )
    full_masking: bool = field(
        default=False,
        metadata={"help": "always put the mask token in (else 80%% mask token, 10%% random token, 10%% unchanged)"},
    )
    text: str = field(default="both", metadata={"help": "captions to train on", "choices": list(TEXTS)})
    context_length: int = field(default=512, metadata={"help": "most tokens per caption"})
    merge: bool = field(default=True, metadata={"help": "merge LoRA into the saved weights (else save it apart)"})

    def __post_init__(self) -> None:
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be at least 1, got {self.lora_r}")
        if not 0.0 < self.mask_probability < 1.0:
            raise ValueError(f"mask_probability must be between 0 and 1 (exclusive), got {self.mask_probability}")
        if not self.mask_token:
            raise ValueError("mask_token must not be empty")
        if self.text not in TEXTS:
            raise ValueError(f"text must be one of {TEXTS}, got {self.text!r}")


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    special_ids: list[int],
    probability: float,
    mask_id: int,
    vocab_size: int,
    full_masking: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose tokens to predict and hide them; labels placed where the prediction is read (one position earlier).

    Each real token is chosen with ``probability``, except the first of each row (no position precedes it), the
    ``special_ids`` (begin-of-text, ...) and padding (``attention_mask`` 0). If nothing is chosen in the whole
    batch, one choosable token is, so that every step has a loss. A chosen token is replaced by ``mask_id`` (always
    with ``full_masking``; else 80% of the time, a random id below ``vocab_size`` 10%, itself 10%).

    Args:
        input_ids: ``[N, L]`` ids, padded on the right.
        attention_mask: ``[N, L]``, 1 on real tokens.

    Returns:
        ``(masked_ids, labels)``: the ids with the chosen tokens hidden, and ``labels [N, L]`` where
        ``labels[n, j]`` is the original id at ``j + 1`` if that token was chosen, else ``IGNORE`` (so the last
        column is always ``IGNORE``).
    """
    choosable = attention_mask.bool() & ~torch.isin(input_ids, torch.tensor(special_ids, dtype=input_ids.dtype))
    choosable[:, 0] = False
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & choosable
    if not chosen.any() and choosable.any():
        candidates = choosable.flatten().nonzero().squeeze(1)
        pick = candidates[torch.randint(len(candidates), (1,), generator=generator)]
        chosen.view(-1)[pick] = True
    labels = torch.full_like(input_ids, IGNORE)
    labels[:, :-1] = torch.where(chosen[:, 1:], input_ids[:, 1:], IGNORE)
    masked = input_ids.clone()
    if full_masking:
        masked[chosen] = mask_id
    else:
        draw = torch.rand(input_ids.shape, generator=generator)
        masked[chosen & (draw < 0.8)] = mask_id
        random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
        swap = chosen & (draw >= 0.8) & (draw < 0.9)
        masked[swap] = random_ids[swap]
    return masked, labels


def mntp_loss(
    causal_lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of the head's prediction at each labelled position (see ``mask_tokens``' labels).

    The decoder runs once; its head only on the labelled positions (``[M, vocab]`` logits rather than
    ``[N, L, vocab]``). A batch without labels gives a zero that still depends on the weights.
    """
    hidden = causal_lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    where = labels != IGNORE
    if not where.any():
        return hidden.sum() * 0.0
    logits = causal_lm.get_output_embeddings()(hidden[where])
    return F.cross_entropy(logits.float(), labels[where])


def mask_token_id(tokenizer, replacement: str) -> tuple[int, str]:
    """The tokenizer's mask token, else ``replacement`` (which must be one token of its vocabulary): id and text.

    Raises:
        ValueError: The tokenizer has no mask token and ``replacement`` is not in its vocabulary.
    """
    if tokenizer.mask_token_id is not None:
        return int(tokenizer.mask_token_id), str(tokenizer.mask_token)
    token_id = tokenizer.convert_tokens_to_ids(replacement)
    if token_id is None or (token_id == tokenizer.unk_token_id and replacement != tokenizer.unk_token):
        raise ValueError(
            f"the tokenizer has no mask token and {replacement!r} is not a token of its vocabulary; "
            "name one that is with --mask-token"
        )
    return int(token_id), replacement


class MaskedTokenModel(LanguageOnlyModel):
    """What MNTP trains: a decoder with its head (LoRA-wrapped) and its tokenizer; ``logit_scale`` is a constant 1."""

    def __init__(self, language, tokenizer, mask_id: int, mask_text: str):
        super().__init__(language, tokenizer)
        self.mask_id, self.mask_text = mask_id, mask_text
        # A head tied to the input embeddings (SmolLM2's) is one tensor under two names, and training checkpoints
        # are safetensors files, which refuse shared tensors: the state dict keeps the first name only, and loading
        # fills the other in again.
        first: dict[int, str] = {}
        self.tied_names: dict[str, str] = {}
        for name, parameter in self.named_parameters(remove_duplicate=False):
            if id(parameter) in first:
                self.tied_names[name] = first[id(parameter)]
            first.setdefault(id(parameter), name)
        self.register_state_dict_post_hook(_drop_tied)
        self.register_load_state_dict_pre_hook(_restore_tied)

    @property
    def causal_lm(self) -> nn.Module:
        """The decoder with its head (LoRA layers inside), without peft's wrapper."""
        model = self.language_model
        return model.get_base_model() if hasattr(model, "get_base_model") else model


def _drop_tied(module: MaskedTokenModel, state_dict: dict, prefix: str, local_metadata) -> None:
    for alias in module.tied_names:
        state_dict.pop(prefix + alias, None)


def _restore_tied(module: MaskedTokenModel, state_dict: dict, prefix: str, *args) -> None:
    for alias, name in module.tied_names.items():
        if prefix + alias not in state_dict and prefix + name in state_dict:
            state_dict[prefix + alias] = state_dict[prefix + name]


class LLM2CLIPMNTPTask(Task):
    """Masked next-token prediction on the captions with a bidirectional decoder."""

    name = "llm2clip-mntp"
    options_class = LLM2CLIPMNTPOptions
    defaults = {"lr": 5e-5, "warmup_steps": 0}  # LLM2Vec's MNTP runs use the transformers Trainer's 5e-5

    def __init__(self, model: MaskedTokenModel, options: LLM2CLIPMNTPOptions | None = None, context=None):
        super().__init__(model, options, context)
        hf = model.tokenizer.hf
        self.special_ids = sorted(set(hf.all_special_ids))
        self.vocab_size = min(len(hf), int(model.causal_lm.get_input_embeddings().weight.shape[0]))

    @classmethod
    def prepare_model(cls, config, options: LLM2CLIPMNTPOptions) -> MaskedTokenModel:
        from peft import LoraConfig, get_peft_model

        from ...models.language import load_causal_language_model, set_bidirectional

        causal_lm, tokenizer = load_causal_language_model(config.model, context_length=options.context_length)
        mask_id, mask_text = mask_token_id(tokenizer.hf, options.mask_token)
        set_bidirectional(causal_lm, True)
        lora = LoraConfig(
            r=options.lora_r, lora_alpha=options.lora_alpha, lora_dropout=options.lora_dropout,
            target_modules=lora_targets(causal_lm),
        )  # fmt: skip
        return MaskedTokenModel(get_peft_model(causal_lm, lora).train(), tokenizer, mask_id, mask_text)

    def texts(self, item: dict) -> list[str]:
        """The training texts of one item: its long and/or short caption (once if they are the same)."""
        long, short = item["caption"], item["short_caption"]
        if self.options.text == "long":
            return [long]
        if self.options.text == "short":
            return [short]
        return [long] if short == long else [long, short]

    def collate(self, items: list[dict | None]) -> dict[str, Any]:
        good = [item for item in items if item is not None]
        texts = [text for item in good for text in self.texts(item)]
        if texts:
            text = self.model.tokenizer.batch(texts, truncate=True)
            ids, labels = mask_tokens(
                text.input_ids, text.attention_mask, self.special_ids, self.options.mask_probability,
                self.model.mask_id, self.vocab_size, self.options.full_masking,
            )  # fmt: skip
            mask = text.attention_mask
        else:
            ids = mask = labels = torch.empty((0, 0), dtype=torch.long)
        return {
            "input_ids": ids, "attention_mask": mask, "labels": labels,
            "indices": torch.tensor([item["index"] for item in good], dtype=torch.long),
            "num_bad": len(items) - len(good),
        }  # fmt: skip

    def forward(self, batch: dict[str, Any]) -> LossOutput:
        loss = mntp_loss(self.model.causal_lm, batch["input_ids"], batch["attention_mask"], batch["labels"])
        masked = float((batch["labels"] != IGNORE).sum())
        return LossOutput(loss, {"loss_mntp": float(loss.detach()), "masked_tokens": masked})

    def validator(self, pairs: list):
        """None: the held-out rows (ShareGPT4V-1k by default) only stay out of training; no image side to measure."""
        return None

    def after_step(self) -> None:
        """Nothing to clamp: there is no temperature."""

    def save_final(self, directory: Path, config) -> Path:
        """Write the tuned decoder with its head (LoRA merged, or the adapter beside the base) and its tokenizer."""
        final = directory / "language_model"
        save_lora_model(self.model.language_model, self.model.tokenizer, final, self.options.merge)
        settings = {"mask_probability": self.options.mask_probability, "mask_token": self.model.mask_text,
                    "full_masking": self.options.full_masking, "text": self.options.text,
                    "context_length": self.model.tokenizer.context_length, "merged": self.options.merge}  # fmt: skip
        (final / "llm2clip_mntp.json").write_text(json.dumps(settings, indent=2) + "\n")
        return final
