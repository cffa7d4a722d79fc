"""Evaluation metrics: retrieval recall@k, zero-shot classification, long-text CLIPScore."""

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_clip

import longclip
from longclip import LongCLIPModel
from longclip.eval import (
    build_classifier,
    classification_metrics,
    clip_score,
    clip_score_corpus,
    retrieval_metrics,
    zero_shot_classify,
)


def _at_angles(degrees) -> torch.Tensor:
    """Unit 2-D vectors: similarity is the cosine of the angle between them, so ranks can be read off a circle."""
    radians = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([radians.cos(), radians.sin()], dim=1).float()


def _random_unit(n: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(n, dim, generator=generator), dim=1)


# --- retrieval ---------------------------------------------------------------------------------------------------

# Images at 0, 90 and 180 degrees; two texts each. Distances (degrees) from each text to images 0 / 1 / 2:
#   t0  10 -> img0:  10 / 80 / 170   own image nearest           rank 0
#   t1  60 -> img0:  60 / 30 / 120   img1 nearer                 rank 1
#   t2 130 -> img1: 130 / 40 /  50   own nearest                 rank 0
#   t3 150 -> img1: 150 / 60 /  30   img2 nearer                 rank 1
#   t4 220 -> img2: 140 /130 /  40   own nearest                 rank 0
#   t5  40 -> img2:  40 / 50 / 140   img0 and img1 nearer        rank 2
# Image -> text, best own text against the other images' texts:
#   img0: t0 at 10, nothing nearer                               rank 0
#   img1: t2 at 40, t1 (img0's) at 30 is nearer                  rank 1
#   img2: t4 at 40, t3 (img1's) at 30 is nearer                  rank 1
HAND_IMAGES = [0, 90, 180]
HAND_TEXTS = [10, 60, 130, 150, 220, 40]
HAND_OWNERS = [0, 0, 1, 1, 2, 2]


def test_retrieval_hand_computed_ranks():
    metrics = retrieval_metrics(_at_angles(HAND_IMAGES), _at_angles(HAND_TEXTS), HAND_OWNERS, ks=(1, 2, 3))
    assert metrics == pytest.approx(
        {
            "image_retrieval_recall@1": 3 / 6,
            "image_retrieval_recall@2": 5 / 6,
            "image_retrieval_recall@3": 1.0,
            "text_retrieval_recall@1": 1 / 3,
            "text_retrieval_recall@2": 1.0,
            "text_retrieval_recall@3": 1.0,
        }
    )
    # The keys are CLIP_benchmark's, in its order.
    assert list(metrics)[0] == "image_retrieval_recall@1"
    assert all(isinstance(v, float) for v in metrics.values())


def test_retrieval_accepts_tensor_owners_and_default_ks():
    metrics = retrieval_metrics(_at_angles(HAND_IMAGES), _at_angles(HAND_TEXTS), torch.tensor(HAND_OWNERS))
    assert set(metrics) == {f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)}
    assert metrics["image_retrieval_recall@1"] == pytest.approx(0.5)
    assert metrics["text_retrieval_recall@5"] == 1.0


def test_retrieval_ties_count_against_the_model():
    # A collapsed model: every image and text is the same vector. Any tie-breaking by position would give hits.
    same = F.normalize(torch.ones(1, 4), dim=1)
    metrics = retrieval_metrics(same.expand(3, 4), same.expand(6, 4), HAND_OWNERS, ks=(1, 2, 3))
    assert metrics["image_retrieval_recall@1"] == 0.0
    assert metrics["image_retrieval_recall@2"] == 0.0  # two other images tie with the right one
    assert metrics["image_retrieval_recall@3"] == 1.0
    assert metrics["text_retrieval_recall@1"] == 0.0
    assert metrics["text_retrieval_recall@3"] == 0.0  # four wrong texts tie with the best right one
    # With a single image there is nothing to confuse it with.
    single = retrieval_metrics(same, same.expand(2, 4), [0, 0], ks=(1,))
    assert single == {"image_retrieval_recall@1": 1.0, "text_retrieval_recall@1": 1.0}


