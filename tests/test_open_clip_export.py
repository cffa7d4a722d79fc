"""open_clip export: the config and weight files checked against open_clip's rules, an independent OpenAI-layout
CLIP, and (where it imports) open_clip itself."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from reference_clip import ReferenceCLIP
from safetensors.torch import load_file
from search_helpers import save_tiny_model

import longclip
from longclip.integrations.open_clip_export import CONFIG_FILE, WEIGHTS_FILE, export_open_clip

REFERENCE = dict(width=128, layers=2, vision_width=128, vision_layers=2, patch=8, image=32, embed=64, context=248)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An independent OpenAI-layout CLIP with a 248-token context, loaded into longclip and exported."""
    base = tmp_path_factory.mktemp("open_clip")
    torch.manual_seed(0)
    ref = ReferenceCLIP(
        width=128, layers=2, vision_width=128, vision_layers=2, patch=8, image=32, embed=64, context=248
    )
    torch.save(ref.state_dict(), base / "ref.pt")
    model = longclip.load(base / "ref.pt")[0]
    export_open_clip(model, base / "export")
    return ref.eval(), model, base / "export"


def expected_open_clip_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Key -> shape of open_clip's built-in ``CLIP`` for a ``model_cfg``, from the rules in open_clip's model.py
    and transformer.py (VisionTransformer, TextTransformer, ResidualAttentionBlock), written out here."""
    v, t, embed = cfg["vision_cfg"], cfg["text_cfg"], cfg["embed_dim"]
    shapes: dict[str, tuple[int, ...]] = {}

    def blocks(prefix: str, width: int, layers: int, mlp_ratio: float) -> None:
        hidden = int(width * mlp_ratio)
        for i in range(layers):
            p = f"{prefix}transformer.resblocks.{i}."
            shapes.update(
                {
                    p + "ln_1.weight": (width,),
                    p + "ln_1.bias": (width,),
                    p + "attn.in_proj_weight": (3 * width, width),
                    p + "attn.in_proj_bias": (3 * width,),
                    p + "attn.out_proj.weight": (width, width),
                    p + "attn.out_proj.bias": (width,),
                    p + "ln_2.weight": (width,),
                    p + "ln_2.bias": (width,),
                    p + "mlp.c_fc.weight": (hidden, width),
                    p + "mlp.c_fc.bias": (hidden,),
                    p + "mlp.c_proj.weight": (width, hidden),
                    p + "mlp.c_proj.bias": (width,),
                }
            )

    vw, grid = v["width"], v["image_size"] // v["patch_size"]
    shapes.update(
        {
            "visual.class_embedding": (vw,),
            "visual.positional_embedding": (grid * grid + 1, vw),
            "visual.conv1.weight": (vw, 3, v["patch_size"], v["patch_size"]),
            "visual.ln_pre.weight": (vw,),
            "visual.ln_pre.bias": (vw,),
            "visual.ln_post.weight": (vw,),
            "visual.ln_post.bias": (vw,),
            "visual.proj": (vw, embed),
        }
    )
    blocks("visual.", vw, v["layers"], v.get("mlp_ratio", 4.0))
    tw = t["width"]
    shapes.update(
        {
            "token_embedding.weight": (t["vocab_size"], tw),
            "positional_embedding": (t["context_length"], tw),
            "ln_final.weight": (tw,),
            "ln_final.bias": (tw,),
            "text_projection": (tw, embed),
            "logit_scale": (),
        }
    )
    blocks("", tw, t["layers"], t.get("mlp_ratio", 4.0))
    return shapes


def test_config_follows_open_clip_fields(reference):
    _, model, directory = reference
    config = json.loads((directory / CONFIG_FILE).read_text())
    cfg = config["model_cfg"]
    assert cfg["text_cfg"] == {
        "context_length": 248,
        "vocab_size": 49408,
        "width": 128,
        "heads": 2,
        "layers": 2,
        "mlp_ratio": 2.0,
    }
    assert cfg["vision_cfg"] == {
        "image_size": 32,
        "layers": 2,
        "width": 128,
        "head_width": 64,
        "mlp_ratio": 2.0,
        "patch_size": 8,
    }
    assert cfg["embed_dim"] == 64 and cfg["quick_gelu"] is True
    pre = config["preprocess_cfg"]
    assert pre["size"] == 32 and pre["interpolation"] == "bicubic" and pre["resize_mode"] == "shortest"
    np.testing.assert_allclose(pre["mean"], [0.48145466, 0.4578275, 0.40821073])
    np.testing.assert_allclose(pre["std"], [0.26862954, 0.26130258, 0.27577711])


def test_weights_have_open_clip_key_names_and_shapes(reference):
    _, _, directory = reference
    config = json.loads((directory / CONFIG_FILE).read_text())["model_cfg"]
    weights = load_file(directory / WEIGHTS_FILE)
    assert {k: tuple(v.shape) for k, v in weights.items()} == expected_open_clip_shapes(config)


@torch.no_grad()
def test_exported_weights_compute_the_same_features_as_the_source(reference):
    ref, model, directory = reference
    fresh = ReferenceCLIP(
        width=128, layers=2, vision_width=128, vision_layers=2, patch=8, image=32, embed=64, context=248
    )
    fresh.load_state_dict(load_file(directory / WEIGHTS_FILE), strict=True)
    fresh.eval()
    tokens = longclip.tokenize(["a cat", "a very long caption about a beach, " * 25], truncate=True)
    pixels = torch.randn(2, 3, 32, 32)
    np.testing.assert_allclose(fresh.encode_text(tokens), ref.encode_text(tokens), atol=1e-5)
    np.testing.assert_allclose(fresh.encode_image(pixels), ref.encode_image(pixels), atol=1e-5)
    np.testing.assert_allclose(fresh.encode_text(tokens), model.encode_text(tokens), atol=1e-4)


def test_a_model_open_clip_cannot_hold_is_refused(tmp_path):
    class NotCLIP(torch.nn.Module):
        family = "llm2clip"

    with pytest.raises(ValueError, match="llm2clip has another text encoder"):
        export_open_clip(NotCLIP(), tmp_path / "x")
    model = longclip.load(save_tiny_model(tmp_path / "m"))[0]
    model.clip.config.text_config.hidden_act = "relu"
    with pytest.raises(ValueError, match="'relu'"):
        export_open_clip(model, tmp_path / "y")
    assert not (tmp_path / "y").exists()


@torch.no_grad()
def test_open_clip_loads_the_directory_with_the_same_features(reference):
    try:
        import open_clip
    except Exception as e:  # open_clip needs torchvision, which may be absent or broken here
        pytest.skip(f"open_clip cannot be imported here ({type(e).__name__}: {e})")
    _, model, directory = reference
    oc_model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{directory}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{directory}")
    texts = ["a cat", "a very long caption about a beach, " * 25]
    tokens = tokenizer(texts)
    assert tokens.shape[1] == 248
    np.testing.assert_allclose(
        oc_model.eval().encode_text(tokens), model.embed_texts(texts, normalize=False), atol=1e-4
    )
