"""Text-embedding throughput of a Long-CLIP (248-token) model: naive 248-wide padding vs. trimmed batches.

What it measures
----------------
A Long-CLIP text tower is causal and pools the end-of-text token, so the zero padding after that token never
changes a text's features; every padded position is wasted work. This script embeds the same deterministic mix of
captions -- half short (~15 tokens), half long (150-230 tokens), shuffled together -- three ways and reports
texts/s, the speed-up against the naive way, and the largest difference between the normalized features:

``padded-248``
    What the original Long-CLIP code does: ``longclip.tokenize(texts, truncate=True)`` gives ``[N, 248]`` ids and
    every batch goes, 248 positions wide, straight into ``CLIPModel.get_text_features``.
``trimmed``
    Batches in input order through ``LongCLIPModel.encode_text``, which cuts each batch to its longest text. A batch
    that mixes one long text with short ones is still wide.
``embed_texts``
    ``LongCLIPModel.embed_texts(texts, batch_size=B)``: texts sorted by token count and grouped by
    ``longclip.batching.plan_batches`` (at most B texts and a token budget per batch, cut where padding plus a
    per-batch overhead is least), so short texts are batched (and padded) only with short texts.

The padded-248 baseline always runs in float32 (what the original code computes on a CPU); ``--dtype`` (``auto``
by default: bf16 where the processor computes it natively, else float32) applies to the other strategies, so the
ratio printed is against the original-style computation. The *exact-token bound* is the speed-up that computing
every text at exactly its own length would give over padding to 248, counted in FLOPs of the text tower (matrix
products ``24 d^2`` per token and layer, attention ``4 d L`` per token and layer); "fraction of the bound" is the
measured speed-up of ``embed_texts`` (same dtype as the baseline: float32) divided by it.

Every timing includes tokenization, starts after one warm-up batch of that strategy, runs under
``torch.inference_mode()`` and is taken with ``time.perf_counter`` (CUDA is synchronized before each reading).

The model is a randomly initialised transformers ``CLIPModel`` (nothing is downloaded): its text tower has the size
of Long-CLIP-B / ViT-B/16 (width 512, 8 heads, 12 layers, MLP 2048, vocabulary 49408, 248 positions, quick_gelu,
projection 512); random weights cost the same as trained ones. The vision tower is tiny (width 64, 1 layer,
32-pixel images) because it is not timed.

Run it from the repository root::

    PYTHONPATH=src python benchmarks/text_throughput.py                      # dtype auto on the CPU
    PYTHONPATH=src python benchmarks/text_throughput.py --dtype float32
    PYTHONPATH=src python benchmarks/text_throughput.py --device cuda --dtype float16 --num-texts 4096
    PYTHONPATH=src python benchmarks/text_throughput.py --json results.json

The defaults (128 texts, batch 32, float32) take about a minute on two idle CPU cores, and up to about four minutes
when other processes compete for them (OpenMP threads then wait on each other; ``--threads 1`` suffers less from
that). The speed-up over padded-248 cannot exceed ``248 / mean token count`` of the mix (about 2.4x for half ~15-
and half ~190-token captions): the script prints this ceiling as "ideal speed-up" (positions) and the
FLOP-counted exact-token bound.

Half precision on a CPU without native bf16/fp16 matrix units (e.g. AVX2-only) is emulated and much *slower* than
float32 (about 10x on an AVX2 EPYC); it is offered for devices that support it (CUDA, or CPUs with AVX512-BF16 /
AMX), and the agreement tolerance is loosened to the dtype's precision.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers import CLIPConfig, CLIPModel

import longclip
import longclip.precision
from longclip import LongCLIPModel
from longclip.batching import plan_batches
from longclip.precision import choose_dtype

CONTEXT_LENGTH = 248
SHORT_RANGE = (10, 20)  # tokens, start and end included
LONG_RANGE = (150, 230)
# Largest acceptable |difference| between a strategy's normalized features and padded-248's, per dtype: trimming
# changes only the shapes of the matrix products (hence the summation order), so differences are rounding noise.
TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 5e-3}

COLORS = ["red", "blue", "green", "yellow", "white", "black", "grey", "orange", "purple", "brown", "pink", "golden"]
OBJECTS = ["car", "dog", "cat", "bicycle", "house", "boat", "tree", "bird", "horse", "train", "umbrella", "bench"]
PLACES = [
    "parked on a street",
    "in a sunny park",
    "next to a river",
    "on a wooden table",
    "in front of a brick wall",
    "on a snowy hill",
    "at the beach",
    "inside a busy kitchen",
]
SUBJECTS = [
    "An elderly man",
    "A young woman",
    "A small child",
    "A group of tourists",
    "A street musician",
    "A tired cyclist",
    "A police officer",
    "A golden retriever",
]
ACTIONS = [
    "is walking slowly along",
    "is sitting quietly beside",
    "is pointing at something near",
    "is taking a photograph of",
    "is leaning against",
    "is running towards",
]
ADJECTIVES = ["weathered", "crowded", "narrow", "brightly lit", "quiet", "ancient", "modern", "muddy", "colourful"]
SCENES = ["market square", "harbour", "railway platform", "mountain trail", "city bridge", "garden path", "library"]
DETAILS = [
    "Behind them, a row of tall buildings with glass windows reflects the late afternoon sun.",
    "In the background a few clouds drift across a pale blue sky above distant hills.",
    "Several bicycles are chained to a metal railing on the left side of the frame.",
    "The ground is covered with fallen leaves in shades of red, orange and brown.",
    "A wooden sign with faded white letters hangs above a closed shop door.",
    "Light rain has left small puddles that mirror the street lamps and passing cars.",
    "On the right, a vendor arranges fresh fruit in neat pyramids on a striped cart.",
    "The photograph is slightly overexposed, and the colours look warm and soft.",
    "Two pigeons are pecking at crumbs near a bench painted dark green.",
    "Far away, a red tram crosses an intersection while pedestrians wait at the lights.",
]


# --- the caption mix -------------------------------------------------------------------------------------------


def short_caption(rng: random.Random) -> str:
    caption = f"a photo of a {rng.choice(COLORS)} {rng.choice(OBJECTS)} {rng.choice(PLACES)}"
    if rng.random() < 0.5:
        caption += f" with a {rng.choice(COLORS)} {rng.choice(OBJECTS)}"
    return caption


def long_sentence(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(DETAILS)
    return (
        f"{rng.choice(SUBJECTS)} {rng.choice(ACTIONS)} a {rng.choice(ADJECTIVES)} {rng.choice(COLORS)} "
        f"{rng.choice(OBJECTS)} in the {rng.choice(ADJECTIVES)} {rng.choice(SCENES)}."
    )


def long_caption(rng: random.Random, tokenizer: longclip.LongCLIPTokenizer) -> str:
    """Sentences appended until the text, counted with the tokenizer, reaches a random length in LONG_RANGE."""
    low, high = LONG_RANGE
    target = rng.randint(low, high)
    sentences: list[str] = []
    while True:
        candidate = [*sentences, long_sentence(rng)]
        count = tokenizer.count_tokens(" ".join(candidate))[0]
        if count > high:
            if tokenizer.count_tokens(" ".join(sentences))[0] >= low:
                break
            continue  # too long a sentence to reach the range without overshooting it: draw another
        sentences = candidate
        if count >= target:
            break
    return " ".join(sentences)


def make_captions(
    num_texts: int, seed: int, tokenizer: longclip.LongCLIPTokenizer, short_fraction: float = 0.5
) -> tuple[list[str], list[bool]]:
    """Short and long captions (``short_fraction`` of them short), shuffled; also which of them are long."""
    rng = random.Random(seed)
    num_long = num_texts - round(num_texts * short_fraction)
    captions = [(short_caption(rng), False) for _ in range(num_texts - num_long)]
    captions += [(long_caption(rng, tokenizer), True) for _ in range(num_long)]
    rng.shuffle(captions)
    texts, is_long = [c for c, _ in captions], [long_ for _, long_ in captions]
    for text, long_, count in zip(texts, is_long, tokenizer.count_tokens(texts), strict=True):
        low, high = LONG_RANGE if long_ else SHORT_RANGE
        if not low <= count <= high:
            raise RuntimeError(f"caption of {count} tokens is outside {low}-{high}: {text!r}")
    return texts, is_long


def describe_lengths(counts: Sequence[int]) -> str:
    if not counts:
        return "none"
    return f"n={len(counts)}, min {min(counts)}, median {statistics.median(counts):g}, max {max(counts)}"


# --- the model -------------------------------------------------------------------------------------------------


def build_model(device: str, dtype: torch.dtype, seed: int) -> LongCLIPModel:
    """A randomly initialised CLIP with a ViT-B/16-sized, 248-position text tower and a tiny vision tower."""
    text_config = {
        "vocab_size": 49408,
        "hidden_size": 512,
        "intermediate_size": 2048,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "max_position_embeddings": CONTEXT_LENGTH,
        "hidden_act": "quick_gelu",
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 0,
        "projection_dim": 512,
    }
    vision_config = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 1,
        "num_attention_heads": 1,
        "image_size": 32,
        "patch_size": 16,
        "hidden_act": "quick_gelu",
        "projection_dim": 512,
    }
    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=512)
    torch.manual_seed(seed)
    clip = CLIPModel(config)
    return LongCLIPModel(clip).to(device=device, dtype=dtype).eval()


# --- the strategies --------------------------------------------------------------------------------------------


def batched(items: Sequence, size: int) -> list:
    return [items[i : i + size] for i in range(0, len(items), size)]


def run_padded(model: LongCLIPModel, texts: Sequence[str], batch_size: int) -> torch.Tensor:
    """The original code's way: every text padded to 248 and fed to the transformer at full width."""
    ids = longclip.tokenize(list(texts), truncate=True)
    outputs = []
    for batch in batched(ids, batch_size):
        features = model.clip.get_text_features(input_ids=batch.to(model.device)).pooler_output
        outputs.append(F.normalize(features, dim=-1).float())
    return torch.cat(outputs).cpu()


