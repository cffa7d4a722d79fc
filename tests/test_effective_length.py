import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_clip
from PIL import Image

import longclip
from longclip.eval.effective_length import cut_tokens, effective_length_curve, plot_effective_length
from longclip.models import LongCLIPModel
from longclip.tokenizer import EOT_ID, SOT_ID

CAPTIONS = [
    f"A scene number {i}. "
    + " ".join(f"Object {j} is a {c} {s}." for j, (c, s) in enumerate(zip(colours, shapes, strict=True)))
    for i, (colours, shapes) in enumerate(
        [
            (["red", "blue", "green"] * 4, ["circle", "square"] * 6),
            (["blue", "green", "red"] * 4, ["square", "circle"] * 6),
            (["green", "red", "blue"] * 4, ["circle", "circle"] * 6),
        ]
    )
]


def test_cut_places_the_end_token_at_k():
    ids = [SOT_ID, 1, 2, 3, 4, EOT_ID]
    assert cut_tokens(ids, 3) == [SOT_ID, 1, 2, EOT_ID]
    assert cut_tokens(ids, 5) == ids and cut_tokens(ids, 40) == ids
    with pytest.raises(ValueError, match="k must be at least 1"):
        cut_tokens(ids, 0)


def _recall_at_1_by_hand(model, images, texts, k):
    """Text->image R@1 with captions cut at k, through transformers directly and a brute-force argmax."""
    tokens = longclip.tokenize(texts, truncate=True)
    rows = []
    for row in tokens:
        ids = row[: int((row == EOT_ID).nonzero()[0]) + 1].tolist()
        rows.append(ids if len(ids) <= k + 1 else ids[:k] + [EOT_ID])
    with torch.no_grad():
        text = torch.cat([model.clip.get_text_features(input_ids=torch.tensor([r])).pooler_output for r in rows])
    sims = F.normalize(text, dim=-1) @ model.embed_images(images).T
    return float((sims.argmax(dim=1) == torch.arange(len(texts))).float().mean())


def test_curve_matches_a_direct_computation_and_is_clipped_to_the_context(photos):
    images = list(photos.values())
    model = LongCLIPModel(tiny_clip(context=248))
    curve = effective_length_curve(model, images, CAPTIONS, [0, 1, 2], lengths=(5, 20, 60))
    assert [p["k"] for p in curve] == [5, 20, 60]
    for point in curve:
        assert point["image_retrieval_recall@1"] == pytest.approx(
            _recall_at_1_by_hand(model, images, CAPTIONS, point["k"])
        )

    short = LongCLIPModel(tiny_clip(context=77))
    beyond = effective_length_curve(short, images, CAPTIONS, [0, 1, 2], lengths=(76, 100, 248))
    assert beyond[0] | {"k": 0} == beyond[1] | {"k": 0} == beyond[2] | {"k": 0}


def test_plot_is_written(tmp_path):
    curve = [{"k": k, "image_retrieval_recall@1": k / 248, "text_retrieval_recall@1": 0.5} for k in (5, 77, 248)]
    plot_effective_length({"a": curve, "b": curve[::-1]}, tmp_path / "curve.png", title="probe")
    with Image.open(tmp_path / "curve.png") as image:
        assert image.size[0] > 600 and image.size[1] > 300