def test_retrieval_other_correct_texts_do_not_count_against_an_image():
    images = _at_angles([0, 180])
    # Image 0's two captions are identical to it and to each other; image 1's caption points away.
    texts = _at_angles([0, 0, 180])
    metrics = retrieval_metrics(images, texts, [0, 0, 1], ks=(1,))
    assert metrics["text_retrieval_recall@1"] == 1.0
    # But a wrong text tying with the best right one does count.
    texts = _at_angles([0, 0, 0])
    metrics = retrieval_metrics(images, texts, [0, 0, 1], ks=(1,))
    assert metrics["text_retrieval_recall@1"] == 0.0


def test_retrieval_only_the_second_caption_matches():
    images = _at_angles([0, 120, 240])
    # Each image's first caption lies 20 degrees from the *next* image (100 degrees from its own); its second
    # caption is on the image itself.
    first, second = [100, 220, 340], [0, 120, 240]
    texts = _at_angles([first[0], second[0], first[1], second[1], first[2], second[2]])
    owners = [0, 0, 1, 1, 2, 2]
    metrics = retrieval_metrics(images, texts, owners, ks=(1, 2))
    assert metrics["text_retrieval_recall@1"] == 1.0  # found through the second caption
    assert metrics["image_retrieval_recall@1"] == pytest.approx(3 / 6)  # the second captions hit, the first miss
    assert metrics["image_retrieval_recall@2"] == 1.0  # each first caption's own image is second nearest
    # With the first captions alone every image misses: another image's caption is nearer than its own.
    metrics = retrieval_metrics(images, _at_angles(first), [0, 1, 2], ks=(1,))
    assert metrics["text_retrieval_recall@1"] == 0.0


def test_retrieval_images_without_text_are_left_out(caplog):
    images = _at_angles([0, 90, 180, 270])
    texts = _at_angles([5, 175])
    with caplog.at_level(logging.WARNING, logger="longclip.eval.metrics"):
        metrics = retrieval_metrics(images, texts, [0, 2], ks=(1,))
    assert metrics["text_retrieval_recall@1"] == 1.0  # 2 of 2 scored images, not 2 of 4
    assert "2 of 4 images have no text" in caplog.text


def test_retrieval_chunking_does_not_change_results():
    g = torch.Generator().manual_seed(0)
    images, texts = _random_unit(50, 8, g), _random_unit(250, 8, g)
    owners = torch.randint(0, 50, (250,), generator=g)
    # Coarse features make exact ties likely, which is where chunk boundaries could go wrong.
    images, texts = F.normalize(images.round(decimals=0), dim=1), F.normalize(texts.round(decimals=0), dim=1)
    images, texts = torch.nan_to_num(images), torch.nan_to_num(texts)
    reference = retrieval_metrics(images, texts, owners, ks=(1, 5, 10), chunk_size=1024)
    for chunk_size in (1, 3, 49, 50, 51):
        assert retrieval_metrics(images, texts, owners, ks=(1, 5, 10), chunk_size=chunk_size) == reference
    assert 0 < reference["image_retrieval_recall@10"] < 1


def _brute_force_ranks(images, texts, owners):
    """Pessimistic ranks by explicit loops over pairs: the definition, without any vectorisation."""
    sims = (texts.double() @ images.double().T).tolist()
    t2i = [sum(s >= row[o] for j, s in enumerate(row) if j != o) for row, o in zip(sims, owners, strict=True)]
    i2t = []
    for i in range(len(images)):
        own = [t for t, o in enumerate(owners) if o == i]
        if own:
            best = max(sims[t][i] for t in own)
            i2t.append(sum(sims[t][i] >= best for t in range(len(owners)) if owners[t] != i))
    return t2i, i2t


def test_retrieval_matches_brute_force_definition():
    g = torch.Generator().manual_seed(1)
    images, texts = _random_unit(30, 6, g), _random_unit(90, 6, g)
    owners = torch.randint(0, 30, (90,), generator=g).tolist()
    t2i, i2t = _brute_force_ranks(images, texts, owners)
    metrics = retrieval_metrics(images, texts, owners, ks=(1, 3, 10), chunk_size=7)
    for k in (1, 3, 10):
        assert metrics[f"image_retrieval_recall@{k}"] == pytest.approx(sum(r < k for r in t2i) / len(t2i))
        assert metrics[f"text_retrieval_recall@{k}"] == pytest.approx(sum(r < k for r in i2t) / len(i2t))