def run_trimmed(model: LongCLIPModel, texts: Sequence[str], batch_size: int) -> torch.Tensor:
    """Input-order batches through ``encode_text``, which cuts each batch to its longest text."""
    ids = longclip.tokenize(list(texts), truncate=True)
    outputs = [model.encode_text(batch, normalize=True).float() for batch in batched(ids, batch_size)]
    return torch.cat(outputs).cpu()


def run_embed_texts(model: LongCLIPModel, texts: Sequence[str], batch_size: int) -> torch.Tensor:
    """Length-sorted batches: ``embed_texts``."""
    return model.embed_texts(list(texts), batch_size=batch_size, progress=False)


STRATEGIES: dict[str, Callable[[LongCLIPModel, Sequence[str], int], torch.Tensor]] = {
    "padded-248": run_padded,
    "trimmed": run_trimmed,
    "embed_texts": run_embed_texts,
}


def positions_fed(counts: Sequence[int], batch_size: int, strategy: str) -> int:
    """Token positions the transformer processes (batch size x batch width, summed over batches)."""
    counts = [min(c, CONTEXT_LENGTH) for c in counts]
    if strategy == "padded-248":
        return len(counts) * CONTEXT_LENGTH
    if strategy == "embed_texts":
        return sum(len(b) * max(counts[i] for i in b) for b in plan_batches(counts, batch_size))
    return sum(len(batch) * max(batch) for batch in batched(counts, batch_size))


