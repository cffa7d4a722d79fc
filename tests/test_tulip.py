"""TULIP's relative-position text tower: rotary and CoPE against written-out references, long texts, saving,
conversion from a CLIP and from the released open_clip layout."""

import json
import math

import numpy
import pytest
import torch
from conftest import tiny_clip

import longclip
from longclip.checkpoints import CheckpointError, read_checkpoint
from longclip.models import LongCLIPModel, TulipModel, tulip_from_clip
from longclip.models.tulip import TulipAttention, TulipConfig, TulipTextConfig, rotary_inverse_frequencies

WORDS = "red green blue square circle big small left right above below shiny dull striped dotted".split()


def _text_config(**overrides) -> TulipTextConfig:
    settings = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    return TulipTextConfig(**{**settings, **overrides})


def _tulip(**settings) -> TulipModel:
    clip = LongCLIPModel(tiny_clip(context=77))
    torch.manual_seed(1)
    return tulip_from_clip(clip, **settings)


def _rotate_complex(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE as complex multiplication: channel i and i + d/2 form z_i, rotated by position * theta^(-2i/d)."""
    d = x.shape[-1]
    freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    z = torch.complex(x[..., : d // 2].double(), x[..., d // 2 :].double())
    z = z * torch.polar(torch.ones_like(freqs), positions.double()[:, None] * freqs)
    return torch.cat([z.real, z.imag], dim=-1).float()


def _long_text(words: int, seed: int = 0) -> str:
    g = torch.Generator().manual_seed(seed)
    return " ".join(WORDS[i] for i in torch.randint(len(WORDS), (words,), generator=g).tolist()) + "."


# --- rotary ---------------------------------------------------------------------------------------------------------


def test_rotary_equals_a_complex_number_reference():
    text = _text_config(rope_theta=500.0)
    attention = TulipAttention(text)
    tower_inv_freq = rotary_inverse_frequencies(text)
    torch.testing.assert_close(tower_inv_freq, 500.0 ** (-torch.arange(0, 8, 2).float() / 8))

    torch.manual_seed(0)
    x = torch.randn(2, 7, 32)
    out = attention(x, *_cos_sin(text, 7))

    # Reference: project, rotate each head by complex multiplication, causal softmax attention, out projection.
    def heads(t):
        return t.view(2, 7, 4, 8).transpose(1, 2)

    positions = torch.arange(7)
    q = _rotate_complex(heads(attention.q_proj(x)), positions, 500.0)
    k = _rotate_complex(heads(attention.k_proj(x)), positions, 500.0)
    v = heads(attention.v_proj(x))
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)
    scores = scores.masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), -math.inf)
    expected = attention.out_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 7, 32))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def _cos_sin(text: TulipTextConfig, length: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    from longclip.models.tulip import TulipTextTransformer

    cos, sin = TulipTextTransformer(text).rotary(start + length, torch.device("cpu"))
    return cos[start:], sin[start:]


def test_rotary_scores_are_unchanged_when_every_position_shifts_by_the_same_amount():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    text = _text_config()
    torch.manual_seed(0)
    q, k = torch.randn(1, 4, 9, 8), torch.randn(1, 4, 9, 8)
    scores = []
    for start in (0, 5, 300):
        cos, sin = _cos_sin(text, 9, start)
        rq, rk = apply_rotary_pos_emb(q, k, cos[None], sin[None], unsqueeze_dim=1)
        scores.append(rq @ rk.transpose(-1, -2))
    torch.testing.assert_close(scores[1], scores[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(scores[2], scores[0], atol=1e-4, rtol=1e-4)
    # ...while the rotated vectors themselves do depend on the absolute position (the test is not vacuous).
    assert not torch.allclose(apply_rotary_pos_emb(q, k, *(t[None] for t in _cos_sin(text, 9, 5)))[0], q)


def test_dynamic_ntk_rescales_the_base_as_written_and_is_saved_with_the_model(tmp_path):
    text = _text_config(context_length=1024, rope_scaling={"rope_type": "dynamic", "factor": 8.0,
                                                           "original_context_length": 248})  # fmt: skip
    d = 8
    base = 10000.0 * (8.0 * 1024 / 248 - 7.0) ** (d / (d - 2))
    torch.testing.assert_close(rotary_inverse_frequencies(text), base ** (-torch.arange(0, d, 2).float() / d))

    model = _tulip(context_length=1024, rope_scaling=dict(text.rope_scaling))
    model.save_pretrained(tmp_path / "ntk")
    saved = json.loads((tmp_path / "ntk" / "config.json").read_text())
    assert saved["text_config"]["rope_scaling"]["factor"] == 8.0
    reloaded, _ = longclip.load(tmp_path / "ntk", dtype="float32")
    assert torch.equal(reloaded.text_model.inv_freq, model.text_model.inv_freq)
    assert not torch.allclose(reloaded.text_model.inv_freq, _tulip(context_length=1024).text_model.inv_freq)


# --- CoPE -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("formulation", ["tulip", "paper"])
def test_cope_attention_equals_a_direct_reference(formulation):
    text = _text_config(hidden_size=8, num_attention_heads=2, position_encoding="cope", cope_positions=3,
                        cope_formulation=formulation)  # fmt: skip
    attention = TulipAttention(text)
    torch.manual_seed(0)
    with torch.no_grad():
        attention.cope_positions.normal_()
        attention.q_norm.weight.uniform_(0.5, 1.5)
        attention.k_norm.bias.normal_()
    x = torch.randn(1, 5, 8)
    out = attention(x, None, None)

    # Reference, one query and key at a time, with TULIP's q/k LayerNorms. TULIP's AttentionCoPE scales q by d^-0.5,
    # divides q . k by sqrt(d) again, gates on those logits and takes the table logits with the scaled q; the
    # paper (Golovneva et al. 2024) leaves q unscaled: logits q . k / sqrt(d), table logits q . e.
    h, d, n, table = 2, 4, 5, attention.cope_positions[0]
    q = attention.q_norm(attention.q_proj(x).view(n, h, d))
    k = attention.k_norm(attention.k_proj(x).view(n, h, d))
    v = attention.v_proj(x).view(n, h, d)
    q_scale = d**-0.5 if formulation == "tulip" else 1.0
    mixed = torch.zeros(n, h, d)
    for head in range(h):
        for i in range(n):
            qi = q[i, head] * q_scale
            logits = []
            for j in range(i + 1):
                gates = [torch.sigmoid(qi @ k[t, head] / math.sqrt(d)) for t in range(j, i + 1)]
                p = min(sum(gates), torch.tensor(2.0))  # clamped to the last of 3 table rows
                lo, hi = math.floor(float(p.detach())), math.ceil(float(p.detach()))
                w = p - lo
                position_logit = (1 - w) * (qi @ table[:, lo]) + w * (qi @ table[:, hi])
                logits.append(qi @ k[j, head] / math.sqrt(d) + position_logit)
            weights = torch.stack(logits).softmax(0)
            mixed[i, head] = sum(weights[j] * v[j, head] for j in range(i + 1))
    expected = attention.out_proj(mixed.reshape(1, n, 8))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_cope_formulation_is_checked_and_older_configs_keep_the_papers():
    with pytest.raises(ValueError, match=r"cope_formulation must be one of \('tulip', 'paper'\), got 'golovneva'"):
        _text_config(position_encoding="cope", cope_formulation="golovneva")
    assert _text_config().cope_formulation == "tulip"
    written_before = {"model_type": "tulip", "text_config": {"position_encoding": "cope", "hidden_size": 32,
                                                             "num_attention_heads": 4}}  # fmt: skip
    assert TulipConfig.from_dict(written_before).text_config.cope_formulation == "paper"
    written_before["text_config"]["position_encoding"] = "rope"
    assert TulipConfig.from_dict(written_before).text_config.cope_formulation == "tulip"


def test_cope_model_trains_its_position_tables_and_round_trips(tmp_path):
    model = _tulip(position_encoding="cope", cope_positions=16)
    batch = model.tokenizer.batch(["a red square. it is above a blue circle.", "green"])
    model.encode_text(batch.input_ids, batch.attention_mask).sum().backward()
    assert model.text_model.encoder.layers[0].self_attn.cope_positions.grad.abs().sum() > 0
    model.save_pretrained(tmp_path / "cope")
    reloaded, _ = longclip.load(tmp_path / "cope", dtype="float32")
    assert reloaded.config.text_config.position_encoding == "cope"
    assert reloaded.config.text_config.cope_formulation == "tulip"
    assert torch.equal(reloaded.encode_text(batch.input_ids), model.encode_text(batch.input_ids))


# --- the model ------------------------------------------------------------------------------------------------------


def test_tulip_from_clip_keeps_every_clip_tensor_but_the_position_table():
    clip = LongCLIPModel(tiny_clip(context=77))
    tulip = tulip_from_clip(clip)
    ours = tulip.state_dict()
    for name, tensor in clip.clip.state_dict().items():
        if "embeddings.position_" in name and name.startswith("text_model"):
            assert name not in ours
        else:
            assert torch.equal(ours[name], tensor), name
    pixels = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(tulip.encode_image(pixels), clip.encode_image(pixels))
    assert tulip.context_length == 248 and tulip.family == "tulip"


@pytest.mark.parametrize("context", [512, 1024])
def test_long_texts_embed_whole_with_no_cut(context):
    model = _tulip(context_length=context)
    texts = [_long_text(300 * (context // 512)), _long_text(context - 40, seed=1), "a red square."]
    lengths = [len(ids) for ids in model.tokenizer.encode(texts)]
    assert 300 <= max(lengths) <= context and min(lengths) < 10
    features = model.embed_texts(texts, long_texts="error")  # would raise if anything needed cutting
    alone = torch.stack([model.encode_text(model.tokenizer.batch([t]).input_ids, normalize=True)[0] for t in texts])
    torch.testing.assert_close(features, alone, atol=1e-5, rtol=1e-5)
    # The last word of the longest text still changes its embedding: nothing was cut silently.
    changed = texts[1].rsplit(" ", 1)[0] + " " + ("red." if not texts[1].endswith("red.") else "blue.")
    assert not torch.allclose(model.embed_texts([changed])[0], features[1], atol=1e-6)
    with pytest.raises(ValueError, match="more than the context length"):
        model.embed_texts([_long_text(context + 50)], long_texts="error")
    chunked = model.embed_texts([_long_text(context + 50)], long_texts="chunk")
    assert chunked.shape == (1, 16) and torch.isfinite(chunked).all()


def test_save_and_reload_is_bit_exact(tmp_path):
    model = _tulip(context_length=512)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # weights a CLIP never had
    model.save_pretrained(tmp_path / "tulip")
    config = json.loads((tmp_path / "tulip" / "config.json").read_text())
    assert config["model_type"] == "tulip" and config["text_config"]["context_length"] == 512
    reloaded, preprocess = longclip.load(tmp_path / "tulip", dtype="float32")
    assert isinstance(reloaded, TulipModel) and reloaded.context_length == 512
    original, loaded = model.state_dict(), reloaded.state_dict()
    assert original.keys() == loaded.keys()
    for name in original:
        assert torch.equal(original[name], loaded[name]), name
    ids = model.tokenizer.batch([_long_text(400)]).input_ids
    assert torch.equal(reloaded.encode_text(ids), model.encode_text(ids))


# --- the released open_clip layout ----------------------------------------------------------------------------------


def _fake_tulip_checkpoint(cope: bool = False, width: int = 128, layers: int = 2) -> dict[str, torch.Tensor]:
    """Random tensors under the names and shapes of TULIP's open_clip checkpoints (64-wide heads, 2 per layer).

    The values are small (LayerNorm gains near 1), so a forward pass stays in a well-conditioned range.
    """
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return 0.1 * torch.randn(*shape, generator=g)

    def gain(n):
        return 1 + r(n)

    sd = {"token_embedding.weight": r(49408, width), "ln_final.weight": gain(width), "ln_final.bias": r(width),
          "text_projection": r(width, 16), "logit_scale": torch.tensor(4.2)}  # fmt: skip
    vision = {"visual.class_embedding": r(width), "visual.conv1.weight": r(width, 3, 8, 8),
              "visual.positional_embedding": r(17, width), "visual.ln_pre.weight": gain(width),
              "visual.ln_pre.bias": r(width), "visual.ln_post.weight": gain(width), "visual.ln_post.bias": r(width),
              "visual.proj": r(width, 16)}  # fmt: skip
    sd.update(vision)
    for prefix in ("transformer.resblocks.", "visual.transformer.resblocks."):
        for i in range(layers):
            b = f"{prefix}{i}."
            sd.update({
                b + "ln_1.weight": gain(width), b + "ln_1.bias": r(width),
                b + "attn.in_proj_weight": r(3 * width, width), b + "attn.in_proj_bias": r(3 * width),
                b + "attn.out_proj.weight": r(width, width), b + "attn.out_proj.bias": r(width),
                b + "ln_2.weight": gain(width), b + "ln_2.bias": r(width),
                b + "mlp.c_fc.weight": r(4 * width, width), b + "mlp.c_fc.bias": r(4 * width),
                b + "mlp.c_proj.weight": r(width, 4 * width), b + "mlp.c_proj.bias": r(width),
            })  # fmt: skip
            if cope and prefix == "transformer.resblocks.":
                sd.update({
                    b + "attn.q_ln.weight": gain(64), b + "attn.q_ln.bias": r(64),
                    b + "attn.k_ln.weight": gain(64), b + "attn.k_ln.bias": r(64),
                    b + "attn.cope.pos_emb": 10 * r(1, 64, 32),
                })  # fmt: skip
    return sd


def _tulip_text_reference(sd: dict[str, torch.Tensor], ids: torch.Tensor, cope: bool = False) -> torch.Tensor:
    """TULIP's text tower written out from its open_clip state dict (``TextTransformerRoPE`` / ``CoPE``), float64.

    Token embedding, pre-LN blocks whose attention splits ``in_proj`` into q, k, v and then heads. Rotary: q and k
    rotated as complex numbers of ADJACENT channel pairs (``view_as_complex(x.reshape(..., -1, 2))``) by
    ``polar(1, position * theta^(-2i/d))``, theta 10000, then causal softmax attention with ``q * d^-0.5``. CoPE
    (``AttentionCoPE``): ``q_ln``/``k_ln`` per head, ``q * d^-0.5``, logits ``q k^T / sqrt(d)`` plus the causal
    mask, plus CoPE's interpolated ``q @ pos_emb`` at positions ``flip-cumsum-flip`` of ``sigmoid(logits)`` clamped
    to ``npos_max - 1``. MLP with exact GELU (open_clip's default activation, which TULIP's text tower uses);
    ``ln_final``; the end token (the largest id) pooled; ``@ text_projection``.
    """
    sd = {k: v.double() for k, v in sd.items()}
    n, length = ids.shape
    x = sd["token_embedding.weight"][ids]
    width = x.shape[-1]
    heads, d = width // 64, 64
    freqs = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    angles = torch.outer(torch.arange(length, dtype=torch.float64), freqs)
    cis = torch.polar(torch.ones_like(angles), angles)
    mask = torch.full((length, length), -math.inf, dtype=torch.float64).triu(1)

    def ln(t, name):
        return torch.nn.functional.layer_norm(t, (t.shape[-1],), sd[name + ".weight"], sd[name + ".bias"], 1e-5)

    def rotate(t):  # [N, L, heads, d]
        z = torch.view_as_complex(t.reshape(*t.shape[:-1], -1, 2).contiguous())
        return torch.view_as_real(z * cis[None, :, None, :]).flatten(3)

    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer.resblocks."))
    for i in range(layers):
        b = f"transformer.resblocks.{i}."
        h = ln(x, b + "ln_1")
        q, k, v = (h @ sd[b + "attn.in_proj_weight"].T + sd[b + "attn.in_proj_bias"]).chunk(3, dim=-1)
        q, k, v = (t.reshape(n, length, heads, d) for t in (q, k, v))
        if cope:
            q, k = ln(q, b + "attn.q_ln"), ln(k, b + "attn.k_ln")
        else:
            q, k = rotate(q), rotate(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [N, heads, L, d]
        q = q * d**-0.5
        attn = q @ k.transpose(-1, -2)
        if cope:
            attn = attn / math.sqrt(d) + mask
            table = sd[b + "attn.cope.pos_emb"]  # [1, d, npos]
            pos = torch.sigmoid(attn).flip(-1).cumsum(-1).flip(-1).clamp(max=table.shape[-1] - 1)
            ceil, floor = pos.ceil().long(), pos.floor().long()
            logits_int = q @ table
            w = pos - floor
            attn = attn + logits_int.gather(-1, ceil) * w + logits_int.gather(-1, floor) * (1 - w)
        else:
            attn = attn + mask
        attn = attn.softmax(-1)
        out = (attn @ v).transpose(1, 2).reshape(n, length, width)
        x = x + out @ sd[b + "attn.out_proj.weight"].T + sd[b + "attn.out_proj.bias"]
        h = ln(x, b + "ln_2")
        h = torch.nn.functional.gelu(h @ sd[b + "mlp.c_fc.weight"].T + sd[b + "mlp.c_fc.bias"])
        x = x + h @ sd[b + "mlp.c_proj.weight"].T + sd[b + "mlp.c_proj.bias"]
    x = ln(x, "ln_final")
    return x[torch.arange(n), ids.argmax(dim=-1)] @ sd["text_projection"]


def _save_open_clip(sd: dict[str, torch.Tensor], path) -> None:
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)


@pytest.mark.parametrize("cope", [False, True])
def test_released_tulip_checkpoint_converts_tensor_by_tensor(tmp_path, cope):
    sd = _fake_tulip_checkpoint(cope=cope)
    _save_open_clip(sd, tmp_path / "tulip.pt")
    checkpoint = read_checkpoint(tmp_path / "tulip.pt")
    assert (checkpoint.family, checkpoint.format) == ("tulip", "tulip-open_clip")
    text = checkpoint.config["text_config"]
    assert text["rope_theta"] == 10000.0 and text["position_encoding"] == ("cope" if cope else "rope")
    out = checkpoint.state_dict

    expected = {
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.final_layer_norm.weight": sd["ln_final.weight"],
        "text_model.final_layer_norm.bias": sd["ln_final.bias"],
        "text_projection.weight": sd["text_projection"].T,
        "visual_projection.weight": sd["visual.proj"].T,
        "logit_scale": sd["logit_scale"],
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": sd["visual.ln_pre.weight"],
        "vision_model.post_layernorm.bias": sd["visual.ln_post.bias"],
    }
    assert text["num_attention_heads"] == 2 and text["hidden_act"] == "gelu"
    assert checkpoint.config["vision_config"]["hidden_act"] == "quick_gelu"
    for tower, src in (("text_model", "transformer.resblocks."), ("vision_model", "visual.transformer.resblocks.")):
        for i in range(2):
            dst, b = f"{tower}.encoder.layers.{i}.", f"{src}{i}."
            q, k, v = sd[b + "attn.in_proj_weight"].chunk(3)
            qb, kb, vb = sd[b + "attn.in_proj_bias"].chunk(3)
            if tower == "text_model" and not cope:  # per head: rows 0, 2, 4, ... then 1, 3, 5, ...
                q, k, qb, kb = (t.reshape(2, 32, 2, -1).transpose(1, 2).reshape(t.shape) for t in (q, k, qb, kb))
            expected.update({
                dst + "self_attn.q_proj.weight": q, dst + "self_attn.k_proj.weight": k,
                dst + "self_attn.v_proj.weight": v, dst + "self_attn.q_proj.bias": qb,
                dst + "self_attn.k_proj.bias": kb, dst + "self_attn.v_proj.bias": vb,
                dst + "self_attn.out_proj.weight": sd[b + "attn.out_proj.weight"],
                dst + "self_attn.out_proj.bias": sd[b + "attn.out_proj.bias"],
                dst + "layer_norm1.weight": sd[b + "ln_1.weight"], dst + "layer_norm1.bias": sd[b + "ln_1.bias"],
                dst + "layer_norm2.weight": sd[b + "ln_2.weight"], dst + "layer_norm2.bias": sd[b + "ln_2.bias"],
                dst + "mlp.fc1.weight": sd[b + "mlp.c_fc.weight"], dst + "mlp.fc1.bias": sd[b + "mlp.c_fc.bias"],
                dst + "mlp.fc2.weight": sd[b + "mlp.c_proj.weight"], dst + "mlp.fc2.bias": sd[b + "mlp.c_proj.bias"],
            })  # fmt: skip
            if cope and tower == "text_model":
                expected.update({
                    dst + "self_attn.q_norm.weight": sd[b + "attn.q_ln.weight"],
                    dst + "self_attn.q_norm.bias": sd[b + "attn.q_ln.bias"],
                    dst + "self_attn.k_norm.weight": sd[b + "attn.k_ln.weight"],
                    dst + "self_attn.k_norm.bias": sd[b + "attn.k_ln.bias"],
                    dst + "self_attn.cope_positions": sd[b + "attn.cope.pos_emb"],
                })  # fmt: skip
    for name, tensor in expected.items():
        assert torch.equal(out[name], tensor), name
    assert not any("position_embedding" in name for name in out if name.startswith("text_model"))

    model, _ = longclip.load(tmp_path / "tulip.pt", dtype="float32")
    assert isinstance(model, TulipModel) and model.context_length == 248
    assert set(model.state_dict()) == set(out)
    assert torch.isfinite(model.embed_texts(["a long caption. " * 40])).all()


@pytest.mark.parametrize("cope", [False, True])
def test_released_checkpoint_gives_tulips_own_text_features(tmp_path, cope):
    """Loaded through longclip.load, a TULIP file embeds texts as TULIP's code does (interleaved rotary pairs; CoPE
    with TULIP's scaling)."""
    sd = _fake_tulip_checkpoint(cope=cope)
    _save_open_clip(sd, tmp_path / "tulip.pt")
    model, _ = longclip.load(tmp_path / "tulip.pt", dtype="float32")
    texts = ["a red square above a blue circle.", _long_text(150), "green"]
    ids = model.tokenizer.batch(texts).input_ids
    expected = _tulip_text_reference(sd, ids, cope=cope).float()
    with torch.no_grad():
        ours = model.encode_text(ids)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    # Not vacuous: CoPE with the paper's scaling, or rotary without the q/k reordering, gives other features.
    layer = model.text_model.encoder.layers[0].self_attn
    if cope:
        for block in model.text_model.encoder.layers:
            block.self_attn.score_scale, block.self_attn.table_scale = 64**-0.5, 1.0
        with torch.no_grad():
            assert not torch.allclose(model.encode_text(ids), expected, atol=1e-3)
        return
    with torch.no_grad():
        for proj in (layer.q_proj, layer.k_proj):
            b = "transformer.resblocks.0.attn.in_proj_"
            index = 0 if proj is layer.q_proj else 1
            proj.weight.copy_(sd[b + "weight"].chunk(3)[index])
            proj.bias.copy_(sd[b + "bias"].chunk(3)[index])
        assert not torch.allclose(model.encode_text(ids), expected, atol=1e-3)


def _with_clip_table(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A TULIP stage-2 file: the open_clip CLIP it was built from keeps its unused 77-row text position table."""
    width = sd["token_embedding.weight"].shape[1]
    return {**sd, "positional_embedding": 0.01 * torch.randn(77, width, generator=torch.Generator().manual_seed(1))}


def test_a_stage_two_file_reads_as_clip_unless_the_tulip_layout_is_named(tmp_path, caplog):
    sd = _fake_tulip_checkpoint()
    _save_open_clip(_with_clip_table(sd), tmp_path / "stage2.pt")
    # By its key names it is an OpenAI CLIP: that is what detection gives.
    checkpoint = read_checkpoint(tmp_path / "stage2.pt")
    assert (checkpoint.family, checkpoint.format) == ("clip", "openai")
    assert longclip.load(tmp_path / "stage2.pt", dtype="float32")[0].context_length == 77

    with caplog.at_level("INFO", logger="longclip"):
        checkpoint = read_checkpoint(tmp_path / "stage2.pt", layout="tulip-open_clip")
    assert (checkpoint.family, checkpoint.format) == ("tulip", "tulip-open_clip")
    assert not any("position_embedding" in name for name in checkpoint.state_dict if name.startswith("text_model"))
    assert "dropped the text position table positional_embedding (77, 128)" in caplog.text
    assert "its keys alone suggest openai" in caplog.text

    model, _ = longclip.load(tmp_path / "stage2.pt", dtype="float32", layout="tulip-open_clip")
    assert isinstance(model, TulipModel) and model.context_length == 248
    ids = model.tokenizer.batch(["a red square above a blue circle.", _long_text(120)]).input_ids
    with torch.no_grad():
        torch.testing.assert_close(
            model.encode_text(ids), _tulip_text_reference(sd, ids).float(), atol=1e-5, rtol=1e-5
        )


def test_a_cope_file_is_tulips_with_or_without_the_clip_table(tmp_path):
    sd = _fake_tulip_checkpoint(cope=True)
    _save_open_clip(_with_clip_table(sd), tmp_path / "stage2.pt")
    checkpoint = read_checkpoint(tmp_path / "stage2.pt")
    assert (checkpoint.family, checkpoint.format) == ("tulip", "tulip-open_clip")
    assert checkpoint.config["text_config"]["position_encoding"] == "cope"
    model, _ = longclip.load(tmp_path / "stage2.pt", dtype="float32")
    ids = model.tokenizer.batch(["a red square above a blue circle."]).input_ids
    expected = _tulip_text_reference(sd, ids, cope=True).float()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(ids), expected, atol=1e-5, rtol=1e-5)


def test_an_unknown_layout_name_lists_the_registered_ones(tmp_path):
    _save_open_clip(_fake_tulip_checkpoint(), tmp_path / "tulip.pt")
    for read in (read_checkpoint, longclip.load):
        with pytest.raises(
            ValueError, match=r"unknown checkpoint layout 'tulip'; registered layouts: .*tulip-open_clip"
        ):
            read(tmp_path / "tulip.pt", layout="tulip")
    model, _ = longclip.load(tmp_path / "tulip.pt", dtype="float32")
    model.save_pretrained(tmp_path / "dir")
    with pytest.raises(ValueError, match="is a transformers directory.*applies to a single checkpoint file"):
        read_checkpoint(tmp_path / "dir", layout="tulip-open_clip")
    # A named layout's converter still checks the tensors: a Long-CLIP's second table is not TULIP's.
    sd = _with_clip_table(_fake_tulip_checkpoint())
    _save_open_clip({**sd, "positional_embedding_res": sd["positional_embedding"]}, tmp_path / "longclip.pt")
    with pytest.raises(CheckpointError, match="positional_embedding_res"):
        read_checkpoint(tmp_path / "longclip.pt", layout="tulip-open_clip")


def test_a_misshapen_released_tensor_is_named(tmp_path):
    sd = _fake_tulip_checkpoint(cope=True)
    sd["transformer.resblocks.1.attn.cope.pos_emb"] = torch.zeros(1, 32, 32)
    _save_open_clip(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"transformer\.resblocks\.1\.attn\.cope\.pos_emb"):
        read_checkpoint(tmp_path / "bad.pt")
    sd = _fake_tulip_checkpoint()
    sd["transformer.resblocks.0.mlp.c_fc.bias"] = torch.zeros(7)
    _save_open_clip(sd, tmp_path / "bad2.pt")
    with pytest.raises(CheckpointError, match=r"transformer\.resblocks\.0\.mlp\.c_fc\.bias"):
        read_checkpoint(tmp_path / "bad2.pt")


# --- the CLI --------------------------------------------------------------------------------------------------------


def test_cli_info_and_convert_read_a_released_tulip_checkpoint(tmp_path, capsys):
    from longclip.cli import main

    _save_open_clip(_fake_tulip_checkpoint(cope=True), tmp_path / "tulip.pt")
    assert main(["info", str(tmp_path / "tulip.pt"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["family"], info["format"], info["context_length"]) == ("tulip", "tulip-open_clip", 248)
    assert info["text"]["position_encoding"] == "cope" and info["text"]["cope_positions"] == 32

    assert main(["-q", "convert", str(tmp_path / "tulip.pt"), str(tmp_path / "dir")]) == 0
    direct, _ = longclip.load(tmp_path / "tulip.pt", dtype="float32")
    converted, _ = longclip.load(tmp_path / "dir", dtype="float32")
    for name, tensor in direct.state_dict().items():
        assert torch.equal(converted.state_dict()[name], tensor), name
    assert main(["convert", str(tmp_path / "tulip.pt"), str(tmp_path / "x.pt"), "--to", "longclip-pt"]) != 0
    assert "CLIP's layout only" in capsys.readouterr().err


def test_cli_layout_flag_reads_a_stage_two_file_as_tulip(tmp_path, capsys):
    from longclip.cli import main

    _save_open_clip(_with_clip_table(_fake_tulip_checkpoint()), tmp_path / "stage2.pt")
    assert main(["info", str(tmp_path / "stage2.pt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "openai"
    assert main(["info", str(tmp_path / "stage2.pt"), "--layout", "tulip-open_clip", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["family"], info["format"], info["context_length"]) == ("tulip", "tulip-open_clip", 248)

    out = tmp_path / "feats.npy"
    argv = ["-q", "embed", "--model", str(tmp_path / "stage2.pt"), "--texts", "a red square.", "-o", str(out)]
    assert main([*argv, "--layout", "tulip-open_clip", "--device", "cpu"]) == 0
    model, _ = longclip.load(tmp_path / "stage2.pt", dtype="float32", layout="tulip-open_clip")
    expected = model.embed_texts(["a red square."]).numpy()
    assert numpy.allclose(numpy.load(out), expected, atol=1e-5)
    assert main([*argv, "--layout", "tulip-rope"]) != 0
    assert "unknown checkpoint layout 'tulip-rope'; registered layouts:" in capsys.readouterr().err
    assert (
        main(["-q", "convert", str(tmp_path / "stage2.pt"), str(tmp_path / "dir"), "--layout", "tulip-open_clip"]) == 0
    )
    assert isinstance(longclip.load(tmp_path / "dir", dtype="float32")[0], TulipModel)


def test_clip_score_takes_a_tulip_and_its_long_texts():
    from PIL import Image

    from longclip.metrics import clip_score

    model = _tulip(context_length=512)
    images = [Image.new("RGB", (40, 40), (200, 0, 0)), Image.new("RGB", (40, 40), (0, 0, 200))]
    texts = [_long_text(400), "a blue picture."]
    scores = clip_score(images, texts, model, long_texts="error")
    expected = 100 * (model.embed_images(images) * model.embed_texts(texts, long_texts="error")).sum(-1).clamp(min=0)
    torch.testing.assert_close(scores, expected)
