"""Token ids equal OpenAI CLIP's original tokenizer on any text (issue 10, item 2).

The reference below is the algorithm of OpenAI CLIP's ``simple_tokenizer.py``, written out here from its
description (not imported, not copied): ``ftfy.fix_text`` then ``html.unescape`` twice, whitespace collapsed with
Python's ``re``, Python's ``str.lower()``, the ``regex`` pre-tokenizer pattern, a byte-to-unicode map and greedy
lowest-rank BPE over the shipped merge list. It is compared with longclip's tokenizer on thousands of texts mixing
scripts, emoji, HTML entities, combining marks, special-token literals, whitespace kinds and digits.
"""

from __future__ import annotations

import gzip
import html
import random
import re
from importlib import resources

import ftfy
import pytest
import regex

from longclip.tokenizer import LongCLIPTokenizer


class OriginalCLIPTokenizer:
    """The reference: OpenAI CLIP's tokenizer algorithm, step by step."""

    split_pattern = regex.compile(
        r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
        regex.IGNORECASE,
    )

    def __init__(self) -> None:
        # Bytes that print as themselves keep their code point; the rest are mapped to 256, 257, ... in byte order.
        kept = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
        mapping, extra = {}, 0
        for byte in range(256):
            if byte in kept:
                mapping[byte] = chr(byte)
            else:
                mapping[byte] = chr(256 + extra)
                extra += 1
        self.byte_map = mapping
        raw = resources.files("longclip.assets").joinpath("bpe_simple_vocab_16e6.txt.gz").read_bytes()
        lines = gzip.decompress(raw).decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
        merges = [tuple(line.split()) for line in lines]
        symbols = [mapping[b] for b in kept] + [mapping[b] for b in range(256) if b not in kept]
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.ids = {token: i for i, token in enumerate(vocab)}
        self.rank = {merge: i for i, merge in enumerate(merges)}
        self.memo = {"<|startoftext|>": ["<|startoftext|>"], "<|endoftext|>": ["<|endoftext|>"]}

    def merge_word(self, token: str) -> list[str]:
        if token in self.memo:
            return self.memo[token]
        parts = list(token[:-1]) + [token[-1] + "</w>"]
        while len(parts) > 1:
            candidates = {(parts[i], parts[i + 1]) for i in range(len(parts) - 1)}
            best = min(candidates, key=lambda pair: self.rank.get(pair, float("inf")))
            if best not in self.rank:
                break
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self.memo[token] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        text = re.sub(r"\s+", " ", text).strip().lower()
        ids = [self.ids["<|startoftext|>"]]
        for piece in self.split_pattern.findall(text):
            symbols = "".join(self.byte_map[b] for b in piece.encode("utf-8"))
            ids.extend(self.ids[part] for part in self.merge_word(symbols))
        return ids + [self.ids["<|endoftext|>"]]


_FRAGMENTS = [
    # scripts
    "ΟΔΥΣΣΕΥΣ",
    "Σίσυφος",
    "ΣΑΣ.",
    "Straße",
    "İstanbul",
    "ǅemal",
    "Ǆ",
    "ﬁnance",
    "Привет, МИР",
    "日本語のテキスト",
    "한국어",
    "العربية",
    "עברית",
    "हिन्दी",
    "ไทย",
    "ᏣᎳᎩ",
    "𝐁𝐨𝐥𝐝",
    "Ⅻ",
    "①②",
    "½",
    "٣٤",
    "१२३",
    "𝟗",
    # emoji and symbols
    "😀",
    "👍🏽",
    "👨‍👩‍👧",
    "🇫🇷",
    "❤️",
    "©",
    "™",
    "→",
    "∑",
    "°C",
    "€5",
    # entities, with and without semicolons, nested
    "&amp;",
    "&amp",
    "&lt;&gt;",
    "&eacute",
    "&eacute;",
    "&amp;amp;",
    "&#39;",
    "&#x27",
    "&nbsp;",
    "&copy",
    "&notin;",
    # combining marks
    "\u0301",
    "\u0308",
    "\u0327",
    "e\u0301",
    "\u0345",
    "\u20dd",
    "\u093f",
    # special-token literals glued to things
    "<|endoftext|>",
    "<|startoftext|>",
    "<|endoftext|>.",
    ".<|endoftext|>",
    "<|ENDOFTEXT|>",
    "<|endoftext|>a",
    "<|end",
    "of",
    "text|>",
    # contractions and apostrophes
    "'s",
    "'S",
    "it's",
    "don't",
    "we'RE",
    "’s",
    "''",
    # whitespace kinds
    " ",
    "  ",
    "\t",
    "\n",
    "\u00a0",
    "\u2003",
    "\u3000",
    "\x1c",
    "\x85",
    "\u200b",
    "\r\n",
    # digits, punctuation, mojibake
    "123",
    "3.14",
    "1,000",
    "!!",
    "...",
    "--",
    "Ã©",
    "â€™",
    "\ufeff",
    "\x00",
    "\x7f",
    # ordinary words
    "a",
    "photo",
    "of",
    "the",
    "cat",
    "Dog",
    "running",
    "UPPER",
    "MiXeD",
]


