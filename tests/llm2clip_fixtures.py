"""Tiny language models and tokenizers built in code for the LLM2CLIP tests (hidden size 32, 2 layers)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel, PreTrainedTokenizerFast

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


def tiny_llama(seed: int = 0) -> LlamaModel:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(WORDS) + 4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, intermediate_size=64, max_position_embeddings=64, pad_token_id=0,
    )  # fmt: skip
    return LlamaModel(config).eval()


def save_language_model(directory: Path, kind: str = "bert", seed: int = 0) -> Path:
    """Write a tiny language model and its tokenizer as a transformers directory."""
    model = tiny_bert(seed) if kind == "bert" else tiny_llama(seed)
    model.save_pretrained(directory)
    word_tokenizer(kind == "bert").save_pretrained(directory)
    return directory
