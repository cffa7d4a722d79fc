"""Run a model on the registered benchmarks and write the results as JSON and a markdown table.

One code path for every data set (no per-benchmark script): :func:`evaluate` loads a set with
:func:`longclip.eval.datasets.load_dataset` and hands it to :func:`evaluate_dataset`, which

* for a :class:`~longclip.eval.datasets.RetrievalSet` embeds the images (``skip_errors=True``: unreadable files get
  NaN rows), drops those rows and the texts of those images (re-indexing ``text_to_image``), embeds the texts and
  computes :func:`~longclip.eval.metrics.retrieval_metrics`;
* for a :class:`~longclip.eval.datasets.ClassificationSet` runs :func:`~longclip.eval.zeroshot.zero_shot_classify`
  with the prompt templates (OpenAI's 80 ImageNet templates by default, CLIP_benchmark's fallback for every set).

Results are flat dicts with CLIP_benchmark's metric keys (``image_retrieval_recall@5``, ``acc1``, ...) plus what was
evaluated: ``dataset``, ``task``, ``protocol``, ``model``, ``num_images``, ``num_texts``, ``num_skipped`` (unreadable
images left out) and ``num_dropped`` (images the data set's reader left out, e.g. without a caption).
:func:`write_clip_benchmark` also writes them in CLIP_benchmark's own layout, one file per data set and task, as its
``clip_benchmark eval`` does (``{"dataset", "model", "pretrained", "task", "metrics": {...}, "language"}``), so that
its ``clip_benchmark build`` and the tables made from it read our results beside theirs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .datasets import ClassificationSet, RetrievalSet, imagenet_metadata, load_dataset
from .metrics import retrieval_metrics
from .zeroshot import zero_shot_classify

if TYPE_CHECKING:
    from ..models import DualEncoder
    from ..models.base import LongTextMode

__all__ = [
    "clip_benchmark_records",
    "evaluate",
    "evaluate_dataset",
    "format_markdown",
    "write_clip_benchmark",
    "write_report",
]

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

RETRIEVAL_TASK = "zeroshot_retrieval"
CLASSIFICATION_TASK = "zeroshot_classification"
# Keys every result has, in the order reports show them; metric keys follow (see _metric_order).
_INFO_KEYS = (
    "dataset",
    "task",
    "protocol",
    "model",
    "long_texts",
    "num_images",
    "num_texts",
    "num_classes",
    "num_skipped",
    "num_dropped",
)
_CLASSIFICATION_METRICS = ("acc1", "acc5", "mean_per_class_recall")


def evaluate(
    model: DualEncoder,
    dataset_name: str,
    root: PathLike,
    *,
    batch_size: int = 64,
    long_texts: LongTextMode = "truncate",
    ks: Sequence[int] = (1, 5, 10),
    templates: Sequence[str] | None = None,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on the registered data set ``dataset_name`` read from ``root``.

    Args:
        model: The image-text model (``longclip.load(...)[0]``).
        dataset_name: A key of :data:`longclip.eval.datasets.DATASETS`.
        root: The data set's folder, in its published layout.
        batch_size: Images / texts per forward pass.
        long_texts: Texts longer than the model's context: ``"truncate"``, ``"chunk"`` or ``"error"`` (retrieval).
        ks: Recall cut-offs (retrieval; classification always reports ``acc1`` and ``acc5``).
        templates: Prompt templates with ``{}`` (classification); default OpenAI's 80 ImageNet templates.
        model_name: What to record under ``"model"`` (e.g. the checkpoint path).

    Returns:
        See :func:`evaluate_dataset`.

    Raises:
        ValueError, FileNotFoundError: An unknown name, a missing or malformed data set, or no readable image.
    """
    dataset = load_dataset(dataset_name, root)
    return evaluate_dataset(
        model,
        dataset,
        batch_size=batch_size,
        long_texts=long_texts,
        ks=ks,
        templates=templates,
        model_name=model_name,
    )


