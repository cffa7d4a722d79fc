"""``longclip reproduce``: Long-CLIP's experiment in miniature, offline, on a CPU.

1. Generate the synthetic long-caption benchmark (``longclip.data.synthetic``): pre-training and fine-tuning
   scenes, and a test set of "twin" scenes whose long captions agree on their first 77 tokens or more.
2. Pre-train a small CLIP from scratch at 77 tokens on the short captions (one-sentence summaries), as CLIP's own
   pre-training sees mostly short text. It is saved (``OUTPUT/clip77``) and reused by later runs.
3. Fine-tune three variants on the long captions: linear stretching; knowledge-preserving stretching (KPS);
   KPS plus primary component matching (Long-CLIP). TULIP's two stages on the same data, each as long as one
   Long-CLIP fine-tune: distil the pre-trained CLIP's text embeddings into a rotary student, then fine-tune it. Where
   the packaged language models are installed, LLM2CLIP rows: the fine-tuning captions embedded by a frozen MiniLM
   (and SmolLM2), an adapter and the vision tower trained on that cache.
4. Compare them all on the test set: long-caption retrieval R@1 in both directions, short-caption R@1 (each image
   against every distinct summary), zero-shot classification of the dominant colour, and the effective-length
   curve. Results go to ``results.json``, ``results.md`` and ``effective_length*.png``.

The numbers are whatever the run measures; a miniature trained for minutes need not show every effect of the
paper, and the README reports what it does show.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scale:
    """Sizes of one reproduce run (``full`` fits 15 minutes on 2 CPU cores, ``quick`` about one)."""

    pretrain_scenes: int
    finetune_scenes: int
    test_groups: int
    group_size: int
    image_size: int
    width: int  # both towers; heads = width // 64 as in OpenAI CLIP
    layers: int
    patch: int
    batch_size: int
    pretrain_epochs: int
    pretrain_lr: float
    finetune_epochs: int
    finetune_lr: float
    probe_lengths: tuple[int, ...]


SCALES = {
    "full": Scale(
        pretrain_scenes=4000, finetune_scenes=1500, test_groups=100, group_size=5, image_size=64, width=128,
        layers=4, patch=8, batch_size=128, pretrain_epochs=8, pretrain_lr=5e-4, finetune_epochs=2,
        finetune_lr=1e-4, probe_lengths=(5, 10, 20, 30, 50, 77, 100, 150, 200, 248),
    ),
    "quick": Scale(
        pretrain_scenes=192, finetune_scenes=96, test_groups=6, group_size=4, image_size=32, width=64, layers=2,
        patch=8, batch_size=32, pretrain_epochs=2, pretrain_lr=5e-4, finetune_epochs=1, finetune_lr=1e-4,
        probe_lengths=(10, 40, 77, 150, 248),
    ),
}  # fmt: skip

PRETRAINED = "{pretrained}"  # in a stage's settings: the path of the pre-trained CLIP (e.g. a teacher)

# name, description, training stages run in turn on the fine-tuning split, each starting from the previous one's
# model: (method, settings; common TrainConfig settings such as lr and the method's own options together).
# None: the pre-trained 77-token CLIP itself.
Stage = tuple[str, dict]
VARIANTS: tuple[tuple[str, str, tuple[Stage, ...] | None], ...] = (
    ("clip77", "CLIP, 77 tokens (pre-trained)", None),
    ("linear", "linear stretch + fine-tune", (("longclip", {"stretch": "linear", "short_loss_weight": 0.0}),)),
    ("kps", "KPS + fine-tune", (("longclip", {"stretch": "kps", "short_loss_weight": 0.0}),)),
    ("longclip", "KPS + PCM (Long-CLIP)", (("longclip", {"stretch": "kps", "short_loss_weight": 1.0}),)),
    (
        "tulip",
        "rotary distill + fine-tune (TULIP)",
        (("tulip-distill", {"teacher": PRETRAINED, "lr": 5e-4}), ("tulip-finetune", {})),
    ),
)
# LLM2CLIP rows: a packaged language model, frozen, as the text tower; an adapter and the pre-trained CLIP's vision
# tower trained on its cached caption embeddings (rows whose model package is not installed are left out).
LLM2CLIP_VARIANTS = (
    ("llm2clip-minilm", "LLM2CLIP: frozen MiniLM + adapter", "minilm"),
    ("llm2clip-smollm2", "LLM2CLIP: frozen SmolLM2-135M + adapter", "smollm2"),
)
# Prompts for the dominant colour, phrased like the summaries ("..., red being the most common colour.").
ATTRIBUTE_TEMPLATES = ("a picture of shapes, {} being the most common colour.", "{} being the most common colour.")


def small_clip_config(scale: Scale, context: int = 77):
    """The from-scratch CLIP of the miniature: OpenAI's layout shrunk (quick-GELU, 64-wide heads)."""
    from transformers import CLIPConfig

    from .tokenizer import EOT_ID, SOT_ID, VOCAB_SIZE

    tower = dict(
        hidden_size=scale.width, intermediate_size=4 * scale.width, num_hidden_layers=scale.layers,
        num_attention_heads=max(1, scale.width // 64), hidden_act="quick_gelu",
    )  # fmt: skip
    ids = dict(vocab_size=VOCAB_SIZE, bos_token_id=SOT_ID, eos_token_id=EOT_ID)
    text = dict(tower, max_position_embeddings=context, **ids)
    vision = dict(tower, image_size=scale.image_size, patch_size=scale.patch)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=scale.width)


