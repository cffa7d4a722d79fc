"""Image-embedding throughput of a ViT-B/16 image tower: the original OpenAI-style code vs. longclip.

What it measures
----------------
The same randomly initialised ViT-B/16 image tower (width 768, 12 layers, 12 heads, patch 16, 224 px, projection
512) embeds the same real photos (scikit-image's sample photos, decoded from PNG bytes each time) three or four ways:

``original float32``
    What OpenAI CLIP / Long-CLIP run: PIL bicubic resize of the short side, centre crop, normalize (written out here
    with PIL and numpy, as torchvision's transforms do it), then OpenAI's ``VisionTransformer`` module structure
    (``nn.MultiheadAttention`` on ``[L, N, D]``), in float32. Its weights are the longclip model's, converted to
    OpenAI's layout, so both compute the same function (the script checks the cosine similarity).
``longclip float32``
    ``model.embed_images(images)``: longclip's preprocessing and transformers' CLIP vision tower (SDPA attention).
``longclip <auto>``
    The same in the dtype ``dtype="auto"`` picks on this machine (bf16 where the processor computes it natively);
    shown only where that is not float32. ``--dtype`` forces one.
``longclip compiled``
    With ``--compile``: the vision tower under ``torch.compile`` (first call compiles, untimed).

Run from the repository root::

    PYTHONPATH=src python benchmarks/image_throughput.py
    PYTHONPATH=src python benchmarks/image_throughput.py --device cuda --num-images 512 --batch-size 64
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import CLIPConfig, CLIPModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from text_throughput import load_average, machine_description  # noqa: E402

from longclip.checkpoints.convert import hf_to_openai  # noqa: E402
from longclip.models import LongCLIPModel  # noqa: E402
from longclip.precision import choose_dtype  # noqa: E402

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry", "coins", "camera")


# --- the original code's image path, written out -------------------------------------------------------------


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, width * 4))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(width * 4, width))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    """OpenAI CLIP's image tower, module for module (so OpenAI-layout ``visual.*`` weights load into it)."""

    def __init__(self, image: int, patch: int, width: int, layers: int, heads: int, embed: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros((image // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, embed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype))
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        return self.ln_post(x[:, 0, :]) @ self.proj


def original_preprocess(data: bytes, size: int = 224) -> torch.Tensor:
    """torchvision's Resize(size, BICUBIC) + CenterCrop(size) + ToTensor + Normalize on a PIL image."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = image.size
    short, long_ = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long_ / short)
    image = image.resize((new_short, new_long) if w <= h else (new_long, new_short), Image.BICUBIC)
    w, h = image.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    array = (np.asarray(image, dtype=np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


# --- setup -----------------------------------------------------------------------------------------------------


def build_models(device: str, seed: int) -> tuple[LongCLIPModel, VisionTransformer]:
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  image_size=224, patch_size=16, hidden_act="quick_gelu", projection_dim=512)  # fmt: skip
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=1,
                max_position_embeddings=248, hidden_act="quick_gelu", projection_dim=512)  # fmt: skip
    torch.manual_seed(seed)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=512))
    for module in clip.modules():  # non-trivial layer norms and embeddings, so a wrong conversion would show
        if isinstance(module, nn.LayerNorm):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.1, 0.1)
    model = LongCLIPModel(clip).eval()
    openai = hf_to_openai(clip.state_dict(), clip.config, keep_positions=None)
    original = VisionTransformer(224, 16, 768, 12, 12, 512)
    original.load_state_dict({k.removeprefix("visual."): v for k, v in openai.items() if k.startswith("visual.")})
    return model.to(device), original.to(device).eval()


def photo_bytes(count: int) -> list[bytes]:
    from skimage import data

    encoded = []
    for name in PHOTOS:
        array = getattr(data, name)()
        image = Image.fromarray(array if array.ndim == 3 else np.stack([array] * 3, -1)).convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return [encoded[i % len(encoded)] for i in range(count)]


def timed(run: Callable[[], torch.Tensor], device: str) -> tuple[float, torch.Tensor]:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    features = run()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, features


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds, runs interleaved; fastest counts")
    parser.add_argument("--compile", action="store_true", help="also time the vision tower under torch.compile")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    choice = choose_dtype(args.device) if args.dtype == "auto" else None
    dtype = choice.dtype if choice else getattr(torch, args.dtype)
    model, original = build_models(args.device, args.seed)
    images = photo_bytes(args.num_images)

    def run_original(batch: list[bytes]) -> torch.Tensor:
        out = []
        with torch.inference_mode():
            for i in range(0, len(batch), args.batch_size):
                pixels = torch.stack([original_preprocess(b) for b in batch[i : i + args.batch_size]])
                out.append(F.normalize(original(pixels.to(args.device)), dim=-1).float().cpu())
        return torch.cat(out)

    def run_longclip(m: LongCLIPModel) -> Callable[[list[bytes]], torch.Tensor]:
        return lambda batch: m.embed_images(batch, batch_size=args.batch_size, progress=False)

    runs: dict[str, Callable[[list[bytes]], torch.Tensor]] = {
        "original float32": run_original,
        "longclip float32": run_longclip(model),
    }
    if dtype != torch.float32:
        low = LongCLIPModel(CLIPModel(model.clip.config)).eval()
        low.clip.load_state_dict(model.clip.state_dict())
        runs[f"longclip {str(dtype).removeprefix('torch.')}"] = run_longclip(low.to(args.device, dtype))
    if args.compile:
        compiled = LongCLIPModel(CLIPModel(model.clip.config)).eval()
        compiled.clip.load_state_dict(model.clip.state_dict())
        compiled.clip.vision_model = torch.compile(compiled.clip.vision_model)
        runs["longclip float32 compiled"] = run_longclip(compiled.to(args.device))

    for name, run in runs.items():  # warm-up (and compilation) on one batch, untimed
        print(f"  warm-up: {name}", file=sys.stderr, flush=True)
        run(images[: args.batch_size])
    timings: dict[str, list[float]] = {name: [] for name in runs}
    features: dict[str, torch.Tensor] = {}
    load_before = load_average()
    for round_ in range(args.repeats):
        for name, run in runs.items():
            seconds, features[name] = timed(lambda run=run: run(images), args.device)
            timings[name].append(seconds)
            print(f"  round {round_ + 1}, {name}: {seconds:.2f} s", file=sys.stderr, flush=True)

    base = min(timings["original float32"])
    print("# Image-embedding throughput, ViT-B/16 image tower (random weights)")
    print()
    print(f"- machine: {machine_description(args.device)}; torch threads: {torch.get_num_threads()}")
    if choice:
        print(f"- dtype auto: {choice.name} ({choice.reason})")
    print(f"- {args.num_images} real photos (scikit-image samples, PNG-decoded per run, preprocessing timed), batch "
          f"{args.batch_size}, {args.repeats} round(s), fastest counts")  # fmt: skip
    print()
    print("| run | seconds | images/s | vs original float32 | min cosine vs original |")
    print("|---|---:|---:|---:|---:|")
    results = {}
    for name in runs:
        seconds = min(timings[name])
        cosine = float((features[name] * features["original float32"]).sum(-1).min())
        results[name] = {"seconds": seconds, "images_per_s": args.num_images / seconds,
                         "speedup": base / seconds, "min_cosine": cosine}  # fmt: skip
        print(f"| {name} | {seconds:.2f} | {args.num_images / seconds:.2f} | {base / seconds:.2f}x | {cosine:.6f} |")
    print()
    print(f"Load average before / after: {load_before} / {load_average()}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"machine": machine_description(args.device), "runs": results, "num_images": args.num_images}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