def evaluate_dataset(
    model: DualEncoder,
    dataset: RetrievalSet | ClassificationSet,
    *,
    batch_size: int = 64,
    long_texts: LongTextMode = "truncate",
    ks: Sequence[int] = (1, 5, 10),
    templates: Sequence[str] | None = None,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on an already loaded data set (see :func:`evaluate` for the arguments).

    Returns:
        ``dataset``, ``task`` (CLIP_benchmark's ``zeroshot_retrieval`` / ``zeroshot_classification``),
        ``protocol``, ``model``, ``long_texts``, ``num_images`` (images scored), ``num_texts`` (texts scored, or
        prompts embedded), ``num_classes`` (classification), ``num_skipped`` (unreadable images left out),
        ``num_dropped`` (images the reader left out: ``dataset.dropped``, each reported in a warning) and the
        metrics: ``image_retrieval_recall@k`` / ``text_retrieval_recall@k`` for each ``k``, or ``acc1``, ``acc5``
        and ``mean_per_class_recall``, all in ``[0, 1]``.
    """
    info: dict[str, Any] = {"dataset": dataset.name, "protocol": dataset.protocol, "model": model_name}
    info["num_dropped"] = len(getattr(dataset, "dropped", ()))
    if isinstance(dataset, RetrievalSet):
        info.update(task=RETRIEVAL_TASK, long_texts=long_texts)
        info.update(_retrieve(model, dataset, batch_size, long_texts, ks))
    elif isinstance(dataset, ClassificationSet):
        if templates is None:
            templates = imagenet_metadata()[1]
        templates = list(templates)
        metrics = zero_shot_classify(
            model,
            dataset.images,
            dataset.labels,
            dataset.class_names,
            templates,
            batch_size=batch_size,
            skip_errors=True,
        )
        info.update(
            task=CLASSIFICATION_TASK,
            num_texts=len(dataset.class_names) * len(templates),
            num_classes=len(dataset.class_names),
        )
        info.update(metrics)
    else:
        raise TypeError(f"expected a RetrievalSet or ClassificationSet, got {type(dataset).__name__}")
    return _ordered(info)


def _retrieve(
    model: DualEncoder, dataset: RetrievalSet, batch_size: int, long_texts: LongTextMode, ks: Sequence[int]
) -> dict[str, Any]:
    """Embed the images (unreadable ones become NaN rows), then score: the one retrieval path."""
    image_features = model.embed_images(dataset.images, batch_size=batch_size, normalize=True, skip_errors=True)
    return score_retrieval(model, dataset, image_features, batch_size=batch_size, long_texts=long_texts, ks=ks)


def score_retrieval(
    model: DualEncoder,
    dataset: RetrievalSet,
    image_features: torch.Tensor,
    *,
    batch_size: int = 64,
    long_texts: LongTextMode = "truncate",
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, Any]:
    """Retrieval metrics of ``dataset`` given its images' features (NaN rows: unreadable images).

    Unreadable images are dropped together with their texts, the rest re-indexed; texts are embedded here. Lets a
    caller that scores several caption sets against the same images (e.g. long and short captions) embed them once.

    Returns:
        ``num_images``, ``num_texts``, ``num_skipped`` and :func:`retrieval_metrics`'s recalls.
    """
    kept = ~torch.isnan(image_features).any(dim=1)
    num_skipped = int((~kept).sum())
    if not bool(kept.any()):
        raise ValueError(f"{dataset.name}: none of the {len(dataset.images)} images could be read")
    # New index of each kept image; texts of skipped images go with them.
    new_index = torch.cumsum(kept.long(), dim=0) - 1
    owners = torch.as_tensor(dataset.text_to_image, dtype=torch.long)
    text_kept = kept[owners]
    texts = [text for text, keep in zip(dataset.texts, text_kept.tolist(), strict=True) if keep]
    if num_skipped:
        logger.warning(
            "%s: %d of %d images could not be read; they and their %d texts are left out",
            dataset.name,
            num_skipped,
            len(dataset.images),
            len(dataset.texts) - len(texts),
        )
    if not texts:
        raise ValueError(f"{dataset.name}: no text is left after dropping the {num_skipped} unreadable images")
    text_features = model.embed_texts(texts, batch_size=batch_size, normalize=True, long_texts=long_texts)
    metrics = retrieval_metrics(image_features[kept], text_features, new_index[owners[text_kept]], ks=ks)
    return {"num_images": int(kept.sum()), "num_texts": len(texts), "num_skipped": num_skipped, **metrics}


def _metric_order(key: str) -> tuple[int, str, int]:
    """Text->image recalls by k, then image->text by k, then the classification metrics, then anything else."""
    for rank, prefix in enumerate(("image_retrieval_recall@", "text_retrieval_recall@")):
        if key.startswith(prefix) and key[len(prefix) :].isdigit():
            return (rank, "", int(key[len(prefix) :]))
    if key in _CLASSIFICATION_METRICS:
        return (2, "", _CLASSIFICATION_METRICS.index(key))
    return (3, key, 0)


def _ordered(result: dict[str, Any]) -> dict[str, Any]:
    """The result with the info keys first (in _INFO_KEYS order), then the metrics in _metric_order."""
    info = {key: result[key] for key in _INFO_KEYS if key in result}
    rest = sorted((key for key in result if key not in info), key=_metric_order)
    return {**info, **{key: result[key] for key in rest}}


_COLUMN_TITLES = {"mean_per_class_recall": "mean per-class recall", "acc1": "acc@1", "acc5": "acc@5"}


def _column_title(key: str) -> str:
    if key.startswith("image_retrieval_recall@"):
        return "T→I R@" + key.rsplit("@", 1)[1]
    if key.startswith("text_retrieval_recall@"):
        return "I→T R@" + key.rsplit("@", 1)[1]
    return _COLUMN_TITLES.get(key, key)


def format_markdown(results: Sequence[dict[str, Any]]) -> str:
    """A markdown table with one row per result, recalls and accuracies as percentages with one decimal.

    The protocol of each data set is listed under the table. T→I is text-to-image retrieval
    (``image_retrieval_recall``), I→T image-to-text (``text_retrieval_recall``).
    """
    metrics = sorted(
        {key for result in results for key, value in result.items() if key not in _INFO_KEYS and _is_number(value)},
        key=_metric_order,
    )
    header = ["dataset", "images", "texts", "skipped", *(_column_title(key) for key in metrics)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for result in results:
        cells = [str(result.get("dataset", "")), *(_count(result.get(k)) for k in ("num_images", "num_texts"))]
        cells.append(_count(result.get("num_skipped")))
        cells.extend(f"{100 * result[key]:.1f}" if _is_number(result.get(key)) else "" for key in metrics)
        lines.append("| " + " | ".join(cells) + " |")
    models = sorted({str(result["model"]) for result in results if result.get("model")})
    notes = [""]
    if models:
        notes.append(f"Model: {', '.join(models)}. Recall and accuracy in %.")
    for result in results:
        dropped = result.get("num_dropped")
        left_out = ""
        if isinstance(dropped, int) and dropped:
            left_out = f" ({dropped:,} file(s) left out by the data set reader, as its warning said)"
        if result.get("protocol") or left_out:
            notes.append(f"- {result.get('dataset')}: {result.get('protocol') or ''}{left_out}")
    return "\n".join(lines + notes) + "\n"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else ""


def write_report(
    results: Sequence[dict[str, Any]], json_path: PathLike | None, markdown_path: PathLike | None
) -> None:
    """Write results as a JSON list (stable key order) and/or a markdown table (:func:`format_markdown`).

    Args:
        results: Dicts from :func:`evaluate` / :func:`evaluate_dataset`.
        json_path: Where to write the JSON list, or ``None``.
        markdown_path: Where to write the markdown table, or ``None``.
    """
    ordered = [_ordered(dict(result)) for result in results]
    if json_path is not None:
        path = Path(json_path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as handle:
            json.dump(ordered, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
        logger.info("wrote %d results to %s", len(ordered), path)
    if markdown_path is not None:
        path = Path(markdown_path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(format_markdown(ordered), encoding="utf-8")
        logger.info("wrote the results table to %s", path)


def clip_benchmark_records(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Results in CLIP_benchmark's output layout: one ``{"dataset", "model", "pretrained", "task", "metrics",
    "language"}`` dict per result, ``metrics`` holding only the metric values.

    CLIP_benchmark names a model by an open_clip architecture (``model``) and its weights (``pretrained``); a longclip
    model is one checkpoint, so both hold the name it was evaluated under.
    """
    records = []
    for result in results:
        ordered = _ordered(dict(result))
        metrics = {key: value for key, value in ordered.items() if key not in _INFO_KEYS and _is_number(value)}
        model = result.get("model")
        records.append(
            {
                "dataset": result["dataset"],
                "model": model,
                "pretrained": model,
                "task": result["task"],
                "metrics": metrics,
                "language": "en",
            }
        )
    return records


def write_clip_benchmark(results: Sequence[dict[str, Any]], directory: PathLike) -> list[Path]:
    """Write each result as ``DIRECTORY/{dataset}_{task}.json`` in CLIP_benchmark's layout (see
    :func:`clip_benchmark_records`).

    Returns:
        The files written, in the order of ``results``.

    Raises:
        NotADirectoryError: If ``directory`` exists and is a file.
        ValueError: If two results have the same data set and task (one would overwrite the other).
    """
    folder = Path(directory).expanduser()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file; CLIP_benchmark results are written into a directory")
    records = clip_benchmark_records(results)
    names = [f"{record['dataset']}_{record['task']}.json" for record in records]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"two results would both be written to {folder / repeated[0]} (same data set and task)")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, record in zip(names, records, strict=True):
        path = folder / name
        path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
        paths.append(path)
    logger.info("wrote %d CLIP_benchmark result files to %s", len(paths), folder)
    return paths