def test_retrieval_matches_torchmetrics_hit_rate():
    torchmetrics = pytest.importorskip("torchmetrics")
    g = torch.Generator().manual_seed(2)
    n_images, n_texts = 20, 60
    images, texts = _random_unit(n_images, 8, g), _random_unit(n_texts, 8, g)
    # Every image gets at least one text (torchmetrics scores a query with no relevant item as a miss).
    owners = torch.cat([torch.arange(n_images), torch.randint(0, n_images, (n_texts - n_images,), generator=g)])
    sims = texts @ images.T  # [texts, images]; continuous random features, so no ties
    ks = (1, 5, 10)
    ours = retrieval_metrics(images, texts, owners, ks=ks)
    for k in ks:
        # Text -> image: one query per text, candidates are the images, the text's own image is relevant.
        hit_rate = torchmetrics.retrieval.RetrievalHitRate(top_k=k)
        t2i_target = owners[:, None] == torch.arange(n_images)[None, :]
        t2i_index = torch.arange(n_texts)[:, None].expand(n_texts, n_images)
        expected = hit_rate(sims.flatten(), t2i_target.flatten(), indexes=t2i_index.flatten())
        assert ours[f"image_retrieval_recall@{k}"] == pytest.approx(float(expected))
        # Image -> text: one query per image, candidates are the texts, all of the image's texts are relevant.
        hit_rate = torchmetrics.retrieval.RetrievalHitRate(top_k=k)
        i2t_target = torch.arange(n_images)[:, None] == owners[None, :]
        i2t_index = torch.arange(n_images)[:, None].expand(n_images, n_texts)
        expected = hit_rate(sims.T.flatten(), i2t_target.flatten(), indexes=i2t_index.flatten())
        assert ours[f"text_retrieval_recall@{k}"] == pytest.approx(float(expected))
    assert ours["image_retrieval_recall@1"] < ours["image_retrieval_recall@10"]  # not a degenerate case


@pytest.mark.parametrize(
    ("images", "texts", "owners", "kwargs", "match"),
    [
        (torch.ones(3), torch.ones(2, 2), [0, 0], {}, r"image_features must be a 2-D tensor \[N, D\], got \(3,\)"),
        (torch.ones(3, 2), torch.ones(2, 3), [0, 0], {}, "same width D, got 2 and 3"),
        (torch.ones(0, 2), torch.ones(2, 2), [0, 0], {}, "image_features is empty"),
        (torch.ones(3, 2), torch.ones(2, 2), [0, 0, 1], {}, r"shape \[2\], got \(3,\)"),
        (torch.ones(3, 2), torch.ones(2, 2), [0, 3], {}, r"image index 3, expected indices in \[0, 3\)"),
        (torch.ones(3, 2), torch.ones(2, 2), [-1, 0], {}, r"image index -1"),
        (torch.ones(3, 2), torch.ones(2, 2), torch.tensor([0.0, 1.0]), {}, "integer image indices"),
        (torch.ones(3, 2), torch.ones(2, 2), [0, 1], {"ks": (1, 0)}, "positive integer, got 0"),
        (torch.ones(3, 2), torch.ones(2, 2), [0, 1], {"ks": ()}, "ks is empty"),
        (torch.ones(3, 2), torch.ones(2, 2), [0, 1], {"chunk_size": 0}, "chunk_size must be a positive integer"),
    ],
)
def test_retrieval_rejects_bad_inputs(images, texts, owners, kwargs, match):
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(F.normalize(images, dim=-1), F.normalize(texts, dim=-1), owners, **kwargs)


def test_retrieval_rejects_nan_rows_of_skipped_images():
    images = _at_angles([0, 90, 180])
    images[1] = math.nan  # what embed_images(skip_errors=True) leaves for an unreadable image
    with pytest.raises(ValueError, match=r"image_features has 1 rows with NaN .*first: \[1\].*drop them"):
        retrieval_metrics(images, _at_angles([0, 90]), [0, 1])


# --- classification metrics --------------------------------------------------------------------------------------


