"""An independent OpenAI-layout CLIP (and Long-CLIP) written out in plain torch, for parity tests.

Its module tree reproduces the key names of OpenAI's ``clip/model.py`` and of the released Long-CLIP checkpoints
(``transformer.resblocks.0.attn.in_proj_weight``, ``positional_embedding_res``...), so its ``state_dict()`` is a
checkpoint in those formats, and ``torch.jit.trace`` of it gives a TorchScript archive like OpenAI's ``.pt`` files.
Nothing here uses the package under test.
"""

from __future__ import annotations

import torch
from torch import nn

VOCAB = 49408


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, causal_length: int | None):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, width * 2))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(width * 2, width))
        self.ln_2 = nn.LayerNorm(width)
        self.causal_length = causal_length

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [L, N, D]
        mask = None
        if self.causal_length is not None:
            n = x.shape[0]
            mask = torch.full((n, n), float("-inf")).triu(1)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class Tower(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, causal_length: int | None = None):
        super().__init__()
        self.resblocks = nn.Sequential(*[Block(width, heads, causal_length) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class Visual(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, patch: int, image: int, embed: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * 0.1)
        self.positional_embedding = nn.Parameter(torch.randn((image // patch) ** 2 + 1, width) * 0.1)
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Tower(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, embed) * width**-0.5)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixels).flatten(2).transpose(1, 2)  # [N, grid*grid, D]
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
        x = self.transformer(x.transpose(0, 1)).transpose(0, 1)
        return self.ln_post(x[:, 0]) @ self.proj


class ReferenceCLIP(nn.Module):
    """OpenAI CLIP (``long=False``, 77 positions) or released Long-CLIP (``long=True``: two tables + masks)."""

    def __init__(
        self,
        width: int = 128,
        layers: int = 2,
        vision_width: int = 128,
        vision_layers: int = 2,
        patch: int = 8,
        image: int = 32,
        embed: int = 64,
        context: int = 77,
        long: bool = False,
        keep: int = 20,
        masks_in_state_dict: bool = False,
    ):
        super().__init__()
        heads, vision_heads = width // 64, vision_width // 64  # OpenAI's rule
        self.visual = Visual(vision_width, vision_layers, vision_heads, patch, image, embed)
        self.transformer = Tower(width, layers, heads, causal_length=context)
        self.token_embedding = nn.Embedding(VOCAB, width)
        self.positional_embedding = nn.Parameter(torch.randn(context, width) * 0.1)
        self.long = long
        if long:
            self.positional_embedding_res = nn.Parameter(torch.randn(context, width) * 0.1)
            mask1 = torch.zeros(context, 1)
            mask1[:keep] = 1
            self.register_buffer("mask1", mask1, persistent=masks_in_state_dict)
            self.register_buffer("mask2", 1 - mask1, persistent=masks_in_state_dict)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, embed) * width**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))
        with torch.no_grad():  # non-trivial layer norms, so a swapped weight/bias cannot go unnoticed
            for module in self.modules():
                if isinstance(module, nn.LayerNorm):
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.2, 0.2)

    def position_table(self) -> torch.Tensor:
        if self.long:
            return self.positional_embedding * self.mask1 + self.positional_embedding_res * self.mask2
        return self.positional_embedding

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(tokens) + self.position_table()[: tokens.shape[1]]
        x = self.transformer(x.transpose(0, 1)).transpose(0, 1)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ self.text_projection

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(pixels), self.encode_text(tokens)
