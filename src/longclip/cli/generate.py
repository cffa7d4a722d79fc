"""``longclip generate``: an image from a long prompt with Stable Diffusion 1.x or SDXL and Long-CLIP text encoders.

Also the ``text-encoder`` subcommand of ``longclip export`` (``register_export_text_encoder``), which the export
command group adds to its own sub-parsers. The work is done by ``longclip.integrations.diffusion``; diffusers is
the optional extra ``longclip[diffusion]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import positive_int, status

PIPELINES = ("sd15", "sdxl")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
STORE_DTYPES = ("float32", "float16", "bfloat16")

_GENERATE_EPILOG = """\
examples:
  longclip generate "a long prompt ..." --pipeline sdxl --out image.png --seed 0
  longclip generate "$(cat prompt.txt)" --pipeline sd15 --text-encoder longclip-L.pt --out image.png \\
      --steps 30 --guidance 7.5 --negative-prompt "blurry, low quality"

Models (from the local Hugging Face cache, or downloaded): --model is the diffusers model
(default: stable-diffusion-v1-5/stable-diffusion-v1-5 for sd15, stabilityai/stable-diffusion-xl-base-1.0 for sdxl);
--text-encoder is the Long-CLIP model put in place of CLIP-L (default: BeichenZhang/LongCLIP-L). For SDXL the second
encoder (OpenCLIP bigG, the base's own unless --text-encoder-2 names another) is stretched from 77 to 248 positions
by knowledge-preserving stretching, without fine-tuning. Prompts over 248 tokens are cut with a warning, or with
--long-prompts chunk encoded in 248-token pieces joined along the sequence.
"""


def register(commands: Any) -> None:
    """Add ``generate`` to ``commands`` (argparse sub-parsers)."""
    parser = commands.add_parser(
        "generate",
        help="generate an image from a long prompt (Stable Diffusion 1.x / SDXL with Long-CLIP text encoders)",
        description="Generate an image with diffusers' own pipeline, its CLIP text encoders reading 248 tokens.",
        epilog=_GENERATE_EPILOG,
    )
    parser.add_argument("prompt", help="the prompt (up to 248 tokens; see --long-prompts)")
    parser.add_argument("--pipeline", choices=PIPELINES, default="sdxl", help="Stable Diffusion 1.x or SDXL")
    parser.add_argument("--model", default=None, metavar="M", help="diffusers model: hub id or folder")
    parser.add_argument(
        "--text-encoder", default="BeichenZhang/LongCLIP-L", metavar="M", help="Long-CLIP model: .pt, folder or hub id"
    )
    parser.add_argument(
        "--text-encoder-2", default=None, metavar="M", help="SDXL: CLIPTextModelWithProjection to stretch and use"
    )
    parser.add_argument("--out", required=True, help="image file to write (.png, .jpg, .webp)")
    parser.add_argument("--negative-prompt", default=None, help="what the image should not show")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one each run)")
    parser.add_argument("--steps", type=positive_int, default=30, help="denoising steps (default: 30)")
    parser.add_argument("--guidance", type=float, default=7.0, help="classifier-free guidance scale (default: 7)")
    parser.add_argument("--width", type=positive_int, default=None, help="pixels, a multiple of 8 (default: model's)")
    parser.add_argument("--height", type=positive_int, default=None, help="pixels, a multiple of 8 (default: model's)")
    parser.add_argument(
        "--long-prompts",
        choices=("truncate", "chunk"),
        default="truncate",
        help="prompts over 248 tokens: cut with a warning (default) or encode in 248-token chunks",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--dtype", choices=STORE_DTYPES, default=None, help="weight dtype (default: float16 on CUDA, float32 on CPU)"
    )
    parser.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    """Load the pipeline, generate one image and write it to ``args.out``."""
    import torch

    from ..integrations import diffusion

    out = Path(args.out)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"--out {out}: name an image file ending in {', '.join(IMAGE_SUFFIXES)}")
    if args.text_encoder_2 is not None and args.pipeline != "sdxl":
        raise ValueError(f"--text-encoder-2 is SDXL's second encoder; --pipeline {args.pipeline} has none")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if device.startswith("cuda") else None)
    pipe = diffusion.load_pipeline(
        args.pipeline, args.model, args.text_encoder, text_encoder_2=args.text_encoder_2, torch_dtype=dtype
    ).to(device)
    pipe.set_progress_bar_config(disable=bool(getattr(args, "quiet", False)))
    image = diffusion.generate(
        pipe,
        args.prompt,
        args.negative_prompt,
        steps=args.steps,
        guidance=args.guidance,
        width=args.width,
        height=args.height,
        seed=args.seed,
        long_prompts=args.long_prompts,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    status(args, f"wrote {out} ({image.size[0]}x{image.size[1]})")
    return 0


def register_export_text_encoder(export_commands: Any) -> None:
    """Add ``text-encoder`` to the sub-parsers of ``longclip export``."""
    parser = export_commands.add_parser(
        "text-encoder",
        help="write a Long-CLIP text encoder (248 positions) as safetensors for ComfyUI / diffusers",
        description="Write the text tower of a Long-CLIP model, with its 248 positions, as a .safetensors file.",
    )
    parser.add_argument("model", metavar="MODEL", help="Long-CLIP model: .pt, folder or hub id")
    parser.add_argument("out", metavar="OUT", help="the .safetensors file to write")
    parser.add_argument(
        "--layout",
        choices=("transformers", "ldm"),
        default="transformers",
        help="transformers: text_model.* keys (ComfyUI's CLIP loader, transformers); ldm: under "
        "cond_stage_model.transformer. as in SD 1.x single-file checkpoints (diffusers' single-file loading)",
    )
    parser.add_argument("--dtype", choices=STORE_DTYPES, default=None, help="store the weights in this dtype")
    parser.set_defaults(func=run_export_text_encoder)


def run_export_text_encoder(args: argparse.Namespace) -> int:
    """Write the text encoder file."""
    import torch

    from ..integrations import diffusion

    if Path(args.out).suffix != ".safetensors":
        raise ValueError(f"OUT {args.out}: the text encoder is written as safetensors; name it *.safetensors")
    dtype = getattr(torch, args.dtype) if args.dtype else None
    path = diffusion.export_text_encoder(args.model, args.out, layout=args.layout, dtype=dtype)
    status(args, f"wrote {path} ({args.layout} layout)")
    return 0
