"""Loading every checkpoint format, checked against an independent forward pass; safety; bad input."""

import pickle
import zipfile

import pytest
import torch
from conftest import tiny_clip
from huggingface_hub import constants as hub_constants
from reference_clip import ReferenceCLIP
from safetensors.torch import load_file, save_file

import longclip
from longclip.checkpoints import (
    CheckpointError,
    HubUnavailableError,
    detect_format,
    load_clip,
    read_state_dict,
    save_longclip_pt,
)
from longclip.models import LongCLIPModel

TEXTS = [
    "a cat",
    "A man is crossing the street with a red car parked nearby.",
    "the old wooden boat rests on the pebbled shore under a grey sky, " * 12,  # ~170 tokens
]


def _reference(long: bool, seed: int = 0, **kwargs) -> ReferenceCLIP:
    torch.manual_seed(seed)
    return ReferenceCLIP(context=248 if long else 77, long=long, **kwargs).eval()


def _assert_same_features(model: LongCLIPModel, reference: ReferenceCLIP, texts=TEXTS) -> None:
    tokens = longclip.tokenize(texts, context_length=model.context_length, truncate=True)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), reference.encode_text(tokens), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.encode_image(pixels), reference.encode_image(pixels), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.logit_scale, reference.logit_scale)


def test_released_longclip_pt_matches_the_original_forward(tmp_path):
    reference = _reference(long=True)
    torch.save(reference.state_dict(), tmp_path / "longclip-B.pt")
    model, preprocess = longclip.load(tmp_path / "longclip-B.pt")
    assert model.context_length == 248
    assert model.config.keep_positions == 20
    assert preprocess.image_size == 32
    assert model.clip.config._attn_implementation == "sdpa"  # torch's scaled_dot_product_attention
    _assert_same_features(model, reference)
    assert load_clip(tmp_path / "longclip-B.pt").format == "longclip-pt"


def test_masks_stored_in_the_checkpoint_decide_the_kept_rows(tmp_path):
    reference = _reference(long=True, keep=12, masks_in_state_dict=True)
    torch.save(reference.state_dict(), tmp_path / "custom.pt")
    model, _ = longclip.load(tmp_path / "custom.pt")
    assert model.config.keep_positions == 12
    _assert_same_features(model, reference)


def test_openai_state_dict_pt(tmp_path):
    reference = _reference(long=False)
    torch.save(reference.state_dict(), tmp_path / "ViT-tiny.pt")
    model, _ = longclip.load(tmp_path / "ViT-tiny.pt")
    assert model.context_length == 77
    _assert_same_features(model, reference, texts=TEXTS[:2])


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_openai_torchscript_archive_is_read_without_torchscript(tmp_path, monkeypatch):
    reference = _reference(long=False)
    example = (torch.randn(1, 3, 32, 32), longclip.tokenize(["a cat"], context_length=77))
    torch.jit.trace(reference, example, check_trace=False).save(str(tmp_path / "ViT-tiny-jit.pt"))

    def refuse(*args, **kwargs):
        raise AssertionError("TorchScript must not be loaded: it can run code")

    monkeypatch.setattr(torch.jit, "load", refuse)
    loaded = load_clip(tmp_path / "ViT-tiny-jit.pt")
    assert loaded.format == "openai"
    _assert_same_features(LongCLIPModel.from_checkpoint(loaded), reference, texts=TEXTS[:2])


def test_safetensors_file_in_openai_layout(tmp_path):
    reference = _reference(long=True)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / "longclip.safetensors")
    model, _ = longclip.load(tmp_path / "longclip.safetensors")
    _assert_same_features(model, reference)