def prepare_data(directory: Path, scale: Scale, seed: int) -> dict[str, Path]:
    """Write the benchmark unless the same one (same sizes and seed) is already there."""
    from .data.synthetic import write_benchmark

    settings = dict(
        seed=seed, pretrain=scale.pretrain_scenes, finetune=scale.finetune_scenes, test_groups=scale.test_groups,
        group_size=scale.group_size, image_size=scale.image_size,
    )  # fmt: skip
    stamp = directory / "reproduce-data.json"
    if stamp.is_file():
        written = json.loads(stamp.read_text())
        if isinstance(written, dict) and written.get("settings") == settings:
            logger.info("reusing the benchmark in %s", directory)
            return {key: Path(path) for key, path in written["paths"].items()}
    paths = write_benchmark(directory, **settings)
    stamp.write_text(json.dumps({"settings": settings, "paths": {key: str(path) for key, path in paths.items()}}))
    return paths


def pretrain(
    directory: Path, data: dict[str, Path], scale: Scale, seed: int, device: str | None, progress: bool = True
) -> Path:
    """Pre-train the small CLIP at 77 tokens on short captions, or reuse the one saved with the same settings.

    The from-scratch model is written out first (``pretrain-run/init``) and trained with ``longclip train``'s plain
    CLIP method on the short captions, as a user would run it.
    """
    import shutil

    from transformers import CLIPModel

    from .models import LongCLIPModel
    from .train import TrainConfig, train
    from .train.tasks import CLIPOptions

    settings = {"scale": asdict(scale), "seed": seed}
    stamp = directory / "reproduce.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == json.loads(json.dumps(settings)):
        logger.info("reusing the pre-trained CLIP in %s", directory)
        return directory

    run = directory.parent / "pretrain-run"
    torch.manual_seed(seed)
    LongCLIPModel(CLIPModel(small_clip_config(scale))).save_pretrained(run / "init")
    config = TrainConfig.for_method(
        "clip", model=str(run / "init"), data=str(data["pretrain"]), output=str(run), epochs=scale.pretrain_epochs,
        batch_size=scale.batch_size, lr=scale.pretrain_lr, weight_decay=0.1, warmup_steps=20, num_workers=0,
        seed=seed, save_every=10**9, keep_checkpoints=1, device=device, overwrite=True, progress=progress,
    )  # fmt: skip
    # Pre-training text is the short caption: CLIP's own pre-training sees mostly short alt-text.
    label = f"pre-training CLIP-77 -> {directory}"
    summary = train(config, CLIPOptions(caption="short", label_smoothing=0.0), description=label)
    if directory.exists():
        shutil.rmtree(directory)
    shutil.move(summary["model"], directory)
    stamp.write_text(json.dumps(settings))
    return directory


