import json

import pytest
import torch
from transformers import CLIPTokenizer

import longclip
from longclip.tokenizer import EOT_ID, SOT_ID, get_tokenizer


@pytest.fixture(scope="module")
def reference_cases(reference_dir):
    return json.loads((reference_dir / "tokenizer_reference.json").read_text())["cases"]


def test_ids_equal_the_original_long_clip_tokenizer(reference_cases):
    texts = [case["text"] for case in reference_cases]
    tokens = longclip.tokenize(texts, truncate=True)
    assert tokens.shape == (len(texts), 248)
    for case, row in zip(reference_cases, tokens, strict=True):
        expected = case["ids_context248_truncated"]
        assert row[: len(expected)].tolist() == expected, case["text"][:40]
        assert (row[len(expected) :] == 0).all()


def test_token_counts_equal_the_original_untruncated_lengths(reference_cases):
    counts = get_tokenizer().count_tokens([case["text"] for case in reference_cases])
    assert counts == [case["n_tokens_untruncated"] for case in reference_cases]


def test_too_long_text_raises_naming_position_and_count():
    long_text = "a very long caption " * 80
    with pytest.raises(ValueError, match=r"text 1 has 322 tokens, more than the context length 248"):
        longclip.tokenize(["short", long_text])


def test_truncation_keeps_the_end_token_last():
    long_text = "word " * 300
    row = longclip.tokenize(long_text, truncate=True)[0]
    assert row[0] == SOT_ID and row[-1] == EOT_ID
    assert (row[1:-1] != EOT_ID).all()


def test_context_length_is_configurable():
    tokens = longclip.tokenize(["a photo of a cat"], context_length=77)
    assert tokens.shape == (1, 77)
    with pytest.raises(ValueError, match="context length 77"):
        longclip.tokenize(["word " * 100], context_length=77)


def test_chunks_cover_the_text_and_each_fits():
    tokenizer = get_tokenizer()
    text = "the red car is parked beside a tall tree near the old station. " * 30
    full = tokenizer.encode(text)[0]
    chunks = tokenizer.chunk(text)
    assert len(chunks) == -(-(len(full) - 2) // 246)
    assert all(len(c) <= 248 and c[0] == SOT_ID and c[-1] == EOT_ID for c in chunks)
    assert sum((c[1:-1] for c in chunks), []) == full[1:-1]
    assert tokenizer.chunk("a cat") == [tokenizer.encode("a cat")[0]]


def test_saved_tokenizer_loads_in_transformers_with_the_long_context(tmp_path):
    get_tokenizer().save_pretrained(tmp_path)
    hf = CLIPTokenizer.from_pretrained(tmp_path)
    assert hf.model_max_length == 248
    text = "A man is crossing the street with a red car parked nearby."
    ours = longclip.tokenize(text)[0]
    theirs = torch.tensor(hf(text)["input_ids"])
    assert torch.equal(ours[: len(theirs)], theirs)


def test_non_text_input_is_rejected():
    with pytest.raises(TypeError, match="text 1 is a int"):
        longclip.tokenize(["fine", 3])