def text_tower_flops(length: int, width: int = 512, layers: int = 12) -> int:
    """FLOPs of one text of ``length`` tokens through the text tower: ``layers * L * (24 d^2 + 4 d L)``."""
    return layers * length * (24 * width * width + 4 * width * length)


def exact_token_bound(counts: Sequence[int]) -> float:
    """Speed-up of computing each text at its own length over padding all to 248, in text-tower FLOPs."""
    counts = [min(c, CONTEXT_LENGTH) for c in counts]
    return len(counts) * text_tower_flops(CONTEXT_LENGTH) / sum(text_tower_flops(c) for c in counts)


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def warm_up(name: str, model: LongCLIPModel, texts: list[str], batch_size: int, device: str) -> None:
    """One batch of the strategy, untimed: first-call allocations and kernel selection."""
    with torch.inference_mode():
        STRATEGIES[name](model, texts[:batch_size], batch_size)
    synchronize(device)


def time_strategy(
    name: str, model: LongCLIPModel, texts: list[str], batch_size: int, device: str
) -> tuple[float, torch.Tensor]:
    """Seconds one strategy takes to embed all texts, and its normalized float32 features."""
    with torch.inference_mode():
        synchronize(device)
        start = time.perf_counter()
        features = STRATEGIES[name](model, texts, batch_size)
        synchronize(device)
        seconds = time.perf_counter() - start
    return seconds, features


