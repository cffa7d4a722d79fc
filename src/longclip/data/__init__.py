"""Training data: image/long-caption pairs from ShareGPT4V json, caption tables or webdataset shards.

Index-based sources (:func:`read_pairs` and friends) give lists of :class:`CaptionedImage` for a
:class:`PairDataset`; tar shards are streamed with :func:`webdataset_pairs` (optional extra
``longclip[webdataset]``). Both yield the same items, which :class:`CaptionCollator` turns into batches.
"""

from longclip.data.captions import ABBREVIATIONS, SHORT_CAPTION_RULES, first_sentence, original_short_caption
from longclip.data.pairs import (
    CaptionCollator,
    CaptionedImage,
    PairDataset,
    read_caption_table,
    read_pairs,
    read_sharegpt4v,
    split_holdout,
)
from longclip.data.webdataset import IMAGE_EXTENSIONS, WebDatasetPairs, webdataset_pairs

__all__ = [
    "ABBREVIATIONS",
    "IMAGE_EXTENSIONS",
    "SHORT_CAPTION_RULES",
    "CaptionCollator",
    "CaptionedImage",
    "PairDataset",
    "WebDatasetPairs",
    "first_sentence",
    "original_short_caption",
    "read_caption_table",
    "read_pairs",
    "read_sharegpt4v",
    "split_holdout",
    "webdataset_pairs",
]