def test_classification_metrics_hand_computed_with_tie():
    logits = torch.tensor(
        [
            [3.0, 1.0, 2.0, -9.0],  # label 0: top-1
            [1.0, 2.0, 2.0, -9.0],  # label 1: tied with class 2 at the top -> rank 1, not top-1
            [0.0, 5.0, 1.0, -9.0],  # label 2: second
            [2.0, 1.0, 0.0, -9.0],  # label 2: third
            [0.0, 0.0, 4.0, -9.0],  # label 2: top-1
        ]
    )
    labels = torch.tensor([0, 1, 2, 2, 2])  # class 3 never occurs; class 2 three times
    metrics = classification_metrics(logits, labels, ks=(1, 2, 5))
    assert metrics["acc1"] == pytest.approx(2 / 5)
    assert metrics["acc2"] == pytest.approx(4 / 5)
    assert metrics["acc5"] == 1.0  # k = 5 > 4 classes: clamped, still reported as acc5
    # Per-class recall@1 over the classes present: class 0 1/1, class 1 0/1, class 2 1/3 (class 3 absent).
    assert metrics["mean_per_class_recall"] == pytest.approx((1 + 0 + 1 / 3) / 3)
    assert set(classification_metrics(logits, labels)) == {"acc1", "acc5", "mean_per_class_recall"}


def test_classification_metrics_imbalanced_mean_per_class_recall():
    # 6 samples of class 0 all right, 2 of class 1 both wrong: accuracy 0.75 but balanced recall 0.5.
    logits = torch.tensor([[1.0, 0.0]] * 6 + [[1.0, 0.0]] * 2)
    labels = [0] * 6 + [1] * 2
    metrics = classification_metrics(logits, labels, ks=(1,))
    assert metrics == pytest.approx({"acc1": 0.75, "mean_per_class_recall": 0.5})


@pytest.mark.parametrize(
    ("logits", "labels", "match"),
    [
        (torch.zeros(3), [0, 1, 2], "2-D tensor"),
        (torch.zeros(3, 2), [0, 1], r"shape \[3\], got \(2,\)"),
        (torch.zeros(3, 2), [0, 1, 2], r"class index 2, expected indices in \[0, 2\)"),
        (torch.zeros(3, 2), torch.tensor([0.0, 1.0, 1.0]), "integer class indices"),
        (torch.tensor([[0.0, math.nan]]), [0], "NaN"),
    ],
)
def test_classification_metrics_rejects_bad_inputs(logits, labels, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(logits, labels)


# --- with a tiny model -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    return LongCLIPModel(tiny_clip())


def _encode(model, prompt: str) -> torch.Tensor:
    """One prompt alone through the text tower, normalized here (not by the code under test)."""
    with torch.no_grad():
        return F.normalize(model.encode_text(longclip.tokenize([prompt], truncate=True)).float()[0], dim=-1)


def test_build_classifier_is_the_normalized_mean_of_normalized_prompts(model):
    classes = ["cat", "dog", "red double-decker bus"]
    templates = ["a photo of a {}.", "a blurry drawing of the {c}, seen from far away.", lambda c: f"itap of a {c}"]
    classifier = build_classifier(model, classes, templates, batch_size=2)
    prompts = [
        [f"a photo of a {c}.", f"a blurry drawing of the {c}, seen from far away.", f"itap of a {c}"] for c in classes
    ]
    expected = torch.stack(
        [F.normalize(torch.stack([_encode(model, p) for p in row]).mean(dim=0), dim=-1) for row in prompts]
    )
    assert classifier.shape == (3, 16) and classifier.dtype == torch.float32
    torch.testing.assert_close(classifier, expected, atol=1e-5, rtol=1e-5)


def test_build_classifier_rejects_bad_templates(model):
    with pytest.raises(ValueError, match="no '{}' or '{c}' placeholder"):
        build_classifier(model, ["cat"], ["a photo"])
    with pytest.raises(ValueError, match="cannot be filled"):
        build_classifier(model, ["cat"], ["a {} and a {}"])
    with pytest.raises(ValueError, match="templates is empty"):
        build_classifier(model, ["cat"], [])


def test_zero_shot_classify_matches_metrics_of_hand_computed_logits(model, photos, tmp_path):
    images = [photos["astronaut"], photos["chelsea"], photos["coffee"], photos["chelsea"], photos["coffee"]]
    labels = [0, 1, 2, 2, 1]
    classes = ["astronaut", "cat", "cup of coffee"]
    templates = ["a photo of a {}.", "a close-up of the {c}."]
    result = zero_shot_classify(model, images, labels, classes, templates, batch_size=2)

    classifier = build_classifier(model, classes, templates)
    logits = model.embed_images(images) @ classifier.T
    expected = classification_metrics(logits, torch.tensor(labels))
    assert result == {**expected, "num_images": 5, "num_skipped": 0}

    # An unreadable image is left out and counted; the metrics are those of the others.
    missing = tmp_path / "missing.jpg"
    result = zero_shot_classify(model, [*images, missing], [*labels, 0], classes, templates, skip_errors=True)
    assert result == {**expected, "num_images": 5, "num_skipped": 1}
    with pytest.raises((FileNotFoundError, longclip.ImageLoadError)):
        zero_shot_classify(model, [*images, missing], [*labels, 0], classes, templates)


def test_zero_shot_classify_rejects_mismatched_labels(model, photos):
    with pytest.raises(ValueError, match="got 1 images but 2 labels"):
        zero_shot_classify(model, [photos["chelsea"]], [0, 1], ["cat", "dog"], ["a {}"])
    with pytest.raises(ValueError, match="label 5 is out of range for 2 class names"):
        zero_shot_classify(model, [photos["chelsea"]], [5], ["cat", "dog"], ["a {}"])


# 402 tokens. Repetitive so that, with the tiny random model, its cosine with the coffee photo is positive (not
# clipped to 0) whether truncated or chunked, and the two modes give visibly different scores.
LONG_CAPTION = "a cup of coffee. " * 80


def test_clip_score_matches_hand_computation_for_short_and_long_texts(model, photos):
    images = [photos["chelsea"], photos["astronaut"], photos["coffee"]]
    texts = ["a cat", "two dogs", LONG_CAPTION]
    assert model.tokenizer.count_tokens([LONG_CAPTION])[0] > 248

    scores = clip_score(images, texts, model, batch_size=2)
    assert bool((scores > 0).all())  # otherwise the clipping at 0 would hide any error
    image_features = model.embed_images(images)
    # Texts by hand: tokenized with Long-CLIP's truncation (end token kept last), each through the tower alone.
    text_features = torch.stack([_encode(model, t) for t in texts])
    expected = 100 * (image_features * text_features).sum(dim=1).clamp(min=0)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-5)

    # Chunked long texts: the image against the mean of the chunk embeddings, as embed_texts computes it.
    chunked = clip_score(images, texts, model, long_texts="chunk")
    text_features = model.embed_texts(texts, long_texts="chunk")
    expected = 100 * (image_features * text_features).sum(dim=1).clamp(min=0)
    torch.testing.assert_close(chunked, expected, atol=1e-4, rtol=1e-5)
    assert abs(float(chunked[2] - scores[2])) > 1  # the chunked long caption really is scored differently
    assert clip_score_corpus(images, texts, model) == pytest.approx(float(scores.mean()), abs=1e-4)


