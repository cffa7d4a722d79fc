"""CLIP's byte-pair tokenizer at any context length.

Long-CLIP keeps CLIP's vocabulary and only raises the context from 77 to 248 tokens. The BPE merge list ships with
the package (``assets/bpe_simple_vocab_16e6.txt.gz``), so nothing is downloaded. The heavy lifting is done by
transformers' ``CLIPTokenizer`` (Rust ``tokenizers`` backend); in front of it we apply the text cleaning of OpenAI's
original tokenizer (ftfy, HTML unescaping twice, whitespace collapsing), without which texts such as ``"&amp;"``
would get other ids than the released models were trained with.

The Rust backend equals the original only on plain ASCII text: it NFC-normalises (the original does not, so an
entity such as ``"&eacute"`` followed by a combining accent changes), lowercases with Rust's rules (Python's
``str.lower()`` gives a final sigma ``ς`` and other case mappings of its own) and splits special-token literals
out before its pattern (the original matches ``"<|endoftext|>"`` only through its regex, after lowercasing). Any
text that is not ASCII after cleaning, or that holds ``"<|"``, therefore goes through a pure-Python port of the
original algorithm (:class:`_OriginalBPE`), which is exact and still quick thanks to its word cache.

Padding follows the original code: id 0 after the end-of-text token. The models never look at it, because the text
tower is causal and pools the end-of-text position. ``LongCLIPTokenizer`` implements ``longclip.text.TextTokenizer``
(``pad`` / ``batch`` return a ``TextBatch`` with its attention mask); ``tokenize`` and calling the tokenizer keep
returning the plain id tensor of the original API.
"""

from __future__ import annotations

import functools
import gzip
import html
import os
import re
from collections.abc import Sequence
from importlib import resources

import ftfy
import regex
import torch

from .text import TextBatch, pad_ids

DEFAULT_CONTEXT_LENGTH = 248  # Long-CLIP's context: 20 kept positions + 57 stretched four times
CLIP_CONTEXT_LENGTH = 77  # the context every OpenAI CLIP was trained with
SOT_TOKEN, EOT_TOKEN = "<|startoftext|>", "<|endoftext|>"
SOT_ID, EOT_ID, PAD_ID = 49406, 49407, 0
VOCAB_SIZE = 49408

_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
_NUM_MERGES = VOCAB_SIZE - 256 * 2 - 2  # 256 byte symbols, the same with the end-of-word mark, SOT and EOT


def _byte_symbols() -> list[str]:
    """One printable unicode character per byte value, in CLIP's vocabulary order.

    Printable bytes stand for themselves and come first; whitespace and control bytes get characters from 256 up, so
    BPE never sees them raw. The order matters: it fixes the ids of the first 512 vocabulary entries.
    """
    printable = _printable_bytes()
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]


def _printable_bytes() -> list[int]:
    return [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]


def _byte_order() -> list[int]:
    """The byte values in the order of :func:`_byte_symbols`: printable bytes first, then the others."""
    printable = _printable_bytes()
    return printable + [b for b in range(256) if b not in printable]


@functools.lru_cache(maxsize=1)
def vocabulary_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's 49,408-entry vocabulary and its BPE merges, built from the shipped merge list."""
    with resources.files("longclip.assets").joinpath(_BPE_FILE).open("rb") as raw:
        lines = gzip.decompress(raw.read()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]  # line 0 is a version header
    bytes_ = _byte_symbols()
    tokens = bytes_ + [b + "</w>" for b in bytes_] + ["".join(m) for m in merges] + [SOT_TOKEN, EOT_TOKEN]
    if len(tokens) != VOCAB_SIZE:
        raise RuntimeError(f"the shipped BPE file gives {len(tokens)} tokens, expected {VOCAB_SIZE}: is it damaged?")
    return {token: i for i, token in enumerate(tokens)}, merges


def clean_text(text: str) -> str:
    """OpenAI CLIP's text cleaning: repair mojibake, unescape HTML (twice, as the original does), collapse spaces."""
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return re.sub(r"\s+", " ", text).strip()


# OpenAI CLIP's pre-tokenizer pattern, applied (with IGNORECASE) to lowercased text by the original tokenizer.
_SPLIT_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


