"""LongCLIPModel: transformers-native saving, padding-free encoding, batch helpers, stretching on load."""

import logging

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_clip
from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

import longclip
from longclip import ImageLoadError, LongCLIPModel, LongCLIPProcessor, stretch_positional_embedding
from longclip.tokenizer import EOT_ID, SOT_ID

SHORT = ["a cat", "a red car parked on the street", "two dogs"]
LONG = [
    "In the foreground a man in a dark blue coat crosses at a zebra crossing with a brown leather briefcase. " * 4,
    "A bakery with a green awning sits on the ground floor of a brick building, its chalkboard sign readable. " * 3,
]
OVERLONG = "The sky is clear, the street is calm, and long shadows stretch across the warm asphalt. " * 20


@pytest.fixture(scope="module")
def model():
    return LongCLIPModel(tiny_clip())


def _plain_text_features(clip: CLIPModel, texts) -> torch.Tensor:
    """Every text padded to 248, straight through transformers: what the original code computes."""
    with torch.no_grad():
        return F.normalize(
            clip.get_text_features(input_ids=longclip.tokenize(texts, truncate=True)).pooler_output, dim=-1
        )


def test_saved_directory_is_a_plain_transformers_clip(model, tmp_path, photos):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.pt"))

    plain = CLIPModel.from_pretrained(tmp_path).eval()
    assert plain.config.text_config.max_position_embeddings == 248
    assert CLIPTokenizer.from_pretrained(tmp_path).model_max_length == 248
    processor = CLIPImageProcessorPil.from_pretrained(tmp_path)
    pixels = torch.as_tensor(processor(images=[photos["chelsea"]], return_tensors="pt")["pixel_values"])
    assert torch.allclose(pixels[0], model.preprocess(photos["chelsea"]), atol=1e-6)

    texts = SHORT + LONG
    with torch.no_grad():
        torch.testing.assert_close(
            F.normalize(plain.get_image_features(pixel_values=pixels).pooler_output, dim=-1),
            model.embed_images([photos["chelsea"]]),
        )
    torch.testing.assert_close(_plain_text_features(plain, texts), model.embed_texts(texts), atol=1e-5, rtol=0)

    reloaded, _ = longclip.load(tmp_path)
    torch.testing.assert_close(reloaded.embed_texts(texts), model.embed_texts(texts), atol=1e-6, rtol=0)


def test_encode_text_trims_padding_without_changing_results(model):
    texts = SHORT + LONG
    tokens = longclip.tokenize(texts, truncate=True)
    calls = []
    handle = model.clip.text_model.embeddings.register_forward_hook(lambda m, args, out: calls.append(out.shape[1]))
    try:
        with torch.no_grad():
            features = model.encode_text(tokens, normalize=True)
    finally:
        handle.remove()
    longest = max(model.tokenizer.count_tokens(texts))
    assert calls == [longest] and longest < 248
    torch.testing.assert_close(features, _plain_text_features(model.clip, texts), atol=1e-5, rtol=0)


def test_embed_texts_keeps_input_order_and_batches_by_length(model):
    texts = [LONG[0], SHORT[0], LONG[1], SHORT[1], SHORT[2]]
    widths = []
    handle = model.clip.text_model.embeddings.register_forward_hook(lambda m, args, out: widths.append(out.shape[1]))
    try:
        features = model.embed_texts(texts, batch_size=2)
    finally:
        handle.remove()
    counts = sorted(model.tokenizer.count_tokens(texts), reverse=True)
    assert widths == [counts[0], counts[2], counts[4]]  # sorted neighbours, each batch as wide as its longest
    torch.testing.assert_close(features, _plain_text_features(model.clip, texts), atol=1e-5, rtol=0)


def test_long_text_modes(model):
    with pytest.raises(ValueError, match=r"text 1 has \d+ tokens, more than the context length 248"):
        model.embed_texts([SHORT[0], OVERLONG], long_texts="error")
    truncated = model.embed_texts([OVERLONG])
    torch.testing.assert_close(truncated, _plain_text_features(model.clip, [OVERLONG]), atol=1e-5, rtol=0)

    # chunk: the mean of the normalized embeddings of consecutive 246-token pieces, renormalized.
    ids = model.tokenizer.encode(OVERLONG)[0][1:-1]
    pieces = [[SOT_ID, *ids[i : i + 246], EOT_ID] for i in range(0, len(ids), 246)]
    assert len(pieces) == 2
    with torch.no_grad():
        each = [model.encode_text(torch.tensor([p]), normalize=True)[0] for p in pieces]
    expected = F.normalize(torch.stack(each).mean(0), dim=0)
    chunked = model.embed_texts([SHORT[0], OVERLONG], long_texts="chunk")
    torch.testing.assert_close(chunked[1], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked[0], model.embed_texts([SHORT[0]])[0], atol=1e-6, rtol=0)