def half_precision_support() -> str:
    """What the CPU offers for bf16/fp16 matrix products, as torch sees it."""
    try:
        bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
        fp16 = torch.ops.mkldnn._is_mkldnn_fp16_supported()
    except (AttributeError, RuntimeError):
        return "unknown"
    return f"native bf16 {'yes' if bf16 else 'no'}, native fp16 {'yes' if fp16 else 'no'}"


# --- main ------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="dtype of the trimmed and embed_texts strategies (default auto); padded-248 is always float32",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--num-texts", type=int, default=128, help="texts embedded per strategy (default 128)")
    parser.add_argument("--batch-size", type=int, default=32, help="texts per forward pass (default 32)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--repeats", type=int, default=1, help="timed rounds, strategies interleaved; the fastest counts (default 1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the captions and the random weights")
    parser.add_argument(
        "--short-fraction", type=float, default=0.5, help="share of short (~15-token) captions (default 0.5)"
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.num_texts < 2:
        parser.error("--num-texts must be at least 2 (one short and one long text)")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    return args


def load_average() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        return "n/a"


def cpu_model_name() -> str:
    """The processor's model name as the OS reports it (``/proc/cpuinfo``), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    bf16 = longclip.precision.cpu_bf16_instructions()
    return (
        f"{cpu_model_name()}, {os.cpu_count()} logical CPUs, torch CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {', '.join(bf16) if bf16 else 'none'}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    total_start = time.perf_counter()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.dtype == "auto":
        choice = choose_dtype(args.device)
        dtype_name, dtype_reason = choice.name, f"auto: {choice.reason}"
    else:
        dtype_name, dtype_reason = args.dtype, "asked for"
    dtype = getattr(torch, dtype_name)
    load_before = load_average()

    tokenizer = longclip.LongCLIPTokenizer(CONTEXT_LENGTH)
    texts, is_long = make_captions(args.num_texts, args.seed, tokenizer, args.short_fraction)
    counts = tokenizer.count_tokens(texts)
    short_counts = [c for c, long_ in zip(counts, is_long, strict=True) if not long_]
    long_counts = [c for c, long_ in zip(counts, is_long, strict=True) if long_]

    baseline = build_model(args.device, torch.float32, args.seed)
    model = baseline if dtype == torch.float32 else build_model(args.device, dtype, args.seed)
    text_params = sum(p.numel() for p in baseline.clip.text_model.parameters())
    text_params += sum(p.numel() for p in baseline.clip.text_projection.parameters())

    # (label, strategy, model): padded-248 in float32 is the original-style reference for every ratio.
    runs = [("padded-248 float32", "padded-248", baseline)]
    runs += [(f"{name} {dtype_name}", name, model) for name in ("trimmed", "embed_texts")]
    if dtype != torch.float32:
        runs.append(("embed_texts float32", "embed_texts", baseline))

    print("# Long-CLIP text throughput")
    print()
    print(f"- machine: {machine_description(args.device)}; torch threads: {torch.get_num_threads()}")
    print(f"- torch {torch.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}")
    print(f"- dtype: {dtype_name} ({dtype_reason}); the padded-248 baseline runs in float32")
    print(
        f"- model: randomly initialised CLIPModel (random weights: throughput only); text tower ViT-B/16-sized "
        f"(width 512, 8 heads, 12 layers, MLP 2048, {CONTEXT_LENGTH} positions, {text_params / 1e6:.1f}M params incl. "
        f"projection), attention: {baseline.clip.config._attn_implementation}"
    )
    print(
        f"- texts: {args.num_texts} ({len(short_counts)} short, {len(long_counts)} long, shuffled, seed {args.seed})"
    )
    print(f"  - short, tokens: {describe_lengths(short_counts)}")
    print(f"  - long, tokens:  {describe_lengths(long_counts)}")
    print(
        f"- batch size {args.batch_size}; one warm-up batch per run; {args.repeats} timed round(s), runs "
        "interleaved, fastest counts; timings include tokenization"
    )
    print()

    for _, name, run_model in runs:
        warm_up(name, run_model, texts, args.batch_size, args.device)
    timings: dict[str, list[float]] = {label: [] for label, _, _ in runs}
    features: dict[str, torch.Tensor] = {}
    for round_ in range(args.repeats):
        for label, name, run_model in runs:
            seconds, features[label] = time_strategy(name, run_model, texts, args.batch_size, args.device)
            timings[label].append(seconds)
            print(f"  round {round_ + 1}, {label}: {seconds:.2f} s", file=sys.stderr, flush=True)

    reference = runs[0][0]
    padded_positions = positions_fed(counts, args.batch_size, "padded-248")
    padded_seconds = min(timings[reference])
    results: dict[str, dict] = {}
    for label, name, run_model in runs:
        seconds = min(timings[label])
        positions = positions_fed(counts, args.batch_size, name)
        cosine = (features[label] * features[reference]).sum(-1)
        results[label] = {
            "strategy": name,
            "dtype": str(run_model.dtype).removeprefix("torch."),
            "seconds": seconds,
            "texts_per_s": args.num_texts / seconds,
            "speedup_vs_padded_float32": padded_seconds / seconds,
            "max_abs_diff": float((features[label] - features[reference]).abs().max()),
            "min_cosine": float(cosine.min()),
            "positions_fed": positions,
            "ideal_speedup": padded_positions / positions,
            "all_seconds": timings[label],
        }
    bound = exact_token_bound(counts)

    print("| run | seconds | texts/s | vs padded-248 float32 | positions fed | ideal (positions) | min cosine |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, r in results.items():
        print(
            f"| {label} | {r['seconds']:.2f} | {r['texts_per_s']:.2f} | {r['speedup_vs_padded_float32']:.2f}x | "
            f"{r['positions_fed']:,} | {r['ideal_speedup']:.2f}x | {r['min_cosine']:.6f} |"
        )
    print()
    print(
        "positions fed: batch size x batch width, summed over batches; ideal (positions): padded-248's positions / "
        "these; min cosine: of the L2-normalized features vs padded-248 float32"
    )
    float32_embed = results["embed_texts float32" if dtype != torch.float32 else f"embed_texts {dtype_name}"]
    fraction = float32_embed["speedup_vs_padded_float32"] / bound
    print(f"Exact-token bound of this mix (text-tower FLOPs, padded-248 / own length): {bound:.2f}x")
    print(
        f"embed_texts float32 reaches {float32_embed['speedup_vs_padded_float32']:.2f}x = {fraction:.0%} of the "
        f"bound (target >= 90%: {'met' if fraction >= 0.9 else 'NOT met'})"
    )
    tolerance = TOLERANCE[dtype_name]
    agree = all(r["max_abs_diff"] <= TOLERANCE[r["dtype"]] for r in results.values())
    verdict = "yes" if agree else "NO"
    print(f"Features agree with padded-248 float32 within the dtype's tolerance ({tolerance:g}): {verdict}")
    wall = time.perf_counter() - total_start
    load_after = load_average()
    print(f"Total wall time (model build, captions, warm-up, all runs): {wall:.1f} s")
    print(f"Load average before / after: {load_before} / {load_after} (on a shared machine timings are noisy)")

    if args.json is not None:
        payload = {
            "device": args.device,
            "machine": machine_description(args.device),
            "dtype": dtype_name,
            "dtype_reason": dtype_reason,
            "num_texts": args.num_texts,
            "batch_size": args.batch_size,
            "threads": torch.get_num_threads(),
            "repeats": args.repeats,
            "seed": args.seed,
            "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
            "token_lengths": {"short": short_counts, "long": long_counts},
            "runs": results,
            "exact_token_bound": bound,
            "fraction_of_bound_float32": fraction,
            "features_agree": agree,
            "wall_seconds": wall,
            "load_average_before": load_before,
            "load_average_after": load_after,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"Results written to {args.json}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
