"""ONNX export: towers with dynamic axes, onnxruntime parity with PyTorch, and the same embedding API."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="ONNX inference needs onnxruntime (pip install 'longclip[onnx]')")
onnx = pytest.importorskip("onnx", reason="ONNX export needs onnx (pip install 'longclip[onnx]')")

from search_helpers import make_photos, save_tiny_model  # noqa: E402

import longclip  # noqa: E402
from longclip.integrations.onnx_export import (  # noqa: E402
    ONNX_CONFIG,
    OnnxDualEncoder,
    export_onnx,
    is_onnx_directory,
    load_onnx,
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("onnx")
    model = longclip.load(save_tiny_model(base / "model"))[0]
    export_onnx(model, base / "export")
    return model, base / "export"


def test_export_writes_two_towers_with_dynamic_axes_and_processing_files(exported):
    _, directory = exported
    files = {p.name for p in directory.iterdir()}
    assert {"text.onnx", "vision.onnx", ONNX_CONFIG, "tokenizer.json", "preprocessor_config.json"} <= files
    text = onnx.load(str(directory / "text.onnx"))
    shapes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in text.graph.input}
    assert shapes == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}
    vision = onnx.load(str(directory / "vision.onnx"))
    dims = [d.dim_param or d.dim_value for d in vision.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 32, 32]
    config = json.loads((directory / ONNX_CONFIG).read_text())
    assert (config["context_length"], config["embed_dim"], config["family"]) == (248, 16, "clip")
    assert is_onnx_directory(directory) and not is_onnx_directory(directory.parent)


@torch.no_grad()
def test_onnxruntime_equals_pytorch_at_any_batch_and_length(exported):
    model, directory = exported
    runtime, preprocess = load_onnx(directory)
    assert isinstance(runtime, OnnxDualEncoder) and preprocess.image_size == 32
    texts = ["a cat", "a dog " * 30, "a long walk along a beach at dawn, " * 20, "red"]
    for batch in (1, 4):
        ids = longclip.tokenize(texts[:batch], truncate=True)  # full 248-wide rows
        for width in (ids.shape[1], 96):
            tokens = ids[:, :width].clone()
            tokens[:, -1] = torch.where(tokens[:, -1] != 0, 49407, 0)  # keep an end token in cut rows
            np.testing.assert_allclose(runtime.encode_text(tokens), model.encode_text(tokens).numpy(), atol=1e-4)
    pixels = torch.randn(5, 3, 32, 32)
    np.testing.assert_allclose(runtime.encode_image(pixels), model.encode_image(pixels).numpy(), atol=1e-4)


@torch.no_grad()
def test_embed_helpers_and_logits_match_pytorch(exported, tmp_path):
    model, directory = exported
    runtime = load_onnx(directory)[0]
    texts = ["a yellow square", "a long description of a scene with many shapes in it, " * 12]
    for mode in ("truncate", "chunk"):
        np.testing.assert_allclose(
            runtime.embed_texts(texts, long_texts=mode), model.embed_texts(texts, long_texts=mode), atol=1e-4
        )
    paths = list(make_photos(tmp_path).values())
    np.testing.assert_allclose(runtime.embed_images(paths), model.embed_images(paths), atol=1e-4)
    pixels = torch.stack([model.image_transform(p) for p in paths[:2]])
    tokens = longclip.tokenize(texts, truncate=True)
    np.testing.assert_allclose(runtime(pixels, tokens)[0], model(pixels, tokens)[0], atol=1e-3)


def test_errors_name_the_problem(exported, tmp_path):
    _, directory = exported
    with pytest.raises(FileNotFoundError, match="not a longclip ONNX export"):
        load_onnx(tmp_path)
    runtime = load_onnx(directory)[0]
    with pytest.raises(ValueError, match="do not fit the context of 248"):
        runtime.encode_text(torch.ones(1, 249, dtype=torch.long))


def test_an_index_built_with_pytorch_accepts_the_onnx_model(exported):
    pytest.importorskip("faiss", reason="the search index needs faiss-cpu")
    from longclip.integrations.index import fingerprint_similarity, model_fingerprint

    model, directory = exported
    assert fingerprint_similarity(model_fingerprint(model), model_fingerprint(load_onnx(directory)[0])) > 0.9999


def test_an_index_built_through_onnxruntime_searches_with_its_own_export(exported, tmp_path):
    pytest.importorskip("faiss", reason="the search index needs faiss-cpu")
    from longclip.integrations.index import build_index, search

    model, directory = exported
    make_photos(tmp_path / "photos")
    build_index(tmp_path / "photos", tmp_path / "index", load_onnx(directory)[0], str(directory), progress=False)
    hits = search(tmp_path / "index", "a blue square", k=6)  # loads the export recorded in the index
    expected = search(tmp_path / "index", "a blue square", k=6, model=model)
    assert [h.path for h in hits] == [h.path for h in expected]
    np.testing.assert_allclose([h.score for h in hits], [h.score for h in expected], atol=1e-4)