class _FixedFeatures:
    """Stands in for a model: returns given (already normalized) features, so cosines are known exactly."""

    def __init__(self, image_features: torch.Tensor, text_features: torch.Tensor):
        self.image_features, self.text_features = image_features, text_features

    def embed_images(self, images, batch_size=32, normalize=True):
        return self.image_features[: len(images)]

    def embed_texts(self, texts, batch_size=64, normalize=True, long_texts="truncate"):
        return self.text_features[: len(texts)]


def test_clip_score_formula_clips_negative_cosines_and_scales_by_w():
    images = _at_angles([0, 0, 0])
    texts = _at_angles([60, 90, 180])  # cosines 0.5, 0, -1
    fixed = _FixedFeatures(images, texts)
    torch.testing.assert_close(clip_score(["a", "b", "c"], ["x", "y", "z"], fixed), torch.tensor([50.0, 0.0, 0.0]))
    torch.testing.assert_close(clip_score(["a"], ["x"], fixed, w=2.5), torch.tensor([1.25]))
    assert clip_score_corpus(["a", "b", "c"], ["x", "y", "z"], fixed) == pytest.approx(50 / 3)


def test_clip_score_rejects_bad_inputs():
    fixed = _FixedFeatures(_at_angles([0]), _at_angles([0]))
    with pytest.raises(ValueError, match="got 1 images but 2 texts"):
        clip_score(["a"], ["x", "y"], fixed)
    with pytest.raises(ValueError, match="not a single string"):
        clip_score(["a"], "x", fixed)
    with pytest.raises(ValueError, match="w must be positive"):
        clip_score(["a"], ["x"], fixed, w=0)
    assert clip_score([], [], fixed).shape == (0,)


def test_old_metrics_module_reexports_clipscore():
    import longclip.eval.clipscore
    import longclip.metrics

    assert longclip.metrics.clip_score is longclip.eval.clipscore.clip_score
    assert longclip.metrics.clip_score_corpus is longclip.eval.clipscore.clip_score_corpus
