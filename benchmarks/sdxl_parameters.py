"""Parameter counts of an SDXL pipeline with Long-CLIP-L and a stretched bigG, from the architectures' configs.

Builds every component on the meta device (no weights, no download) from the configuration values of
``stabilityai/stable-diffusion-xl-base-1.0`` (UNet, VAE), ``BeichenZhang/LongCLIP-L`` (text tower, 248 positions)
and ``laion/CLIP-ViT-bigG-14-laion2B-39B-b160k`` (text tower with projection, stretched to 248), written out below,
and prints the parameters and the bytes their weights take in float16. Run: ``python benchmarks/sdxl_parameters.py``.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    sample_size=1024,
)
LONGCLIP_L = CLIPTextConfig(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=248,
    projection_dim=768,
)
BIGG = CLIPTextConfig(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=248,
    projection_dim=1280,
    hidden_act="gelu",
)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    with torch.device("meta"):
        parts = {
            "UNet": UNet2DConditionModel(**UNET),
            "VAE": AutoencoderKL(**VAE),
            "Long-CLIP-L text encoder (248)": CLIPTextModel(LONGCLIP_L),
            "bigG text encoder + projection (248)": CLIPTextModelWithProjection(BIGG),
        }
    total = 0
    for name, module in parts.items():
        n = count(module)
        total += n
        print(f"{name:40s} {n / 1e6:9.1f} M params  {2 * n / 2**30:6.2f} GiB in float16")
    print(f"{'total':40s} {total / 1e6:9.1f} M params  {2 * total / 2**30:6.2f} GiB in float16")


if __name__ == "__main__":
    main()