class _Payload:
    """Pickles into a call that writes a marker file, like a malicious checkpoint would run a command."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"weight": torch.zeros(2), "evil": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused, so no code in it ran"):
        longclip.load(tmp_path / "evil.pt")
    assert not marker.exists()


def test_malicious_torchscript_archive_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    with zipfile.ZipFile(tmp_path / "evil-jit.pt", "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(_Payload(marker), protocol=2))
        archive.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
    with pytest.raises(CheckpointError, match=r"refusing to load global (__builtin__|builtins)\.exec"):
        read_state_dict(tmp_path / "evil-jit.pt")
    assert not marker.exists()


def test_unknown_layout_lists_the_keys_seen(tmp_path):
    save_file({"encoder.weight": torch.zeros(2), "decoder.bias": torch.zeros(3)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match=r"unknown checkpoint layout.*decoder\.bias, encoder\.weight"):
        load_clip(tmp_path / "other.safetensors")


def test_shape_mismatch_names_tensor_expected_and_found(tmp_path):
    state = _reference(long=True).state_dict()
    state["transformer.resblocks.1.mlp.c_fc.bias"] = torch.zeros(7)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(
        CheckpointError,
        match=r"bad\.pt: tensor transformer\.resblocks\.1\.mlp\.c_fc\.bias has shape \(7,\), expected \(256,\)",
    ):
        load_clip(tmp_path / "bad.pt")


def test_missing_and_extra_tensors_are_named(tmp_path):
    state = _reference(long=False).state_dict()
    del state["visual.ln_post.bias"]
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="lacks tensor visual.ln_post.bias"):
        load_clip(tmp_path / "missing.pt")
    state = _reference(long=False).state_dict()
    state["adapter.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match="unexpected tensors.*adapter.weight"):
        load_clip(tmp_path / "extra.pt")


def test_resnet_clip_is_refused_clearly():
    state = {"token_embedding.weight": 0, "positional_embedding": 0, "text_projection": 0, "visual.layer1.0.w": 0}
    with pytest.raises(CheckpointError, match="ResNet image tower"):
        detect_format(state)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_files_say_so(tmp_path, suffix):
    state = {k: v.contiguous() for k, v in _reference(long=False).state_dict().items()}
    whole = tmp_path / f"whole{suffix}"
    torch.save(state, whole) if suffix == ".pt" else save_file(state, whole)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.(pt|safetensors).*truncated"):
        load_clip(cut)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_clip(tmp_path / "empty.pt")
    with pytest.raises(FileNotFoundError, match="no such file or directory, and not a Hugging Face hub id"):
        load_clip(tmp_path / "nothing" / "here.pt")


def test_transformers_directory_and_incomplete_one(tmp_path):
    clip = tiny_clip()
    LongCLIPModel(clip).save_pretrained(tmp_path / "ok")
    loaded = load_clip(tmp_path / "ok")
    assert loaded.format == "hf" and loaded.directory == tmp_path / "ok"
    tokens = longclip.tokenize(TEXTS, truncate=True)
    with torch.no_grad():
        expected = clip.get_text_features(input_ids=tokens).pooler_output
        torch.testing.assert_close(loaded.model.get_text_features(input_ids=tokens).pooler_output, expected)

    weights = load_file(tmp_path / "ok" / "model.safetensors")
    del weights["visual_projection.weight"]
    save_file(weights, tmp_path / "ok" / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing keys: visual_projection.weight"):
        load_clip(tmp_path / "ok")


def test_released_format_round_trip_loads_into_the_original_model(tmp_path):
    reference = _reference(long=True)
    torch.save(reference.state_dict(), tmp_path / "in.pt")
    model, _ = longclip.load(tmp_path / "in.pt")
    save_longclip_pt(model.clip, tmp_path / "out.pt")
    written = torch.load(tmp_path / "out.pt", weights_only=True)
    assert detect_format(written) == "longclip-pt"
    # The original loader builds the model and calls load_state_dict strictly: the keys must be exactly these.
    fresh = ReferenceCLIP(context=248, long=True).eval()
    fresh.load_state_dict(written, strict=True)
    _assert_same_features(model, fresh)


def test_released_format_refuses_heads_it_cannot_record(tmp_path):
    with pytest.raises(ValueError, match="cannot record attention heads"):
        save_longclip_pt(tiny_clip(width=32, heads=4), tmp_path / "x.pt")


def _fake_hub_cache(root, repo_id: str, files: dict):
    """Lay files out as huggingface_hub's cache does: refs/main names a snapshot folder holding the files."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, write in files.items():
        write(snapshot / name)
    return snapshot


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return cache


def test_hub_id_loads_from_the_cache_offline(offline_hub):
    reference = _reference(long=True)
    _fake_hub_cache(
        offline_hub, "BeichenZhang/LongCLIP-B", {"longclip-B.pt": lambda p: torch.save(reference.state_dict(), p)}
    )
    model, _ = longclip.load("BeichenZhang/LongCLIP-B")
    _assert_same_features(model, reference)


def test_hub_id_of_a_transformers_repo_loads_from_the_cache_offline(offline_hub, tmp_path):
    clip = tiny_clip(context=77)
    LongCLIPModel(clip).save_pretrained(tmp_path / "saved")
    files = {p.name: (lambda dst, src=p: dst.write_bytes(src.read_bytes())) for p in (tmp_path / "saved").iterdir()}
    _fake_hub_cache(offline_hub, "openai/clip-vit-base-patch16", files)
    model, _ = longclip.load_from_clip("openai/clip-vit-base-patch16")
    assert model.context_length == 248


def test_uncached_hub_id_offline_says_what_to_download(offline_hub):
    with pytest.raises(HubUnavailableError) as error:
        longclip.load("BeichenZhang/LongCLIP-L")
    message = str(error.value)
    assert "BeichenZhang/LongCLIP-L is not in the local Hugging Face cache" in message
    assert "hf download BeichenZhang/LongCLIP-L" in message and "longclip-L.pt" in message
    assert str(offline_hub) in message


def test_missing_local_file_is_not_mistaken_for_a_hub_id(offline_hub):
    with pytest.raises(FileNotFoundError, match="checkpoints/longclip-B.pt: no such file or directory") as error:
        load_clip("checkpoints/longclip-B.pt")
    assert not isinstance(error.value, HubUnavailableError)


def test_plain_clip_is_written_in_openai_layout(tmp_path):
    reference = _reference(long=False)
    torch.save(reference.state_dict(), tmp_path / "clip.pt")
    save_longclip_pt(load_clip(tmp_path / "clip.pt").model, tmp_path / "again.pt")
    written = torch.load(tmp_path / "again.pt", weights_only=True)
    assert detect_format(written) == "openai"
    ReferenceCLIP(context=77).load_state_dict(written, strict=True)


def test_stored_dtypes_are_reported_while_the_model_is_float32(tmp_path):
    torch.save({k: v.half() for k, v in _reference(long=True).state_dict().items()}, tmp_path / "half.pt")
    loaded = load_clip(tmp_path / "half.pt")
    assert loaded.stored_dtypes == ("float16",) and loaded.model.dtype == torch.float32
    LongCLIPModel(tiny_clip().to(torch.bfloat16)).save_pretrained(tmp_path / "bf16")
    loaded = load_clip(tmp_path / "bf16")
    assert loaded.stored_dtypes == ("bfloat16",) and loaded.model.dtype == torch.float32
