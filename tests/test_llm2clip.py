"""LLM2CLIP: the language-model text tower, adapter, model save/load, released layout, loss and embedding cache."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from llm2clip_fixtures import save_language_model, tiny_bert, tiny_llama, word_tokenizer
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

import longclip
from longclip.data.text_cache import TextEmbeddingCache, shard_name, unique_captions, write_text_cache
from longclip.models.language import (
    LanguageEncoder,
    LanguageTokenizer,
    embed_captions,
    load_language_model,
    mean_pool,
    packaged_model_path,
)
from longclip.models.llm2clip import AdapterConfig, LLM2CLIPModel, TextAdapter
from longclip.train.tasks.llm2clip_text import caption_contrastive_loss

# --- text tower ---------------------------------------------------------------------------------------------------


def test_tokenizer_protocol_special_tokens_truncate_and_chunk():
    tok = LanguageTokenizer(word_tokenizer(bert_style=True), context_length=6)
    (ids,) = tok.encode(["a red square on a blue background"])
    assert ids[0] == 2 and ids[-1] == 3 and len(ids) == 9  # [CLS] 7 words [SEP]
    cut = tok.truncate(ids, 6)
    assert cut == [*ids[:5], 3]  # the closing [SEP] stays last
    chunks = tok.chunk("a red square on a blue background")
    assert all(c[0] == 2 and c[-1] == 3 and len(c) <= 6 for c in chunks)
    assert [i for c in chunks for i in c[1:-1]] == ids[1:-1]
    batch = tok.batch(["a dog", "a red square"])
    assert batch.input_ids[0].tolist() == [*tok.encode("a dog")[0], tok.pad_id]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    with pytest.raises(ValueError, match="more than the context length"):
        tok.batch(["a red square on a blue background"])


def test_mean_pooling_ignores_padding():
    tok = LanguageTokenizer(word_tokenizer(bert_style=True), context_length=32)
    for model in (tiny_bert(), tiny_llama()):
        for bidirectional in (False, True):
            encoder = LanguageEncoder(model, pooling="mean", bidirectional=bidirectional)
            short = "a cat"
            long = "a red square sits near the middle of the picture"
            alone = embed_captions(encoder, tok, [short], batch_size=1)
            batched = embed_captions(encoder, tok, [short, long], batch_size=2)
            torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-5)
            # Independent computation: the hidden states of the unpadded text, averaged over its tokens.
            ids = torch.tensor(tok.encode([short]))
            with torch.no_grad():
                hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
            torch.testing.assert_close(alone[0], hidden[0].mean(0), atol=1e-5, rtol=1e-5)


def test_mean_pool_and_last_token_pool_against_hand_values():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert mean_pool(hidden, mask).tolist() == [[2.0, 3.0]]
    encoder = LanguageEncoder(tiny_bert(), pooling="last")
    ids = torch.tensor([[2, 5, 6, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    with torch.no_grad():
        hidden = encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(encoder(ids, mask), hidden[:, 3])


def test_bidirectional_switch_lets_later_tokens_change_earlier_positions():
    encoder = LanguageEncoder(tiny_llama(), bidirectional=False)
    assert encoder.is_decoder and not encoder.bidirectional
    a = torch.tensor([[2, 5, 6, 7]])
    b = torch.tensor([[2, 5, 6, 8]])  # only the last token differs

    def hidden(ids, mask=None):
        mask = torch.ones_like(ids) if mask is None else mask
        with torch.no_grad():
            return encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state

    torch.testing.assert_close(hidden(a)[0, :3], hidden(b)[0, :3])  # causal: earlier positions cannot see it
    encoder.bidirectional = True
    assert (hidden(a)[0, 0] - hidden(b)[0, 0]).abs().max() > 1e-4  # now the first position sees the last token
    # Padding still hides: a padded row equals the unpadded one, in both modes (the mask path, not the skip path).
    for on in (True, False):
        encoder.bidirectional = on
        padded = torch.tensor([[2, 5, 6, 7, 0, 0], [2, 5, 6, 7, 9, 10]])
        mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
        torch.testing.assert_close(hidden(padded, mask)[0, :4], hidden(a)[0], atol=1e-5, rtol=1e-5)
    # An encoder is always bidirectional; the switch leaves it so.
    bert = LanguageEncoder(tiny_bert(), bidirectional=False)
    assert not bert.is_decoder and bert.bidirectional


def test_instruction_is_read_but_not_pooled():
    tok = LanguageTokenizer(word_tokenizer(bert_style=False), context_length=32, pool_prefix=False)
    batch, pool = tok.batch_with_instruction(["a cat", "a red square"], "the photo")
    # <s> the photo a cat  -> pool over "a cat" only; <s> the photo a red square -> "a red square"
    assert batch.input_ids.shape == (2, 6)
    assert pool.tolist() == [[0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]]
    plain, pool = tok.batch_with_instruction(["a cat"], "")
    assert pool.tolist() == [[0, 1, 1]]  # without pool_prefix the begin-of-text token is left out (LLM2Vec)


# --- caption-contrastive loss -------------------------------------------------------------------------------------


def test_caption_contrastive_loss_hand_computed():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # norms differ: cosine similarity is used
    d = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    c = 1 / math.sqrt(2)
    # scores (scale 1): row 0 = [1, c], row 1 = [0, c]; targets 0 and 1.
    expected = (-math.log(math.exp(1) / (math.exp(1) + math.exp(c))) - math.log(math.exp(c) / (1 + math.exp(c)))) / 2
    assert caption_contrastive_loss(q, d, scale=1.0).item() == pytest.approx(expected, rel=1e-6)
    # A hard negative [0, 1] joins every row's candidates: row 0 = [1, c, 0], row 1 = [0, c, 1].
    n = torch.tensor([[0.0, 3.0]])
    row0 = -math.log(math.exp(1) / (math.exp(1) + math.exp(c) + 1))
    row1 = -math.log(math.exp(c) / (1 + math.exp(c) + math.exp(1)))
    assert caption_contrastive_loss(q, d, n, scale=1.0).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # The default scale 50, with a second document close to the first: row 0 = [50, 50 c0], row 1 = [0, 50 c1].
    d = torch.tensor([[1.0, 0.0], [0.98, 0.2]])
    norm = math.hypot(0.98, 0.2)
    c0, c1 = 0.98 / norm, 0.2 / norm
    row0 = math.log1p(math.exp(50 * c0 - 50))
    row1 = math.log1p(math.exp(-50 * c1))
    assert caption_contrastive_loss(q, d).item() == pytest.approx((row0 + row1) / 2, rel=1e-4)


# --- adapter and model --------------------------------------------------------------------------------------------


def test_adapter_names_shapes_and_formula():
    torch.manual_seed(0)
    adapter = TextAdapter(AdapterConfig(input_dim=32, output_dim=16, normalize_input=True)).eval()
    names = set(adapter.state_dict())
    expected = {f"adaptor.{i}.{m}.{p}" for i in range(4) for m in ("ln", "fn.0", "fn.3") for p in ("weight", "bias")}
    expected |= {"adaptor.4.weight", "adaptor.4.bias", "adaptor.5.weight", "adaptor.5.bias"}
    assert names == expected
    assert adapter.state_dict()["adaptor.0.fn.0.weight"].shape == (64, 32)
    assert adapter.state_dict()["adaptor.5.weight"].shape == (16, 32)
    x = torch.randn(3, 32)
    h = F.normalize(x, dim=-1)
    s = adapter.state_dict()
    for i in range(4):
        y = F.layer_norm(h, (32,), s[f"adaptor.{i}.ln.weight"], s[f"adaptor.{i}.ln.bias"])
        y = F.gelu(y @ s[f"adaptor.{i}.fn.0.weight"].T + s[f"adaptor.{i}.fn.0.bias"])
        h = h + y @ s[f"adaptor.{i}.fn.3.weight"].T + s[f"adaptor.{i}.fn.3.bias"]
    h = F.layer_norm(h, (32,), s["adaptor.4.weight"], s["adaptor.4.bias"])
    torch.testing.assert_close(adapter(x), h @ s["adaptor.5.weight"].T + s["adaptor.5.bias"])
    with pytest.raises(ValueError, match="takes 32-wide"):
        adapter(torch.randn(2, 8))


def tiny_vision(seed: int = 0, width: int = 64) -> CLIPVisionModelWithProjection:
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=max(1, width // 64),
        image_size=32, patch_size=8, projection_dim=16, hidden_act="quick_gelu",
    )  # fmt: skip
    return CLIPVisionModelWithProjection(config).eval()


def tiny_llm2clip(tmp_path, kind: str = "bert") -> LLM2CLIPModel:
    language, tokenizer = load_language_model(save_language_model(tmp_path / f"lm-{kind}", kind), context_length=40)
    adapter = TextAdapter(AdapterConfig(32, 16))
    return LLM2CLIPModel(tiny_vision(), adapter, language, tokenizer).eval()


def test_model_saves_and_loads_with_longclip_load(tmp_path, photos):
    model = tiny_llm2clip(tmp_path, "llama")
    texts = ["a red square on a blue background", "a cat", "a dog near the middle"]
    images = list(photos.values())[:2]
    before_text, before_image = model.embed_texts(texts), model.embed_images(images)
    model.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["model_type"] == "llm2clip" and config["language_model"]["config"]["model_type"] == "llama"
    stored = load_file(tmp_path / "saved" / "model.safetensors")
    assert "text_adapter.adaptor.5.weight" in stored and "language_model.layers.0.self_attn.q_proj.weight" in stored
    loaded, preprocess = longclip.load(tmp_path / "saved", dtype="float32")
    assert isinstance(loaded, LLM2CLIPModel) and loaded.family == "llm2clip"
    torch.testing.assert_close(loaded.embed_texts(texts), before_text)
    torch.testing.assert_close(loaded.embed_images(images), before_image)
    # embed_texts equals the pieces done by hand: pooled LM, adapter, normalization.
    tok = loaded.tokenizer
    batch = tok.batch(texts[:1])
    with torch.no_grad():
        pooled = loaded.language_model(batch.input_ids, batch.attention_mask)
        manual = F.normalize(loaded.text_adapter(pooled), dim=-1)
    torch.testing.assert_close(loaded.embed_texts(texts[:1]), manual)
    logits, _ = loaded(torch.stack([preprocess(i) for i in images]), tok.batch(texts))
    assert logits.shape == (2, 3)


def test_model_without_language_model_says_how_to_attach_one(tmp_path):
    model = LLM2CLIPModel(tiny_vision(), TextAdapter(AdapterConfig(32, 16)))
    with pytest.raises(ValueError, match="no language model attached"):
        model.encode_text(torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="maps to 8 dimensions"):
        LLM2CLIPModel(tiny_vision(), TextAdapter(AdapterConfig(32, 8)))
    language, tokenizer = load_language_model(save_language_model(tmp_path / "lm", "bert"))
    model.attach_language_model(language, tokenizer)
    assert model.encode_text(tokenizer.batch(["a cat"]).input_ids).shape == (1, 16)


def test_released_llm2clip_layout_is_converted(tmp_path):
    """A fake released checkpoint with the released names and shapes (CLIP text tower included) loads by name."""
    vision = tiny_vision(seed=3)
    adapter = TextAdapter(AdapterConfig(32, 16))
    state = {f"vision_model.{k}": v for k, v in vision.vision_model.state_dict().items()}
    state["visual_projection.weight"] = vision.visual_projection.weight.detach()
    state["logit_scale"] = torch.tensor(4.0)
    state.update({f"text_adapter.{k}": v for k, v in adapter.state_dict().items()})
    state["text_model.embeddings.token_embedding.weight"] = torch.randn(10, 64)  # dropped
    state["text_projection.weight"] = torch.randn(16, 64)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "released.safetensors")
    model, _ = longclip.load(tmp_path / "released.safetensors", dtype="float32")
    assert isinstance(model, LLM2CLIPModel) and model.language_model is None
    assert model.vision.config.image_size == 32 and model.vision.config.patch_size == 8
    assert model.text_adapter.config.expansion == 2 and model.text_adapter.config.num_blocks == 4
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(pixels), vision(pixel_values=pixels).image_embeds)
        x = torch.randn(2, 32)
        torch.testing.assert_close(model.encode_embeddings(x), adapter(x))
    assert float(model.logit_scale.detach()) == 4.0
    del state["text_adapter.adaptor.5.weight"]
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "broken.safetensors")
    with pytest.raises(longclip.CheckpointError, match="adaptor.5.weight"):
        longclip.load(tmp_path / "broken.safetensors")


# --- embedding cache ----------------------------------------------------------------------------------------------


def _fake_embed(calls: list):
    def embed(texts):
        calls.append(len(texts))
        return torch.stack([torch.tensor([float(len(t)), float(sum(map(ord, t)) % 97), 1.0]) for t in texts])

    return embed


def _captions(n: int = 11) -> list[str]:
    return [f"caption number {i} " + "x" * i for i in range(n)]


def test_cache_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    import safetensors.torch

    captions = _captions()
    calls: list = []
    write_text_cache(captions, _fake_embed(calls), tmp_path / "whole", shard_size=3, metadata={"model": "m"})
    assert calls == [3, 3, 3, 2]

    real_save = safetensors.torch.save_file
    written = []

    def dying_save(tensors, filename, metadata=None):
        if len(written) == 2:  # the third shard: half a file reaches the disk, then the process dies
            with open(filename, "wb") as f:
                f.write(b"partial")
            raise KeyboardInterrupt
        written.append(filename)
        real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        write_text_cache(captions, _fake_embed([]), tmp_path / "cut", shard_size=3, metadata={"model": "m"})
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    cut = tmp_path / "cut"
    assert sorted(p.name for p in cut.glob("shard-*")) == [shard_name(0), shard_name(1)]  # no partial shard
    assert not (cut / "index.json").exists()

    calls = []
    write_text_cache(captions, _fake_embed(calls), cut, shard_size=3, metadata={"model": "m"})
    assert calls == [3, 2]  # only the missing shards
    assert not list(cut.glob(".shard-*"))  # the partial temporary file was removed
    assert (cut / "index.json").read_text() == (tmp_path / "whole" / "index.json").read_text()
    for k in range(4):
        assert torch.equal(
            load_file(cut / shard_name(k))["embeddings"], load_file(tmp_path / "whole" / shard_name(k))["embeddings"]
        )  # noqa: E501
    cache = TextEmbeddingCache(cut)
    assert len(cache) == 11 and cache.dim == 3
    torch.testing.assert_close(cache.lookup([captions[7], captions[0]]), _fake_embed([])([captions[7], captions[0]]))
    with pytest.raises(KeyError, match="not in the text cache"):
        cache.lookup(["never embedded"])
    with pytest.raises(ValueError, match="other captions_sha256"):
        write_text_cache(captions[:5], _fake_embed([]), cut, shard_size=3, metadata={"model": "m"})


def test_cache_ranks_embed_their_own_shards(tmp_path):
    captions = _captions(10)
    write_text_cache(captions, _fake_embed([]), tmp_path / "one", shard_size=2)
    calls: dict[int, list] = {0: [], 1: []}
    # Rank 1 first (it writes no index), then rank 0 (which finds every shard and writes the index).
    write_text_cache(captions, _fake_embed(calls[1]), tmp_path / "two", shard_size=2, rank=1, world_size=2)
    assert not (tmp_path / "two" / "index.json").exists()
    assert sorted(p.name for p in (tmp_path / "two").glob("shard-*")) == [shard_name(1), shard_name(3)]
    write_text_cache(captions, _fake_embed(calls[0]), tmp_path / "two", shard_size=2, rank=0, world_size=2)
    assert calls == {0: [2, 2, 2], 1: [2, 2]}
    assert (tmp_path / "two" / "index.json").read_text() == (tmp_path / "one" / "index.json").read_text()


def test_unique_captions_keeps_first_seen_order():
    class Pair:
        def __init__(self, caption, short_caption):
            self.caption, self.short_caption = caption, short_caption

    pairs = [Pair("long a", "short a"), Pair("long b", "short a"), Pair("long a", "")]
    assert unique_captions(pairs) == ["long a", "short a", "long b"]


# --- packaged models ----------------------------------------------------------------------------------------------


def _packaged_or_skip(name: str):
    try:
        return packaged_model_path(name)
    except ModuleNotFoundError as e:
        pytest.skip(str(e))


def test_packaged_minilm_loads_offline(monkeypatch):
    from transformers import AutoModel, AutoTokenizer

    folder, _ = _packaged_or_skip("minilm")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder, tokenizer = load_language_model("minilm")
    assert tokenizer.context_length == 512 and tokenizer.pad_id == 0 and encoder.hidden_size == 384
    texts = ["A photo of a cat.", "A long description of a red square sitting on a blue background."]
    features = embed_captions(encoder, tokenizer, texts)
    # Independently: sentence-transformers' recipe for all-MiniLM-L6-v2 (mean of the unpadded hidden states).
    reference_tok, reference = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder)
    for i, text in enumerate(texts):
        inputs = reference_tok(text, return_tensors="pt")
        with torch.no_grad():
            expected = reference(**inputs).last_hidden_state[0].mean(0)
        torch.testing.assert_close(features[i], expected, atol=1e-4, rtol=1e-4)
    assert F.cosine_similarity(features[0], features[1], dim=0) < 0.9


@pytest.mark.slow
def test_packaged_smollm2_loads_offline(monkeypatch):
    _packaged_or_skip("smollm2")
    pytest.importorskip("gguf", reason="reading SmolLM2's GGUF file needs the gguf package (extra llm2clip)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder, tokenizer = load_language_model("smollm2", bidirectional=True)
    assert encoder.is_decoder and encoder.bidirectional and encoder.hidden_size == 576
    assert tokenizer.context_length == 512
    # Unpacked into plain weights and no longer marked GGUF-quantized, so the LoRA stages can save what they tune
    # (transformers refuses to save a model it takes for a quantized one).
    assert getattr(encoder.model, "hf_quantizer", None) is None
    assert "quantization_config" not in encoder.model.config.to_dict()
    features = embed_captions(encoder, tokenizer, ["a cat", "a red square on a blue background"])
    assert features.shape == (2, 576) and torch.isfinite(features).all()


def test_unknown_packaged_model_and_missing_gguf_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown packaged model 'nope'"):
        packaged_model_path("nope")
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        load_language_model(tmp_path / "missing.gguf")


def test_model_works_with_clipscore_zero_shot_and_retrieval(tmp_path, photos):
    from longclip.eval.datasets import RetrievalSet
    from longclip.eval.runner import score_retrieval
    from longclip.eval.zeroshot import zero_shot_classify
    from longclip.metrics import clip_score

    model = tiny_llm2clip(tmp_path, "bert")
    images = list(photos.values())
    texts = ["a cat", "a red square on a blue background", "a dog near the middle of the picture"]
    scores = clip_score(images, texts, model)
    cosines = (model.embed_images(images) * model.embed_texts(texts)).sum(-1)
    torch.testing.assert_close(scores, 100 * cosines.clamp_min(0))
    result = zero_shot_classify(model, images, [0, 1, 2], ["cat", "square", "dog"], ["a photo of a {}"])
    assert 0 <= result["acc1"] <= 1
    paths = []
    for i, image in enumerate(images):
        image.save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    dataset = RetrievalSet("toy", "three photos", paths, texts, [0, 1, 2])
    metrics = score_retrieval(model, dataset, model.embed_images(paths), ks=(1,))
    assert metrics["num_texts"] == 3 and 0 <= metrics["image_retrieval_recall@1"] <= 1


def test_embed_and_classify_commands_take_an_llm2clip_model(tmp_path, photos):
    import numpy as np

    from longclip.cli import main

    tiny_llm2clip(tmp_path, "bert").save_pretrained(tmp_path / "model")
    model, _ = longclip.load(tmp_path / "model", dtype="float32")
    texts = ["a cat", "a red square on a blue background"]
    out = tmp_path / "texts.npy"
    assert main(["-q", "embed", "--model", str(tmp_path / "model"), "--dtype", "float32", "--texts", *texts,
                 "--output", str(out)]) == 0  # fmt: skip
    torch.testing.assert_close(torch.from_numpy(np.load(out)), model.embed_texts(texts))
    photos["chelsea"].save(tmp_path / "cat.png")
    assert main(["-q", "classify", str(tmp_path / "cat.png"), "--model", str(tmp_path / "model"), "--label", "a cat",
                 "--label", "a dog", "--json"]) == 0  # fmt: skip