def finetune(
    source: Path, output: Path, data: dict[str, Path], scale: Scale, seed: int, device, stages: tuple[Stage, ...],
    progress: bool = True, description: str = "",
) -> Path:  # fmt: skip
    """Train one variant's stages from the pre-trained CLIP with ``longclip train``'s methods; returns the model.

    Each stage runs for ``scale.finetune_epochs`` on the fine-tuning split at ``scale.finetune_lr`` unless its
    settings say otherwise; a variant of several stages writes them to ``output/<method>``.
    """
    from dataclasses import fields

    from .train import TrainConfig, get_task, train

    path = source
    for method, settings in stages:
        settings = {k: str(source) if v == PRETRAINED else v for k, v in settings.items()}
        own = {f.name for f in fields(get_task(method).options_class)}
        common = dict(
            epochs=scale.finetune_epochs, batch_size=scale.batch_size, lr=scale.finetune_lr, warmup_steps=10,
            num_workers=0, seed=seed, save_every=10**9, keep_checkpoints=1, device=device, overwrite=True,
            progress=progress,
        )  # fmt: skip
        common.update({k: v for k, v in settings.items() if k not in own})
        run = output if len(stages) == 1 else output / method
        config = TrainConfig.for_method(method, model=str(path), data=str(data["finetune"]), output=str(run), **common)
        options = get_task(method).options_class(**{k: v for k, v in settings.items() if k in own})
        label = f"{method} {description or output.name} -> {run}"  # names the variant on its progress bar
        path = Path(train(config, options, description=label)["model"])
    return path


def llm2clip(
    source: Path, output: Path, data: dict[str, Path], scale: Scale, seed: int, device, language: str,
    progress: bool = True,
):  # fmt: skip
    """Embed the fine-tuning captions with a frozen packaged language model, then train an adapter and the CLIP's
    vision tower on the cache (``longclip llm-embed`` + ``longclip train --method llm2clip``); returns the model path.

    The adapter starts from random weights, so it gets a 10x learning rate and twice the epochs of fine-tuning.
    """
    from .train import TrainConfig, train
    from .train.tasks import LLM2CLIPOptions
    from .train.tasks.llm2clip import build_text_cache

    cache = output / "text-cache"
    build_text_cache(language, str(data["finetune"]), cache, batch_size=32, device=device)
    config = TrainConfig.for_method(
        "llm2clip", model=str(source), data=str(data["finetune"]), output=str(output),
        epochs=2 * scale.finetune_epochs, batch_size=scale.batch_size, lr=10 * scale.finetune_lr, warmup_steps=10,
        num_workers=0, seed=seed, save_every=10**9, keep_checkpoints=1, device=device, overwrite=True,
        progress=progress,
    )  # fmt: skip
    label = f"llm2clip {language} -> {output}"
    return Path(train(config, LLM2CLIPOptions(text_cache=str(cache)), description=label)["model"])


def available_llm2clip_variants(quick: bool = False) -> list[tuple[str, str, str]]:
    """The LLM2CLIP rows whose language model is installed (its package, and gguf for a GGUF model).

    The MiniLM row only, unless ``LONGCLIP_REPRODUCE_SMOLLM2=1`` asks for the SmolLM2 row too (full scale only):
    embedding the captions with SmolLM2-135M takes far longer on a CPU than the time budget of the whole run.
    """
    import importlib.util

    from .models.language import packaged_model_path

    rows = []
    with_smollm2 = not quick and os.environ.get("LONGCLIP_REPRODUCE_SMOLLM2") == "1"
    for name, description, language in LLM2CLIP_VARIANTS if with_smollm2 else LLM2CLIP_VARIANTS[:1]:
        try:
            _, gguf_file = packaged_model_path(language)
        except (ModuleNotFoundError, FileNotFoundError) as e:
            logger.info("leaving out %s: %s", name, e)
            continue
        if gguf_file and importlib.util.find_spec("gguf") is None:
            logger.info("leaving out %s: reading %s needs the gguf package", name, gguf_file)
            continue
        rows.append((name, description, language))
    return rows


