"""dtype="auto": bf16 where the hardware computes it natively (simulated both ways here), float32 otherwise."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_clip

import longclip
from longclip import precision
from longclip.models import LongCLIPModel

TEXTS = ["a cat", "a red car parked on the street beside a green door and two bicycles", "two dogs"]


@pytest.fixture
def unpinned(monkeypatch):
    """Let auto choose (the suite pins it to float32 through LONGCLIP_AUTO_DTYPE)."""
    monkeypatch.delenv("LONGCLIP_AUTO_DTYPE", raising=False)
    precision.cpu_bf16_instructions.cache_clear()
    yield monkeypatch
    precision.cpu_bf16_instructions.cache_clear()


def _simulate_cpu(monkeypatch, avx512_bf16: bool, amx: bool, cpuinfo_flags: set[str] = frozenset()):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(precision, "_cpuinfo_flags", lambda: set(cpuinfo_flags))
    precision.cpu_bf16_instructions.cache_clear()


def test_auto_is_float32_on_a_cpu_without_native_bf16(unpinned):
    _simulate_cpu(unpinned, avx512_bf16=False, amx=False)
    choice = precision.choose_dtype("cpu")
    assert choice.dtype == torch.float32
    assert "no native bfloat16" in choice.reason


@pytest.mark.parametrize("avx512_bf16, amx, named", [(True, False, "avx512_bf16"), (False, True, "amx_bf16")])
def test_auto_is_bf16_on_a_cpu_with_native_bf16(unpinned, avx512_bf16, amx, named):
    _simulate_cpu(unpinned, avx512_bf16=avx512_bf16, amx=amx)
    choice = precision.choose_dtype("cpu")
    assert choice.dtype == torch.bfloat16
    assert named in choice.reason


def test_cpuinfo_is_read_where_torch_cannot_tell(unpinned):
    unpinned.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    unpinned.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    unpinned.setattr(precision, "_cpuinfo_flags", lambda: {"avx2", "avx512_bf16"})
    precision.cpu_bf16_instructions.cache_clear()
    assert precision.choose_dtype("cpu").dtype == torch.bfloat16


def test_cuda_choice_follows_the_device(unpinned):
    unpinned.setattr(torch.cuda, "is_available", lambda: True)
    unpinned.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    unpinned.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.choose_dtype("cuda").dtype == torch.bfloat16
    unpinned.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision.choose_dtype("cuda").dtype == torch.float16


def test_environment_override_and_bad_names(unpinned):
    unpinned.setenv("LONGCLIP_AUTO_DTYPE", "bfloat16")
    assert precision.resolve_dtype("auto", "cpu") == torch.bfloat16
    unpinned.setenv("LONGCLIP_AUTO_DTYPE", "int8")
    with pytest.raises(ValueError, match="LONGCLIP_AUTO_DTYPE must be float32, float16 or bfloat16, got 'int8'"):
        precision.resolve_dtype("auto", "cpu")
    with pytest.raises(ValueError, match="dtype must be one of auto, float32, float16, bfloat16, got 'half'"):
        precision.resolve_dtype("half", "cpu")
    assert precision.resolve_dtype(torch.float16, "cpu") == torch.float16


def test_load_auto_gives_bf16_features_within_cosine_0999(unpinned, tmp_path):
    LongCLIPModel(tiny_clip()).save_pretrained(tmp_path)
    _simulate_cpu(unpinned, avx512_bf16=True, amx=False)
    auto, _ = longclip.load(tmp_path)  # dtype="auto" is the default
    assert auto.dtype == torch.bfloat16
    full, _ = longclip.load(tmp_path, dtype="float32")
    cosine = (auto.embed_texts(TEXTS) * full.embed_texts(TEXTS)).sum(-1)
    assert (cosine > 0.999).all(), cosine


def test_bf16_training_on_a_cpu_without_native_bf16_is_warned_about(unpinned):
    _simulate_cpu(unpinned, avx512_bf16=False, amx=False)
    assert "emulated" in precision.emulated_autocast_warning("bf16", "cpu")
    assert precision.emulated_autocast_warning("fp32", "cpu") is None
    assert precision.emulated_autocast_warning("bf16", "cuda") is None
    _simulate_cpu(unpinned, avx512_bf16=True, amx=False)
    assert precision.emulated_autocast_warning("bf16", "cpu") is None
