"""Texts/s and images/s of one model through PyTorch and through onnxruntime, on this machine's CPU.

What it measures
----------------
The same model is exported with ``longclip export onnx`` (into a temporary directory unless ``--onnx DIR`` names an
existing export) and both runtimes embed the same inputs through the same ``embed_texts`` / ``embed_images``
helpers, so tokenization, batching and preprocessing are identical and only the forward passes differ:

* texts: a deterministic mix of short (~15 tokens) and long (150-230 tokens) captions;
* images: synthetic RGB images (random noise with a square), preprocessed once beforehand so that image decoding
  is not timed.

Each measurement follows one untimed warm-up batch, runs ``--repeats`` times and reports the best (least disturbed
by other processes). The script also prints the largest difference between the two runtimes' features.

The model is ``--model`` (anything ``longclip.load`` reads), or by default a randomly initialised CLIP of
Long-CLIP-B's size (ViT-B/16 vision tower at 224 px, 12-layer 512-wide text tower, 248 positions): random weights
cost the same as trained ones, and nothing is downloaded.

Run it from the repository root::

    PYTHONPATH=src python benchmarks/onnx_throughput.py
    PYTHONPATH=src python benchmarks/onnx_throughput.py --model runs/reproduce/longclip/model --threads 2
    PYTHONPATH=src python benchmarks/onnx_throughput.py --json onnx.json
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import longclip
from longclip.integrations.onnx_export import export_onnx, load_onnx


def base_sized_model(directory: Path) -> Path:
    """A random CLIP with Long-CLIP-B's shapes, saved as a transformers directory."""
    from transformers import CLIPConfig, CLIPModel

    text = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8)
    text.update(max_position_embeddings=248, vocab_size=49408, hidden_act="quick_gelu", eos_token_id=49407)
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    vision.update(image_size=224, patch_size=16, hidden_act="quick_gelu")
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=512)).save_pretrained(directory)
    return directory


def captions(count: int) -> list[str]:
    rng = random.Random(0)
    words = "red blue green circle square small large striped dotted top left corner centre picture shape".split()
    return [" ".join(rng.choice(words) for _ in range(rng.choice([12, 160]))) for _ in range(count)]


def images(count: int, size: int, preprocess) -> list[torch.Tensor]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        pixels[size // 4 : size // 2, size // 4 : size // 2] = (200, 30, 30)
        out.append(preprocess(pixels))
    return out


def best_rate(fn, count: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return count / min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a model longclip.load reads (default: a random Long-CLIP-B-sized CLIP)")
    parser.add_argument("--onnx", help="an existing export of the same model (default: export to a temp dir)")
    parser.add_argument("--num-texts", type=int, default=64)
    parser.add_argument("--num-images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="threads for both runtimes (default: their own choice)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model or base_sized_model(Path(tmp) / "model")
        model = longclip.load(model_path, dtype="float32")[0]
        export = args.onnx or export_onnx(model, Path(tmp) / "onnx")
        runtime = load_onnx(export, threads=args.threads)[0]

        texts = captions(args.num_texts)
        pixels = images(args.num_images, model.image_transform.image_size, model.image_transform)
        results = {}
        features = {}
        for name, m in (("pytorch", model), ("onnxruntime", runtime)):
            m.embed_texts(texts[: args.batch_size], batch_size=args.batch_size)  # warm-up
            m.embed_images(pixels[: args.batch_size], batch_size=args.batch_size)
            with torch.inference_mode():
                text_rate = best_rate(
                    lambda m=m: m.embed_texts(texts, batch_size=args.batch_size), len(texts), args.repeats
                )
                image_rate = best_rate(
                    lambda m=m: m.embed_images(pixels, batch_size=args.batch_size), len(pixels), args.repeats
                )
                features[name] = (m.embed_texts(texts[:8]), m.embed_images(pixels[:8]))
            results[name] = {"texts_per_s": round(text_rate, 2), "images_per_s": round(image_rate, 2)}
        difference = max(
            float((a - b).abs().max()) for a, b in zip(features["pytorch"], features["onnxruntime"], strict=True)
        )

    print(f"model: {args.model or 'random Long-CLIP-B-sized CLIP'}; batch {args.batch_size}; best of {args.repeats}")
    print(f"{'runtime':<12} {'texts/s':>10} {'images/s':>10}")
    for name, row in results.items():
        print(f"{name:<12} {row['texts_per_s']:>10.1f} {row['images_per_s']:>10.1f}")
    print(f"largest feature difference between runtimes: {difference:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "max_difference": difference}, indent=2))


if __name__ == "__main__":
    main()