def evaluate(model, data: dict[str, Path], scale: Scale) -> tuple[dict[str, float], list[dict[str, float]]]:
    """The comparison metrics of one model on the test split, and its effective-length curve."""
    from .data import read_pairs
    from .data.synthetic import COLOURS
    from .eval.effective_length import effective_length_curve
    from .eval.metrics import retrieval_metrics
    from .eval.zeroshot import build_classifier, classification_metrics

    test = read_pairs(data["test"])
    attributes = json.loads(Path(data["attributes"]).read_text())
    images = [p.image for p in test]
    index = torch.arange(len(test))
    image_features = model.embed_images(images, progress=False)
    long_features = model.embed_texts([p.caption for p in test], progress=False)
    long = retrieval_metrics(image_features, long_features, index, ks=(1,))
    # Summaries are shared by many scenes, so exact-match retrieval cannot score them: each image is instead asked
    # to pick its own summary among all distinct ones.
    summaries = sorted({p.short_caption for p in test})
    summary_of = torch.tensor([summaries.index(p.short_caption) for p in test])
    summary_features = model.embed_texts(summaries, progress=False)
    short = classification_metrics(image_features @ summary_features.T, summary_of, ks=(1,))
    colours = list(COLOURS)
    classifier = build_classifier(model, colours, ATTRIBUTE_TEMPLATES)
    dominant = torch.tensor([colours.index(a["dominant_colour"]) for a in attributes])
    attribute = classification_metrics(image_features @ classifier.T, dominant, ks=(1,))
    metrics = {
        "long_text_to_image_r1": long["image_retrieval_recall@1"],
        "long_image_to_text_r1": long["text_retrieval_recall@1"],
        "short_image_to_summary_r1": short["acc1"],
        "dominant_colour_acc": attribute["acc1"],
    }
    curve = effective_length_curve(model, images, [p.caption for p in test], index, lengths=scale.probe_lengths)
    return metrics, curve


def reproduce(
    output: str | os.PathLike = "runs/reproduce",
    quick: bool = False,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
) -> list[dict]:
    """Run the whole miniature and write ``results.json``, ``results.md`` and the effective-length plots.

    Returns:
        One result row per model: name, description and the metrics of ``evaluate``.
    """
    from .api import load
    from .eval.effective_length import plot_effective_length

    scale = SCALES["quick" if quick else "full"]
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = prepare_data(output / "data", scale, seed)
    clip77 = pretrain(output / "clip77", data, scale, seed, device, progress)

    rows, curves = [], {}

    def add_row(name: str, description: str, path: Path) -> None:
        model, _ = load(path, device=device or "cpu", dtype="float32")
        metrics, curve = evaluate(model, data, scale)
        rows.append({"model": name, "description": description, "path": str(path), **metrics})
        curves[description] = curve
        plot_effective_length({description: curve}, output / f"effective_length_{name}.png", title=description)
        logger.info("%s: %s", description, metrics)

    for name, description, variant in VARIANTS:
        add_row(name, description, clip77 if variant is None else finetune(
            clip77, output / name, data, scale, seed, device, variant, progress, description))  # fmt: skip
    for name, description, language in available_llm2clip_variants(quick):
        add_row(name, description, llm2clip(clip77, output / name, data, scale, seed, device, language, progress))
    plot_effective_length(curves, output / "effective_length.png", title="effective length (synthetic test set)")

    meta = json.loads(Path(data["meta"]).read_text())
    summary = {
        "scale": "quick" if quick else "full",
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 1),
        "test_scenes": scale.test_groups * scale.group_size,
        "benchmark": meta,
        "results": rows,
        "effective_length": curves,
    }
    (output / "results.json").write_text(json.dumps(summary, indent=2))
    (output / "results.md").write_text(results_markdown(rows, scale))
    return rows


def results_markdown(rows: list[dict], scale: Scale) -> str:
    """The comparison table, percentages with one decimal, with chance levels under it."""
    header = (
        "| model | long T→I R@1 | long I→T R@1 | short I→summary R@1 | dominant colour acc |\n"
        "|---|---:|---:|---:|---:|\n"
    )
    keys = ("long_text_to_image_r1", "long_image_to_text_r1", "short_image_to_summary_r1", "dominant_colour_acc")
    lines = [f"| {r['description']} | " + " | ".join(f"{100 * r[k]:.1f}" for k in keys) + " |" for r in rows]
    scenes = scale.test_groups * scale.group_size
    chance = f"\nChance: long R@1 {100 / scenes:.1f} ({scenes} test scenes in twin groups of {scale.group_size}).\n"
    return header + "\n".join(lines) + "\n" + chance