def _random_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        pieces = rng.choices(_FRAGMENTS, k=rng.randint(1, 8))
        if rng.random() < 0.3:  # random code points from anywhere in the BMP and beyond
            pieces.append(
                "".join(
                    chr(rng.choice([rng.randint(0x20, 0x2FFF), rng.randint(0x1F300, 0x1FAFF)]))
                    for _ in range(rng.randint(1, 4))
                )
            )
        sep = rng.choice(["", " ", "", "\t"])
        texts.append(sep.join(pieces))
    return texts


@pytest.fixture(scope="module")
def reference() -> OriginalCLIPTokenizer:
    return OriginalCLIPTokenizer()


@pytest.fixture(scope="module")
def tokenizer() -> LongCLIPTokenizer:
    return LongCLIPTokenizer(77)


@pytest.mark.parametrize(
    "text",
    [
        "ΟΔΥΣΣΕΥΣ ΣΑΣ",  # final sigma: Python lowers a word-final capital sigma to ς
        "&eacute\u0301t\u00e9",  # entity without ';' then a combining mark: no NFC after unescaping
        "<|endoftext|>.",  # special-token literal glued to punctuation
        "a<|startoftext|>b<|endoftext|>c",
        "İstanbul",  # lowercases to two code points
        "Ǆemal",
        "a photo of a cat",
    ],
)
def test_known_hard_cases(text: str, reference: OriginalCLIPTokenizer, tokenizer: LongCLIPTokenizer) -> None:
    assert tokenizer.encode(text)[0] == reference.encode(text)


def test_thousands_of_random_texts(reference: OriginalCLIPTokenizer, tokenizer: LongCLIPTokenizer) -> None:
    texts = _random_texts(3000, seed=10)
    ours = tokenizer.encode(texts)
    mismatches = [(t, o) for t, o in zip(texts, ours, strict=True) if o != reference.encode(t)]
    assert not mismatches, f"{len(mismatches)} of {len(texts)} differ, e.g. {mismatches[:3]!r}"


def test_plain_english_still_matches(reference: OriginalCLIPTokenizer, tokenizer: LongCLIPTokenizer) -> None:
    rng = random.Random(3)
    words = ["A", "photo", "of", "two", "dogs,", "running;", "it's", "42", "(red)", "CAT's", "well-known", "U.S."]
    texts = [" ".join(rng.choices(words, k=rng.randint(1, 30))) for _ in range(500)]
    assert tokenizer.encode(texts) == [reference.encode(t) for t in texts]


def test_random_ascii_takes_the_fast_path_and_matches(
    reference: OriginalCLIPTokenizer, tokenizer: LongCLIPTokenizer
) -> None:
    rng = random.Random(7)
    alphabet = [chr(c) for c in range(0, 128)]
    texts = ["".join(rng.choices(alphabet, k=rng.randint(1, 40))).replace("<|", "<") for _ in range(1000)]
    texts = [t for t in texts if ftfy.fix_text(t).isascii()]
    assert len(texts) > 900
    assert tokenizer.encode(texts) == [reference.encode(t) for t in texts]