class _OriginalBPE:
    """OpenAI CLIP's tokenization of cleaned text in Python: lowercase, split, byte symbols, lowest-rank merges."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
        self.vocab = vocab
        self.ranks = {merge: i for i, merge in enumerate(merges)}
        self.byte_symbol = dict(zip(_byte_order(), _byte_symbols(), strict=True))
        self.cache: dict[str, list[int]] = {SOT_TOKEN: [SOT_ID], EOT_TOKEN: [EOT_ID]}

    def encode(self, cleaned: str) -> list[int]:
        """Ids of a text already passed through :func:`clean_text`, start and end tokens included."""
        ids = [SOT_ID]
        for word in _SPLIT_PATTERN.findall(cleaned.lower()):
            ids.extend(self._word_ids(word))
        ids.append(EOT_ID)
        return ids

    def _word_ids(self, word: str) -> list[int]:
        cached = self.cache.get(word)
        if cached is not None:
            return cached
        symbols = [self.byte_symbol[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        while len(symbols) > 1:
            pairs = zip(symbols, symbols[1:], strict=False)
            best = min(pairs, key=lambda pair: self.ranks.get(pair, _NUM_MERGES))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        ids = [self.vocab[s] for s in symbols]
        if len(self.cache) < 100_000:  # bounded: hostile input must not grow the cache without limit
            self.cache[word] = ids
        return ids


def _needs_original_path(cleaned: str) -> bool:
    """Whether the Rust backend could tokenize this cleaned text differently from the original (see module doc)."""
    return not cleaned.isascii() or "<|" in cleaned


class LongCLIPTokenizer:
    """CLIP BPE tokenizer for a given context length; a ``longclip.text.TextTokenizer``.

    Args:
        context_length: Number of positions of the text tower (248 for Long-CLIP, 77 for CLIP).
    """

    pad_id = PAD_ID
    start_id = SOT_ID
    end_id = EOT_ID

    def __init__(self, context_length: int = DEFAULT_CONTEXT_LENGTH):
        if context_length < 2:
            raise ValueError(f"context_length must be at least 2 (start and end tokens), got {context_length}")
        from transformers import CLIPTokenizer

        vocab, merges = vocabulary_and_merges()
        self.context_length = context_length
        self.hf_tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=context_length)
        self._backend = self.hf_tokenizer.backend_tokenizer
        self._original = _OriginalBPE(vocab, merges)

    def encode(self, texts: str | Sequence[str]) -> list[list[int]]:
        """Token ids of each text, start and end tokens included, never truncated.

        The ids equal OpenAI CLIP's original tokenizer's on any text: plain ASCII goes through the fast Rust
        backend, anything else through a Python port of the original algorithm (see the module docstring).
        """
        cleaned = [clean_text(t) for t in _as_list(texts)]
        result: list[list[int]] = [[] for _ in cleaned]
        fast = [i for i, text in enumerate(cleaned) if not _needs_original_path(text)]
        for i, encoding in zip(fast, self._backend.encode_batch([cleaned[i] for i in fast]), strict=True):
            result[i] = encoding.ids
        for i, text in enumerate(cleaned):
            if _needs_original_path(text):
                result[i] = self._original.encode(text)
        return result

    def count_tokens(self, texts: str | Sequence[str]) -> list[int]:
        """Number of tokens of each text, start and end tokens included."""
        return [len(ids) for ids in self.encode(texts)]

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None, truncate: bool = False
    ) -> torch.Tensor:
        """Tokenize texts into a ``[len(texts), context_length]`` int64 tensor padded with 0.

        Args:
            texts: A text or a list of texts.
            context_length: Overrides the tokenizer's context length.
            truncate: Cut texts that do not fit and put the end token last (as Long-CLIP does). If False, a text
                that does not fit raises ``ValueError`` naming its position and token count.
        """
        length = context_length or self.context_length
        return self.pad(self.encode(texts), length, truncate=truncate).input_ids

    def truncate(self, ids: Sequence[int], length: int) -> list[int]:
        """Cut an id list to ``length`` ids with the end token last, as Long-CLIP does (the model pools it)."""
        return truncate_clip_ids(ids, length)

    def chunk(self, text: str, length: int | None = None) -> list[list[int]]:
        """Split one text's tokens into consecutive pieces that each fit the context, each with start and end tokens.

        A text that fits gives one piece. Used by ``embed_texts(long_texts="chunk")``.
        """
        length = length or self.context_length
        body = self.encode(text)[0][1:-1]
        step = length - 2
        pieces = [body[i : i + step] for i in range(0, len(body), step)] or [[]]
        return [[SOT_ID, *piece, EOT_ID] for piece in pieces]

    def pad(self, ids: Sequence[Sequence[int]], length: int | None = None, truncate: bool = False) -> TextBatch:
        """Pad id lists with 0 into a ``TextBatch``, ``length`` wide (default: the longest list, at most the context).

        Args:
            ids: Id lists, start and end tokens included.
            length: Width of the batch (rows longer than it are too long); by default the context is the limit.
            truncate: Cut too-long rows with the end token last; otherwise they raise ``ValueError``.
        """
        return pad_ids(ids, self.pad_id, self.context_length, self.truncate, length=length, truncate=truncate)

    def batch(self, texts: str | Sequence[str], truncate: bool = False) -> TextBatch:
        """Tokenize texts into a ``TextBatch`` as wide as its longest text (at most the context)."""
        return self.pad(self.encode(texts), truncate=truncate)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write transformers tokenizer files (``model_max_length`` = the context length) into ``directory``."""
        self.hf_tokenizer.save_pretrained(directory)


