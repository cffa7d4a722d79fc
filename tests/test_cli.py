"""The ``longclip`` command, called through ``main([...])`` on a tiny model built in code and real photographs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel

import longclip
from longclip.cli import main

LONG_LABEL = " ".join(["an astronaut in a white suit stands in front of the flag, holding a helmet"] * 30)
LABELS = ["a photo of an astronaut", "a photo of a cat", "a cup of coffee", LONG_LABEL]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A transformers directory holding a tiny 248-token Long-CLIP (one head per 64 channels, so .pt round-trips)."""
    cfg = CLIPConfig(
        text_config=dict(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=1,
            max_position_embeddings=248,
            vocab_size=49408,
            hidden_act="quick_gelu",
            bos_token_id=49406,
            eos_token_id=49407,
        ),
        vision_config=dict(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=1,
            image_size=32,
            patch_size=8,
            hidden_act="quick_gelu",
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    clip = CLIPModel(cfg).eval()
    folder = tmp_path_factory.mktemp("model") / "tiny"
    longclip.LongCLIPModel(clip).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model(tiny_dir):
    return longclip.load(tiny_dir)[0]


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    """astronaut.png, chelsea.jpg, coffee.png from scikit-image, plus a text file that is not an image."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    for name, ext in (("astronaut", "png"), ("chelsea", "jpg"), ("coffee", "png")):
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.{ext}")
    (folder / "notes.txt").write_text("not an image\n")
    return folder


def photos(photo_dir: Path) -> list[str]:
    return [str(photo_dir / name) for name in ("astronaut.png", "chelsea.jpg", "coffee.png")]


def info_json(capsys, path: Path) -> dict:
    capsys.readouterr()
    assert main(["info", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# --- convert and info --------------------------------------------------------------------------------------------


def test_convert_round_trip_keeps_features(tiny_dir, model, photo_dir, tmp_path, capsys):
    pt_file, back = tmp_path / "tiny.pt", tmp_path / "back"
    assert main(["convert", str(tiny_dir), str(pt_file), "--to", "longclip-pt"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and str(pt_file) in out[0]
    assert main(["convert", str(pt_file), str(back)]) == 0
    assert (back / "config.json").is_file() and (back / "model.safetensors").is_file()

    for path, fmt in ((tiny_dir, "hf"), (pt_file, "longclip-pt"), (back, "hf")):
        info = info_json(capsys, path)
        assert info["format"] == fmt
        assert info["text"]["context_length"] == 248
        assert info["vision"]["image_size"] == 32 and info["vision"]["patch_size"] == 8
        assert info["embed_dim"] == 16
        assert info["parameters"]["total"] == sum(p.numel() for p in model.parameters())
        assert info["stored_dtype"] == "float32"
    assert info_json(capsys, pt_file)["keep_rows"] == 20

    converted, preprocess = longclip.load(back)
    tokens = longclip.tokenize(LABELS, truncate=True)
    pixels = torch.stack([preprocess(p) for p in photos(photo_dir)])
    with torch.no_grad():
        torch.testing.assert_close(converted.encode_text(tokens), model.encode_text(tokens), atol=1e-5, rtol=0)
        torch.testing.assert_close(converted.encode_image(pixels), model.encode_image(pixels), atol=1e-5, rtol=0)
        assert torch.allclose(converted.logit_scale, model.logit_scale)


def test_info_text_output(tiny_dir, capsys):
    assert main(["info", str(tiny_dir)]) == 0
    out = capsys.readouterr().out
    assert "hf (transformers directory)" in out
    assert "context 248 tokens" in out and "patch 8" in out
    assert "stored dtype:" in out and "float32" in out
    assert "dtype auto here:" in out and "float32 (set by LONGCLIP_AUTO_DTYPE=float32)" in out  # the suite pins it


def test_info_says_what_auto_dtype_picks_and_why(tiny_dir, capsys, monkeypatch):
    from longclip import precision

    monkeypatch.delenv("LONGCLIP_AUTO_DTYPE")
    monkeypatch.setattr(precision, "cpu_bf16_instructions", lambda: ("avx512_bf16",))
    assert main(["info", str(tiny_dir), "--json"]) == 0
    auto = json.loads(capsys.readouterr().out)["auto_dtype"]
    assert auto == {"dtype": "bfloat16", "reason": "the CPU computes bfloat16 natively (avx512_bf16)"}


def test_convert_to_half_precision(tiny_dir, tmp_path, capsys):
    target = tmp_path / "half"
    assert main(["convert", str(tiny_dir), str(target), "--dtype", "float16"]) == 0
    assert info_json(capsys, target)["stored_dtype"] == "float16"


def test_convert_refuses_non_empty_destination(tiny_dir, tmp_path, capsys):
    target = tmp_path / "occupied"
    target.mkdir()
    (target / "keep.txt").write_text("precious")
    assert main(["convert", str(tiny_dir), str(target)]) == 1
    err = error_lines(capsys)
    assert len(err) == 1 and err[0].startswith("longclip: error: ") and "--overwrite" in err[0]
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]

    pt_file = tmp_path / "occupied.pt"
    pt_file.write_bytes(b"x")
    assert main(["convert", str(tiny_dir), str(pt_file), "--to", "longclip-pt"]) == 1
    assert pt_file.read_bytes() == b"x"
    capsys.readouterr()

    assert main(["convert", str(tiny_dir), str(target), "--overwrite"]) == 0
    assert (target / "config.json").is_file() and (target / "keep.txt").read_text() == "precious"


# --- classify ----------------------------------------------------------------------------------------------------


def test_classify_json_matches_model(tiny_dir, model, photo_dir, capsys):
    assert max(model.tokenizer.count_tokens(LABELS)) > 248  # the long label does not fit the context
    images = photos(photo_dir)
    argv = ["classify", *images, "--model", str(tiny_dir), "--json"]
    for label in LABELS[:2]:
        argv += ["--label", label]
    labels_file = photo_dir.parent / "labels.txt"
    labels_file.write_text("\n".join(LABELS[2:]) + "\n\n")
    assert main([*argv, "--labels-file", str(labels_file)]) == 0
    result = json.loads(capsys.readouterr().out)

    with torch.no_grad():
        text = model.encode_text(longclip.tokenize(LABELS, truncate=True), normalize=True)
        image = model.encode_image(torch.stack([model.preprocess(p) for p in images]), normalize=True)
        expected = (model.logit_scale.exp() * image @ text.T).softmax(dim=-1)

    assert [entry["image"] for entry in result] == images
    for entry, row in zip(result, expected, strict=True):
        probabilities = {p["label"]: p["probability"] for p in entry["predictions"]}
        assert sorted(probabilities) == sorted(LABELS)  # full labels, the long one included
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert [probabilities[label] for label in LABELS] == pytest.approx(row.tolist(), abs=1e-5)
        ranked = [p["probability"] for p in entry["predictions"]]
        assert ranked == sorted(ranked, reverse=True)


def test_classify_table_output(tiny_dir, photo_dir, capsys):
    image = photos(photo_dir)[0]
    argv = ["classify", image, "--model", str(tiny_dir), "--top", "2"]
    for label in LABELS:
        argv += ["--label", label]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == image and len(lines) == 3
    percentages = [float(line.split("%")[0]) for line in lines[1:]]
    assert percentages == sorted(percentages, reverse=True)
    assert all(len(line) < 90 for line in lines[1:])  # long labels are shortened for display


def test_classify_long_texts_error(tiny_dir, photo_dir, capsys):
    argv = ["classify", photos(photo_dir)[0], "--model", str(tiny_dir), "--label", "a cat", "--label", LONG_LABEL]
    assert main([*argv, "--long-texts", "error"]) == 1
    err = error_lines(capsys)
    assert len(err) == 1 and "context length 248" in err[0]
    assert main([*argv, "--long-texts", "chunk", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["predictions"]) == 2


def test_classify_needs_labels(tiny_dir, photo_dir, capsys):
    assert main(["classify", photos(photo_dir)[0], "--model", str(tiny_dir)]) == 1
    assert "label" in error_lines(capsys)[0]


# --- embed -------------------------------------------------------------------------------------------------------


def test_embed_image_directory(tiny_dir, model, photo_dir, tmp_path, capsys):
    output = tmp_path / "out" / "feats.npy"
    assert main(["embed", "--model", str(tiny_dir), "--images", str(photo_dir), "--output", str(output)]) == 0
    features = np.load(output)
    meta = json.loads(output.with_suffix(".json").read_text())
    expected_items = sorted(photos(photo_dir))  # the .txt file is not an image
    assert features.dtype == np.float32 and features.shape == (3, 16)
    assert meta["items"] == expected_items
    assert meta["kind"] == "images" and meta["count"] == 3 and meta["dim"] == 16 and meta["normalized"] is True
    assert meta["model"] == str(tiny_dir) and meta["skipped"] == []
    np.testing.assert_allclose(features, model.embed_images(expected_items).numpy(), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)


def test_embed_with_compile_compiles_the_image_tower_and_gives_the_same_features(
    tiny_dir, model, photo_dir, tmp_path, monkeypatch
):
    """--compile goes through DualEncoder.compile_towers (backend 'eager' here: the inductor needs minutes)."""
    from longclip.models.base import DualEncoder

    calls = []
    real = DualEncoder.compile_towers

    def eager(self, towers=("vision",), **options):
        calls.append(towers)
        return real(self, towers, backend="eager")

    monkeypatch.setattr(DualEncoder, "compile_towers", eager)
    output = tmp_path / "feats.npy"
    assert main(["embed", "--model", str(tiny_dir), "--images", str(photo_dir), "-o", str(output), "--compile"]) == 0
    assert calls == [("vision",)]
    expected = model.embed_images(sorted(photos(photo_dir))).numpy()
    np.testing.assert_allclose(np.load(output), expected, atol=1e-6)


def test_compile_towers_compiles_in_place_and_names_unknown_towers(tiny_dir):
    model, _ = longclip.load(tiny_dir, dtype="float32")
    pixels = torch.randn(2, 3, 32, 32)
    before = model.encode_image(pixels)
    assert model.compile_towers(("vision",), backend="eager") is model
    assert model.clip.vision_model._compiled_call_impl is not None
    assert model.clip.text_model._compiled_call_impl is None
    torch.testing.assert_close(model.encode_image(pixels), before)
    with pytest.raises(ValueError, match=r"unknown tower\(s\) \['audio'\]; this model has \['text', 'vision'\]"):
        model.compile_towers(("audio",))


def test_embed_output_loads_as_one_unit_and_a_rerun_replaces_both(tiny_dir, tmp_path):
    from longclip.feature_files import load_features

    output = tmp_path / "texts.npy"
    assert main(["-q", "embed", "--model", str(tiny_dir), "--texts", "a cat", "a dog", "--output", str(output)]) == 0
    features, meta = load_features(output)
    assert features.shape == (2, 16) and meta["items"] == ["a cat", "a dog"] and meta["shape"] == [2, 16]
    assert main(["-q", "embed", "--model", str(tiny_dir), "--texts", "a cup", "--output", str(output)]) == 0
    features, meta = load_features(output)
    assert features.shape == (1, 16) and meta["items"] == ["a cup"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts.json", "texts.npy"]


def test_embed_images_from_file_unnormalized(tiny_dir, model, photo_dir, tmp_path):
    images = photos(photo_dir)[::-1]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(images) + "\n")
    output = tmp_path / "raw.npy"
    argv = ["embed", "--model", str(tiny_dir), "--images-from", str(listing), "--no-normalize", "-o", str(output)]
    assert main([*argv, "--batch-size", "2"]) == 0
    meta = json.loads((tmp_path / "raw.json").read_text())
    assert meta["items"] == images and meta["normalized"] is False
    np.testing.assert_allclose(np.load(output), model.embed_images(images, normalize=False).numpy(), atol=1e-5)


def test_embed_skip_errors(tiny_dir, photo_dir, tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 this is not really a JPEG")
    images = [photos(photo_dir)[0], str(broken), photos(photo_dir)[1]]
    output = tmp_path / "feats.npy"
    argv = ["embed", "--model", str(tiny_dir), "--images", *images, "--output", str(output)]

    assert main(argv) == 1
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("longclip: error: ") and str(broken) in err[0]
    assert "Traceback" not in captured.err
    assert not output.exists()

    assert main([*argv, "--skip-errors"]) == 0
    features = np.load(output)
    meta = json.loads(output.with_suffix(".json").read_text())
    assert features.shape == (3, 16) and meta["count"] == 3 and meta["items"] == images
    assert np.isnan(features[1]).all() and np.isfinite(features[[0, 2]]).all()
    assert len(meta["skipped"]) == 1
    skipped = meta["skipped"][0]
    assert skipped["index"] == 1 and skipped["path"] == str(broken) and skipped["error"]


def test_embed_missing_image_fails_before_loading(tmp_path, capsys):
    missing = tmp_path / "nowhere.png"
    argv = ["embed", "--model", str(tmp_path / "no-model"), "--images", str(missing), "-o", str(tmp_path / "f.npy")]
    assert main(argv) == 1
    err = error_lines(capsys)
    assert len(err) == 1 and str(missing) in err[0]


def test_embed_texts_from_file(tiny_dir, model, tmp_path):
    texts = ["a photo of a cat", LONG_LABEL, "Ünïcode & <b>HTML</b> entities &amp; all"]
    source = tmp_path / "texts.txt"
    source.write_text("\n".join([texts[0], "", "   ", *texts[1:]]) + "\n", encoding="utf-8")
    output = tmp_path / "texts.npy"
    argv = ["embed", "--model", str(tiny_dir), "--texts-from", str(source), "--output", str(output)]
    assert main([*argv, "--long-texts", "chunk"]) == 0
    meta = json.loads((tmp_path / "texts.json").read_text(encoding="utf-8"))
    assert meta["kind"] == "texts" and meta["items"] == texts and meta["count"] == 3 and meta["dim"] == 16
    expected = model.embed_texts(texts, long_texts="chunk").numpy()
    np.testing.assert_allclose(np.load(output), expected, atol=1e-6)


def test_embed_texts_on_command_line(tiny_dir, model, tmp_path):
    output = tmp_path / "cli_texts"  # .npy is added
    assert main(["embed", "-m", str(tiny_dir), "--texts", "red", "a blue car", "-o", str(output), "-q"]) == 0
    features = np.load(tmp_path / "cli_texts.npy")
    np.testing.assert_allclose(features, model.embed_texts(["red", "a blue car"]).numpy(), atol=1e-6)
    assert logging.getLogger("longclip").level == logging.NOTSET  # -q was undone when main returned


# --- errors and help ---------------------------------------------------------------------------------------------


def test_missing_checkpoint_is_one_line_error(tmp_path, capsys):
    missing = tmp_path / "longclip-missing.pt"
    for argv in (["info", str(missing)], ["convert", str(missing), str(tmp_path / "out")]):
        assert main(argv) == 1
        captured = capsys.readouterr()
        err = [line for line in captured.err.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("longclip: error: ") and str(missing) in err[0]
        assert "Traceback" not in captured.err and captured.out == ""


def test_corrupt_checkpoint_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02 truncated pickle")
    assert main(["info", str(bad)]) == 1
    err = error_lines(capsys)
    assert len(err) == 1 and str(bad) in err[0]


def test_debug_reraises(tmp_path):
    missing = str(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError):
        main(["info", missing, "--debug"])
    with pytest.raises(FileNotFoundError):
        main(["--debug", "info", missing])


@pytest.mark.parametrize("command", [[], ["convert"], ["classify"], ["embed"], ["info"]])
def test_help_exits_zero(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: longclip") and "examples:" in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"longclip {longclip.__version__}"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["embed", "--model", "m", "--output", "o.npy"],  # no input given
        ["embed", "--model", "m", "--texts", "a", "--images", "b.png", "--output", "o.npy"],
        ["classify", "a.png", "--model", "m", "--label", "x", "--top", "0"],
    ],
)
def test_usage_errors_exit_two(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
