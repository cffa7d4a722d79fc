"""Tiny language models and tokenizers built in code for the LLM2CLIP tests (hidden size 32, 2 layers)."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, LlamaModel, PreTrainedTokenizerFast

WORDS = (
    "a an the of on in and with near middle picture red green blue yellow square circle background colour "
    "sits fills everything around it is slightly shifted by pixels 0 1 2 3 photo dog cat . ,"
).split()


def word_tokenizer(bert_style: bool) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: ``[CLS] ... [SEP]`` around each text (BERT-like) or ``<s>`` before it (Llama-like)."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] if bert_style else ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {w: i for i, w in enumerate([*specials, *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials[1]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bert_style:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
        names = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")
    else:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
        names = dict(pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    return PreTrainedTokenizerFast(tokenizer_object=tok, **names)


def tiny_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(WORDS) + 4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    return BertModel(config, add_pooling_layer=False).eval()


INIT = 0.3


def _llama_config(**extra) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(WORDS) + 4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, intermediate_size=64, max_position_embeddings=64, pad_token_id=0, **extra,
    )  # fmt: skip


def tiny_llama(seed: int = 0) -> LlamaModel:
    torch.manual_seed(seed)
    return LlamaModel(_llama_config()).eval()


def tiny_llama_lm(seed: int = 0) -> LlamaForCausalLM:
    """A tiny Llama with its language-modelling head, tied to the input embeddings as SmolLM2's is.

    Initialised wider than transformers' 0.02: with a frozen head over 0.02-sized 32-wide embeddings, no logit could
    exceed about 0.6, and no training of the layers below could make a prediction confident.
    """
    torch.manual_seed(seed)
    return LlamaForCausalLM(_llama_config(tie_word_embeddings=True, initializer_range=INIT)).eval()


def save_language_model(directory: Path, kind: str = "bert", seed: int = 0) -> Path:
    """Write a tiny language model and its tokenizer as a transformers directory."""
    model = {"bert": tiny_bert, "llama": tiny_llama, "llama-lm": tiny_llama_lm}[kind](seed)
    model.save_pretrained(directory)
    word_tokenizer(kind == "bert").save_pretrained(directory)
    return directory


COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}


def write_pairs(root: Path, name: str, indices: range, hard_negatives: bool = False) -> Path:
    """Write 32-pixel pictures of a coloured shape and a CSV of their captions (and hard negatives if asked)."""
    rows = []
    names = list(COLOURS)
    for i in indices:
        background, colour = names[i % 4], names[(i // 4 + 1 + i % 4) % 4]
        shape = "square" if i % 2 else "circle"
        image = Image.new("RGB", (32, 32), COLOURS[background])
        draw = ImageDraw.Draw(image)
        (draw.rectangle if shape == "square" else draw.ellipse)([6 + i % 3, 6, 24, 24 + i % 3], fill=COLOURS[colour])
        image.save(root / f"{i}.png")
        caption = (
            f"a {colour} {shape} on a {background} background . the {shape} sits near the middle of the picture , "
            f"slightly shifted by {i % 3} pixels"
        )
        rows.append({"image": f"{i}.png", "caption": caption, "short_caption": f"a {colour} {shape}"})
        if hard_negatives:  # the same words, the colours swapped: another picture
            rows[-1]["hard_negative"] = f"a {background} {shape} on a {colour} background"
    path = root / name
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