def pad_token_ids(ids: Sequence[Sequence[int]], context_length: int, truncate: bool = False) -> torch.Tensor:
    """Pack CLIP id lists into a zero-padded ``[N, context_length]`` tensor, truncating as Long-CLIP does if asked."""
    return pad_ids(ids, PAD_ID, context_length, truncate_clip_ids, length=context_length, truncate=truncate).input_ids


def truncate_clip_ids(ids: Sequence[int], length: int) -> list[int]:
    """CLIP ids cut to ``length`` with the end token last (what Long-CLIP's ``truncate=True`` does)."""
    if length < 2:
        raise ValueError(f"length must be at least 2 (start and end tokens), got {length}")
    ids = list(ids)
    return ids if len(ids) <= length else [*ids[: length - 1], EOT_ID]


def clip_end_positions(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, context_length: int
) -> torch.Tensor:
    """Where each row's first end-of-text token is, for towers that pool it (CLIP's, TULIP's).

    Checks what such a tower needs: ids of shape ``[batch, length]`` (and a mask of the same shape, if given), an end
    token in every row, and the longest text within ``context_length``. The tower may then cut the batch after
    ``end.max() + 1`` positions: attention is causal, so later positions never reach a pooled token.

    Raises:
        ValueError: Naming the row or the shape at fault.
    """
    if input_ids.ndim != 2:
        raise ValueError(f"expected token ids of shape [batch, length], got {tuple(input_ids.shape)}")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {tuple(input_ids.shape)}")
    is_end = input_ids == EOT_ID
    if input_ids.shape[0] and not bool(is_end.any(dim=1).all()):
        row = int((~is_end.any(dim=1)).nonzero()[0])
        raise ValueError(f"token row {row} has no end-of-text token ({EOT_ID}); tokenize with longclip.tokenize")
    end = is_end.int().argmax(dim=1)
    if input_ids.shape[0] and int(end.max()) + 1 > context_length:
        length = int(end.max()) + 1
        raise ValueError(f"texts of {length} tokens do not fit this model's context of {context_length}")
    return end


def _as_list(texts: str | Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is a {type(text).__name__}, expected str")
    return texts


@functools.lru_cache(maxsize=8)
def get_tokenizer(context_length: int = DEFAULT_CONTEXT_LENGTH) -> LongCLIPTokenizer:
    """A shared tokenizer for this context length (building one takes about a second)."""
    return LongCLIPTokenizer(context_length)


def tokenize(
    texts: str | Sequence[str], context_length: int = DEFAULT_CONTEXT_LENGTH, truncate: bool = False
) -> torch.Tensor:
    """Tokenize texts the way Long-CLIP does: ``[N, context_length]`` ids, start 49406, end 49407, padding 0.

    Args:
        texts: A text or a list of texts.
        context_length: 248 for Long-CLIP models, 77 for original CLIP.
        truncate: Cut over-long texts (keeping the end token last) instead of raising ``ValueError``.
    """
    return get_tokenizer(context_length)(texts, truncate=truncate)
