"""What the training loop measures on the held-out rows (``--val-rows``) after each epoch.

Each task says how (``Task.validator``): image-text retrieval by default; a method whose model cannot embed both
images and texts during training measures what it can (LLM2CLIP's adapter stage: retrieval against its cached
caption embeddings; caption-contrastive tuning: caption-to-caption retrieval) or nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Validator = Callable[[torch.nn.Module], dict[str, float]]


def retrieval_validator(pairs: Sequence) -> Validator:
    """Text->image and image->text R@1 of the held-out pairs, with their long and with their short captions."""
    from ..eval.datasets import RetrievalSet
    from ..eval.runner import score_retrieval

    images = [p.image for p in pairs]
    caption_sets = {
        kind: RetrievalSet(
            f"validation-{kind}", f"first {len(pairs)} rows, {kind} captions", images, texts, list(range(len(pairs)))
        )  # fmt: skip
        for kind, texts in (("long", [p.caption for p in pairs]), ("short", [p.short_caption for p in pairs]))
    }

    def validate(model) -> dict[str, float]:
        features = model.embed_images(images, skip_errors=True)  # once, for both caption sets
        results = {}
        for kind, dataset in caption_sets.items():
            scores = score_retrieval(model, dataset, features, ks=(1,))
            results.update({f"{kind}/{k}": v for k, v in scores.items() if "recall" in k})
        return results

    return validate


def feature_retrieval_validator(pairs: Sequence, text_features: Callable[[list[str]], torch.Tensor]) -> Validator:
    """Like ``retrieval_validator``, with the text features given by ``text_features(captions)`` (e.g. a cache)."""
    from ..eval.metrics import retrieval_metrics

    images = [p.image for p in pairs]

    def validate(model) -> dict[str, float]:
        image_features = model.embed_images(images, skip_errors=True)
        keep = ~image_features.isnan().any(dim=1)  # unreadable images are NaN rows: left out, as the runner does
        index = torch.arange(len(pairs))[keep]
        results = {}
        for kind, texts in (("long", [p.caption for p in pairs]), ("short", [p.short_caption for p in pairs])):
            features = text_features([texts[i] for i in index.tolist()]).to(image_features)
            scores = retrieval_metrics(image_features[keep], features, torch.arange(len(index)), ks=(1,))
            results.update({f"{kind}/{k}": v for k, v in scores.items()})
        return results

    return validate