def test_forward_returns_clip_logits(model, photos):
    images = torch.stack([model.preprocess(photos[name]) for name in ("astronaut", "coffee")])
    text = longclip.tokenize(SHORT)
    with torch.no_grad():
        logits_per_image, logits_per_text = model(images, text)
    expected = model.logit_scale.exp() * model.embed_images(list(images.unbind())) @ model.embed_texts(SHORT).T
    assert logits_per_image.shape == (2, 3) and torch.equal(logits_per_text, logits_per_image.T)
    torch.testing.assert_close(logits_per_image, expected, atol=1e-4, rtol=1e-5)


def test_embed_images_reports_bad_files_and_can_skip_them(model, photos, tmp_path, caplog):
    good = tmp_path / "cat.png"
    photos["chelsea"].save(good)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"definitely not a jpeg")
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        model.embed_images([good, broken])
    with caplog.at_level(logging.WARNING):
        features = model.embed_images([good, broken, photos["coffee"]], batch_size=2, skip_errors=True)
    assert "broken.jpg" in caplog.text
    assert torch.isnan(features[1]).all() and not torch.isnan(features[[0, 2]]).any()
    torch.testing.assert_close(features[0], model.embed_images([photos["chelsea"]])[0])


def test_tokens_without_end_token_are_refused(model):
    with pytest.raises(ValueError, match="token row 1 has no end-of-text token"):
        model.encode_text(torch.tensor([[SOT_ID, 320, EOT_ID], [SOT_ID, 320, 320]]))


def test_load_from_clip_stretches_a_77_token_clip(tmp_path):
    clip = tiny_clip(context=77)
    LongCLIPModel(clip).save_pretrained(tmp_path)
    original = clip.text_model.embeddings.position_embedding.weight.detach()
    model, preprocess = longclip.load_from_clip(tmp_path)
    assert model.context_length == 248 and model.config.keep_positions == 20
    table = model.clip.text_model.embeddings.position_embedding.weight.detach()
    torch.testing.assert_close(table, stretch_positional_embedding(original), atol=0, rtol=0)
    assert model.clip.text_model.embeddings.position_embedding.weight.requires_grad
    # short texts land on the kept rows: their features are CLIP's own
    with torch.no_grad():
        short = longclip.tokenize(SHORT, context_length=77)
        expected = clip.get_text_features(input_ids=short).pooler_output
    torch.testing.assert_close(model.embed_texts(SHORT, normalize=False), expected, atol=1e-5, rtol=0)
    assert model.embed_texts([LONG[0]]).shape == (1, 16)

    linear, _ = longclip.load_from_clip(tmp_path, mode="linear")
    assert linear.context_length == 248 and linear.config.keep_positions == 0

    model.save_pretrained(tmp_path / "stretched")
    with pytest.raises(ValueError, match="has a 248-token text context, expected CLIP's 77"):
        longclip.load_from_clip(tmp_path / "stretched")


def test_reduced_precision_inference_stays_close(tmp_path):
    LongCLIPModel(tiny_clip()).save_pretrained(tmp_path)
    full, _ = longclip.load(tmp_path)
    half, _ = longclip.load(tmp_path, dtype="bfloat16")
    assert half.dtype == torch.bfloat16
    similarity = (full.embed_texts(SHORT + LONG) * half.embed_texts(SHORT + LONG)).sum(-1)
    assert (similarity > 0.99).all()
    with pytest.raises(ValueError, match="dtype must be one of auto, float32, float16, bfloat16"):
        longclip.load(tmp_path, dtype="int8")


def test_processor_from_pretrained_matches_the_model(model, tmp_path, photos):
    model.save_pretrained(tmp_path)
    processor = LongCLIPProcessor.from_pretrained(tmp_path)
    batch = processor(text=SHORT + [OVERLONG], images=[photos["astronaut"]])
    assert torch.equal(batch["input_ids"], longclip.tokenize(SHORT + [OVERLONG], truncate=True))
    assert torch.equal(batch["pixel_values"][0], model.preprocess(photos["astronaut"]))


def test_empty_inputs_keep_the_feature_width(model):
    assert model.embed_texts([]).shape == (0, 16)
    assert model.embed_images([]).shape == (0, 16)
    assert model.encode_text(torch.zeros(0, 248, dtype=torch.long)).shape == (0, 16)


def test_chunking_needs_normalized_features(model):
    with pytest.raises(ValueError, match="needs normalize=True"):
        model.embed_texts([OVERLONG], long_texts="chunk", normalize=False)


def test_directory_without_preprocessor_config_gets_openai_preprocessing(model, tmp_path, photos):
    model.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").unlink()
    loaded, preprocess = longclip.load(tmp_path)
    assert preprocess.image_size == 32
    assert torch.equal(preprocess(photos["coffee"]), model.preprocess(photos["coffee"]))
    assert LongCLIPProcessor.from_pretrained(tmp_path).image_transform.image_size == 32
