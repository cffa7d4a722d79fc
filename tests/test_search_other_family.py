"""Index, search and ONNX export with a family that is not CLIP: the toy bag-of-hashed-words of tests/plugins
(its own tokenizer, a pad id that is not 0, a masked mean instead of an end token)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("faiss", reason="the search index needs faiss-cpu (pip install 'longclip[search]')")

sys.path.insert(0, str(Path(__file__).resolve().parent / "plugins"))

import toy_method  # noqa: E402  (registers the toy family)
from search_helpers import make_photos  # noqa: E402

import longclip  # noqa: E402
from longclip.integrations.index import ImageIndex, build_index, search  # noqa: E402

CONFIG = {"buckets": 64, "context_length": 12, "embed_dim": 8}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    directory = tmp_path_factory.mktemp("toy") / "model"
    torch.manual_seed(0)
    toy_method.HashedWords(CONFIG).save_pretrained(directory)
    return longclip.load(directory)[0], directory


def test_index_and_search_with_another_family(toy, tmp_path):
    model, directory = toy
    make_photos(tmp_path / "photos")
    build_index(tmp_path / "photos", tmp_path / "index", model, str(directory), progress=False)
    index = ImageIndex.open(tmp_path / "index")
    assert index.manifest["model"]["context_length"] == 12
    text = "a red square on a dark background " * 4  # 28 words: past the 12-token context, read in chunks
    hits = search(tmp_path / "index", text, k=6)  # loads the toy model by the id the index recorded
    query = model.embed_texts([text], long_texts="chunk")[0]
    paths = [r.path for r in index.records]
    scores = model.embed_images([tmp_path / "photos" / p for p in paths]) @ query
    order = [paths[i] for i in scores.argsort(descending=True).tolist()]
    assert [h.path for h in hits] == order


def test_onnx_export_of_another_family_through_its_encode_methods(toy, tmp_path):
    pytest.importorskip("onnxruntime", reason="needs onnxruntime")
    from longclip.integrations.onnx_export import export_onnx, load_onnx

    model, _ = toy
    export_onnx(model, tmp_path / "onnx")  # checks onnxruntime against PyTorch itself; raises beyond 1e-4
    with pytest.raises(ValueError, match="needs its tokenizer"):
        load_onnx(tmp_path / "onnx")
    runtime = load_onnx(tmp_path / "onnx", tokenizer=model.tokenizer)[0]
    texts = ["a red square", "blue " * 30, "a green circle on a grey ground"]
    np.testing.assert_allclose(
        runtime.embed_texts(texts, long_texts="chunk"), model.embed_texts(texts, long_texts="chunk"), atol=1e-5
    )
    ids = model.tokenizer.pad(model.tokenizer.encode(texts[:1]) + [[0, 5]]).input_ids  # pad id 65, not 0
    np.testing.assert_allclose(runtime.encode_text(ids), model.encode_text(ids).detach(), atol=1e-5)


def test_open_clip_export_refuses_another_family(toy, tmp_path):
    from longclip.integrations.open_clip_export import export_open_clip

    with pytest.raises(ValueError, match="toy-hashed-words has another text encoder"):
        export_open_clip(toy[0], tmp_path / "oc")
