"""Every file a save or an export writes gets the permissions a plain ``open`` gives (what the umask allows).

safetensors' ``save_file`` alone creates its file 0600, so a model folder would hold a private weights file beside
world-readable configs; each writer below goes through ``longclip.atomic`` instead.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from conftest import tiny_clip
from llm2clip_fixtures import save_language_model
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from longclip.models import LongCLIPModel, tulip_from_clip


@pytest.fixture
def ordinary_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def modes(*roots: Path) -> dict[str, int]:
    files = [p for root in roots for p in ([root] if root.is_file() else root.rglob("*")) if p.is_file()]
    assert files
    return {str(p): stat.S_IMODE(p.stat().st_mode) for p in files}


def test_tulip_save_pretrained(tmp_path, ordinary_mode):
    tulip_from_clip(LongCLIPModel(tiny_clip(context=77))).save_pretrained(tmp_path / "tulip")
    assert set(modes(tmp_path / "tulip").values()) == {ordinary_mode}, modes(tmp_path / "tulip")


def test_llm2clip_save_pretrained(tmp_path, ordinary_mode):
    from longclip.models.language import load_language_model
    from longclip.models.llm2clip import AdapterConfig, LLM2CLIPModel, TextAdapter

    language, tokenizer = load_language_model(save_language_model(tmp_path / "lm"), context_length=40)
    torch.manual_seed(0)
    vision = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=1,
            image_size=32,
            patch_size=8,
            projection_dim=16,
        )  # fmt: skip
    )
    LLM2CLIPModel(vision, TextAdapter(AdapterConfig(32, 16)), language, tokenizer).save_pretrained(tmp_path / "out")
    assert set(modes(tmp_path / "out").values()) == {ordinary_mode}, modes(tmp_path / "out")


def test_open_clip_export(tmp_path, ordinary_mode):
    from longclip.integrations.open_clip_export import export_open_clip

    export_open_clip(LongCLIPModel(tiny_clip(width=64, heads=1)), tmp_path / "export")
    assert set(modes(tmp_path / "export").values()) == {ordinary_mode}, modes(tmp_path / "export")


def test_diffusion_text_encoder_export(tmp_path, ordinary_mode):
    pytest.importorskip("diffusers")
    from longclip.integrations.diffusion import export_text_encoder

    path = export_text_encoder(LongCLIPModel(tiny_clip()), tmp_path / "te.safetensors")
    assert modes(path) == {str(path): ordinary_mode}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["te.safetensors"]  # no temporary left behind
