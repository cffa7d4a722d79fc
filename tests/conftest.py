"""Shared fixtures: tiny models built in code, real photos from scikit-image, the shared reference data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel

# dtype="auto" would pick bfloat16 on CPUs with native bf16; the parity checks compare with float32 references, so the
# suite (and the subprocesses it starts) pins auto to float32. tests/test_precision.py unsets it where it tests auto.
os.environ["LONGCLIP_AUTO_DTYPE"] = "float32"

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``../shared/reference`` beside the project (values from the released Long-CLIP); skipped where absent."""
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"shared reference data not found at {REFERENCE_DIR} (it lives beside the project checkout)")
    return REFERENCE_DIR


def tiny_clip_config(context: int = 248, width: int = 32, heads: int = 4, image_size: int = 32) -> CLIPConfig:
    """A CLIP small enough for unit tests (the vocabulary stays CLIP's, so real token ids work)."""
    tower = dict(
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=heads,
        hidden_act="quick_gelu",
    )
    text = dict(tower, max_position_embeddings=context, vocab_size=49408, bos_token_id=49406, eos_token_id=49407)
    vision = dict(tower, image_size=image_size, patch_size=8)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


def tiny_clip(context: int = 248, seed: int = 0, **kwargs) -> CLIPModel:
    torch.manual_seed(seed)
    return CLIPModel(tiny_clip_config(context, **kwargs)).eval()


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    """Real photographs shipped with scikit-image."""
    from skimage import data

    return {name: Image.fromarray(np.asarray(getattr(data, name)())) for name in ("astronaut", "chelsea", "coffee")}
