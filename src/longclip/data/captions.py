"""Caption helpers: the short caption that Long-CLIP pairs with each long one.

Long-CLIP trains on (image, long caption) pairs and, for its primary-component-matching loss, also needs a short
caption per image. Two rules make one from the long caption (:data:`SHORT_CAPTION_RULES`):

* ``"original"`` -- :func:`original_short_caption`, the original training code's rule, ``caption.split(". ")[0]``:
  everything before the first period followed by a space, without that period. It cuts "Mr. Smith" after "Mr" and
  "e.g. a dog" after "e.g", and keeps a whole second sentence when the first ends with "!" or "?".
* ``"sentence"`` (the default) -- :func:`first_sentence`, the first sentence by a few rules that survive real
  ShareGPT4V-style captions (abbreviations, initials, numbers, ``!``/``?``, ellipses), its final mark kept.
"""

from __future__ import annotations

import re

__all__ = ["ABBREVIATIONS", "SHORT_CAPTION_RULES", "first_sentence", "original_short_caption"]

ABBREVIATIONS: frozenset[str] = frozenset(
    {"mr", "mrs", "ms", "dr", "st", "mt", "jr", "sr", "vs", "etc", "e.g", "i.e", "approx", "no", "fig"}
)
"""Words (lower case, without their final period) whose period never ends a sentence."""

# A candidate sentence end: a run of terminators (so "?!" and "..." end together at their last character), then any
# closing quotes or brackets, which belong to the sentence they close.
_END = re.compile(r"(?P<marks>[.!?\u2026]+)(?P<closers>[\"'\u201d\u2019)\]\u00bb]*)")
# Opening punctuation that may stand before a word, as in '("Dr.' or '"e.g.'.
_OPENERS = "\"'(\u201c\u2018[\u00ab"
_WHITESPACE = re.compile(r"\s+")


def first_sentence(text: str) -> str:
    """Return the first sentence of a caption.

    Rule: whitespace is collapsed to single spaces and stripped, then the result is the text up to and including
    the first ``.``, ``!`` or ``?`` that

    * is followed by whitespace or ends the text, after any closing quotes or brackets (``"``, ``'``, ``”``,
      ``’``, ``)``, ``]``, ``»``), which are kept: ``He said "stop." Then...`` gives ``He said "stop."``;
      because of this a period inside a number (``3.14``, ``1.5m``) or between letters (``a.b``) never ends a
      sentence;
    * does not end a known abbreviation, compared case-insensitively: Mr. Mrs. Ms. Dr. St. Mt. Jr. Sr. vs. etc.
      e.g. i.e. approx. No. Fig. (:data:`ABBREVIATIONS`), nor a single capital initial such as ``J.``;
    * is not an ellipsis (``...`` or ``…``) followed by a word starting with a lower-case letter, which continues
      the sentence (``Wait... then it rained.``); an ellipsis before any other word ends it;
    * has at least one letter or digit before it (a stray leading ``.`` is not a sentence).

    A run of marks ends together at its last mark (``Really?!``). A caption without any such sentence end is
    returned whole; the empty string gives ``""``.

    Args:
        text: A caption, possibly several sentences long.

    Returns:
        The first sentence, with collapsed whitespace.
    """
    text = _WHITESPACE.sub(" ", text).strip()
    for match in _END.finditer(text):
        end = match.end()
        if end < len(text) and not text[end].isspace():
            continue  # "3.14", "1.5m", "a.b", "e.g.," : the mark is inside a token
        before = text[: match.start()]
        if not any(char.isalnum() for char in before):
            continue
        marks = match.group("marks")
        if marks == "." and _is_abbreviation(before):
            continue
        is_ellipsis = marks.endswith("..") or marks.endswith("\u2026")
        if is_ellipsis and _continues_lowercase(text, end):
            continue
        return text[:end]
    return text


def _is_abbreviation(before: str) -> bool:
    """Whether the word just before a period is a known abbreviation or a single capital initial."""
    word = before.rsplit(" ", 1)[-1].lstrip(_OPENERS)
    if len(word) == 1 and word.isupper():
        return True
    return word.lower() in ABBREVIATIONS


def _continues_lowercase(text: str, end: int) -> bool:
    """Whether the word after position ``end`` (past the space) starts with a lower-case letter."""
    rest = text[end:].lstrip().lstrip(_OPENERS)
    return bool(rest) and rest[0].islower()


def original_short_caption(text: str) -> str:
    """The original Long-CLIP training code's short caption: ``text.split(". ")[0]`` (no other change)."""
    return text.split(". ")[0]


SHORT_CAPTION_RULES = {"sentence": first_sentence, "original": original_short_caption}
"""Short-caption rules by name (``--short-caption``)."""
