"""Long prompts for image generation: Long-CLIP text encoders inside diffusers' own pipelines.

Stable Diffusion's text encoders read 77 tokens. Long-CLIP ("Long-CLIP: Unlocking the Long-Text Capability of
CLIP", Zhang et al., ECCV 2024, Sec. 5.4) shows the 248-token Long-CLIP-L drops into SD 1.5 in place of CLIP-L
without retraining; its released SDXL code uses Long-CLIP-L as the first encoder and OpenCLIP ViT-bigG, stretched
to 248 positions by knowledge-preserving stretching only, as the second. Here nothing of diffusers is copied: a
pipeline is rebuilt from its own components with

* ``text_encoder`` = the Long-CLIP text tower as a transformers ``CLIPTextModel`` (248 positions) and ``tokenizer``
  = CLIP's tokenizer at 248 (``with_long_text_encoders`` / ``load_pipeline``), so ``pipe(prompt=...)`` itself
  encodes up to 248 tokens;
* every other CLIP text encoder that still has 77 positions (SDXL's bigG, SD 2.x's ViT-H) stretched to 248 by
  knowledge-preserving stretching, and its tokenizer set to 248.

``encode_prompt`` returns the embeddings diffusers pipelines take (for img2img, ControlNet, refiner, ...), the way
diffusers computes them: SD 1.x/2.x use the last hidden state after the final LayerNorm; SDXL the penultimate hidden
states *without* the final LayerNorm of both encoders, concatenated, and the pooled embedding from the second
encoder's projection. Prompts over 248 tokens are cut with a warning, or encoded in 248-token chunks concatenated
along the sequence (the approach of compel), the negative prompt padded with empty chunks to the same length.

``export_text_encoder`` writes the text tower with its 248 positions as a safetensors file in the layout ComfyUI's
CLIP loader and transformers read (``text_model.*``), or the LDM layout inside SD 1.x single-file checkpoints
(``cond_stage_model.transformer.text_model.*``) that diffusers' single-file conversion reads.

diffusers is an optional extra (``pip install 'longclip[diffusion]'``) imported on first use.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import torch
from torch import nn

from ..positions import LONGCLIP_KEEP_POSITIONS, LONGCLIP_STRETCH_RATIO, stretch_positional_embedding
from ..tokenizer import CLIP_CONTEXT_LENGTH, DEFAULT_CONTEXT_LENGTH, LongCLIPTokenizer

if TYPE_CHECKING:
    from transformers import CLIPTextModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

PipelineKind = Literal["sd15", "sd2", "sdxl", "flux"]
LongPrompts = Literal["truncate", "chunk"]
Layout = Literal["transformers", "ldm"]

# The diffusers class and the hub repository a real run starts from, per pipeline kind.
PIPELINE_CLASSES: dict[str, str] = {
    "sd15": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "flux": "FluxPipeline",
}
DEFAULT_BASES: dict[str, str] = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd2": "stabilityai/stable-diffusion-2-1",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "flux": "black-forest-labs/FLUX.1-dev",
}
DEFAULT_TEXT_ENCODER = "BeichenZhang/LongCLIP-L"
LDM_PREFIX = "cond_stage_model.transformer."  # SD 1.x single-file checkpoints; diffusers' is_clip_model looks here


def require_diffusers() -> Any:
    """Import diffusers, or raise ``ImportError`` saying how to install it."""
    try:
        import diffusers
    except ImportError as e:
        raise ImportError(
            "longclip's image-generation integration needs diffusers: pip install 'longclip[diffusion]'"
        ) from e
    return diffusers


# --- text encoders ------------------------------------------------------------------------------------------------


def text_encoder_from_longclip(model: Any) -> CLIPTextModel:
    """The Long-CLIP text tower as a transformers ``CLIPTextModel`` (248 positions), sharing the model's weights.

    Args:
        model: A path or hub id that ``longclip.load`` reads (``longclip-L.pt``, ``BeichenZhang/LongCLIP-L``), a
            loaded longclip model (anything with a transformers ``CLIPModel`` as ``.clip``), a ``CLIPModel``, or a
            ``CLIPTextModel`` (returned as it is).
    """
    from transformers import CLIPModel, CLIPTextModel

    if isinstance(model, (str, os.PathLike)):
        from ..api import load

        model = load(model)[0]
    clip = getattr(model, "clip", model)
    if isinstance(clip, CLIPTextModel):
        return clip
    if not isinstance(clip, CLIPModel):
        raise TypeError(
            "expected a Long-CLIP model, a transformers CLIPModel or CLIPTextModel, or a path; "
            f"got {type(model).__name__}"
        )
    tower = clip.text_model
    if isinstance(tower, CLIPTextModel):  # transformers >= 5.6 keeps a CLIPTextModel inside CLIPModel
        return tower
    encoder = CLIPTextModel(clip.config.text_config)  # older transformers: wrap the bare text transformer
    encoder.text_model = tower
    return encoder.to(device=clip.device, dtype=clip.dtype)


def long_tokenizer(context_length: int = DEFAULT_CONTEXT_LENGTH) -> PreTrainedTokenizerBase:
    """CLIP's tokenizer (transformers ``CLIPTokenizer``) at ``context_length`` tokens, padding with the end token.

    The padding is what ``openai/clip-vit-large-patch14``'s tokenizer, which SD 1.x and SDXL's first encoder ship
    with, uses.
    """
    return LongCLIPTokenizer(context_length).hf_tokenizer


def position_rows(encoder: nn.Module) -> int:
    """Rows of a CLIP text encoder's position table."""
    return _embeddings(encoder).position_embedding.weight.shape[0]


def stretch_text_encoder(
    encoder: nn.Module,
    keep_positions: int = LONGCLIP_KEEP_POSITIONS,
    ratio: int = LONGCLIP_STRETCH_RATIO,
    mode: Literal["kps", "linear"] = "kps",
) -> nn.Module:
    """Stretch a 77-position transformers CLIP text encoder in place (to 248 rows by default) and return it.

    Works for ``CLIPTextModel`` and ``CLIPTextModelWithProjection`` (SDXL's bigG, SD 2.x's ViT-H). Without
    fine-tuning, as the Long-CLIP SDXL code does for bigG.

    Raises:
        ValueError: The encoder does not have CLIP's 77 positions (already stretched?).
    """
    embeddings = _embeddings(encoder)
    old = embeddings.position_embedding.weight.data
    if old.shape[0] != CLIP_CONTEXT_LENGTH:
        raise ValueError(
            f"this text encoder has {old.shape[0]} positions; stretching expects CLIP's {CLIP_CONTEXT_LENGTH}"
        )
    table = stretch_positional_embedding(old, keep_positions, ratio, mode)
    embeddings.position_embedding = nn.Embedding.from_pretrained(table, freeze=False)
    embeddings.register_buffer(
        "position_ids", torch.arange(table.shape[0], device=old.device).expand(1, -1), persistent=False
    )
    encoder.config.max_position_embeddings = table.shape[0]
    logger.info("stretched a text encoder's positions from %d to %d rows (%s)", old.shape[0], table.shape[0], mode)
    return encoder


def _embeddings(encoder: nn.Module) -> nn.Module:
    inner = getattr(encoder, "text_model", encoder)
    embeddings = getattr(inner, "embeddings", None)
    if embeddings is None or not hasattr(embeddings, "position_embedding"):
        raise TypeError(f"expected a transformers CLIP text encoder, got {type(encoder).__name__}")
    return embeddings


def _is_clip_text_encoder(module: Any) -> bool:
    embeddings = getattr(getattr(module, "text_model", module), "embeddings", None)
    return module is not None and hasattr(embeddings, "position_embedding")


# --- pipelines ----------------------------------------------------------------------------------------------------


def with_long_text_encoders(pipe: Any, text_encoder: Any = None, *, stretch: bool = True) -> Any:
    """The same kind of diffusers pipeline with Long-CLIP as its CLIP-L encoder and every CLIP encoder at 248.

    Args:
        pipe: Any diffusers pipeline whose CLIP text encoder sits in ``text_encoder`` (SD 1.x/2.x, SDXL and its
            img2img/inpaint/ControlNet variants, Flux).
        text_encoder: The Long-CLIP model to put in ``text_encoder`` (see ``text_encoder_from_longclip``); with
            ``None`` the pipeline's own encoders are kept and only stretched (SD 2.x's ViT-H).
        stretch: Stretch the remaining 77-position CLIP encoders (SDXL's ``text_encoder_2``) by knowledge-preserving
            stretching and set their tokenizers to the new length.

    Returns:
        A new pipeline of ``type(pipe)`` built from the swapped components (its ``__init__`` re-reads the
        tokenizers' lengths, which Flux caches). The other components are shared with ``pipe``, so its 77-position
        encoders are stretched in place: ``pipe`` itself should not be used for 77-token prompts afterwards.
    """
    require_diffusers()
    components = dict(pipe.components)
    if text_encoder is not None:
        encoder, old = text_encoder_from_longclip(text_encoder), components.get("text_encoder")
        if old is not None and old.config.hidden_size != encoder.config.hidden_size:
            raise ValueError(
                f"the new text encoder is {encoder.config.hidden_size} wide, the pipeline's is "
                f"{old.config.hidden_size}: its UNet/transformer expects the latter (SD 2.x's ViT-H is not CLIP-L; "
                "stretch it with text_encoder=None)"
            )
        components["text_encoder"], components["tokenizer"] = encoder, long_tokenizer(position_rows(encoder))
    for encoder_name, tokenizer_name in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        encoder, tokenizer = components.get(encoder_name), components.get(tokenizer_name)
        if not _is_clip_text_encoder(encoder):
            continue  # absent, or Flux's T5
        if stretch and position_rows(encoder) == CLIP_CONTEXT_LENGTH:
            stretch_text_encoder(encoder)
        if tokenizer is not None:
            tokenizer.model_max_length = position_rows(encoder)
    return type(pipe)(**components)


def load_pipeline(
    kind: PipelineKind,
    base: str | os.PathLike | None = None,
    text_encoder: Any = "default",
    text_encoder_2: Any = None,
    torch_dtype: torch.dtype | None = None,
    **from_pretrained_kwargs: Any,
) -> Any:
    """Load a diffusers pipeline from the hub or a folder with Long-CLIP text encoders at 248 tokens.

    Args:
        kind: ``"sd15"``, ``"sd2"``, ``"sdxl"`` or ``"flux"``.
        base: The diffusers model (hub id or folder); by default ``DEFAULT_BASES[kind]``.
        text_encoder: Long-CLIP model or path for the CLIP-L slot; ``"default"`` is ``BeichenZhang/LongCLIP-L``,
            except for SD 2.x, whose own ViT-H encoder is stretched instead (as with ``None``).
        text_encoder_2: SDXL only: a ``CLIPTextModelWithProjection`` (or its path, e.g.
            ``laion/CLIP-ViT-bigG-14-laion2B-39B-b160k``) to stretch instead of the base's own second encoder.
        torch_dtype: Weight dtype of the pipeline.
        **from_pretrained_kwargs: Passed to ``from_pretrained`` (``variant="fp16"``, ``local_files_only``, ...).

    Raises:
        FileNotFoundError: A model is neither local nor downloadable; the message names what to download.
    """
    diffusers = require_diffusers()
    if kind not in PIPELINE_CLASSES:
        raise ValueError(f"pipeline must be one of {', '.join(PIPELINE_CLASSES)}, got {kind!r}")
    base = str(base or DEFAULT_BASES[kind])
    if isinstance(text_encoder, str) and text_encoder == "default":
        text_encoder = None if kind == "sd2" else DEFAULT_TEXT_ENCODER
    pipeline_class = getattr(diffusers, PIPELINE_CLASSES[kind])
    overrides: dict[str, Any] = {}
    if text_encoder is not None:
        encoder = text_encoder_from_longclip(text_encoder)
        overrides["text_encoder"] = encoder.to(torch_dtype) if torch_dtype is not None else encoder
        overrides["tokenizer"] = long_tokenizer(position_rows(encoder))
    if text_encoder_2 is not None:
        if kind != "sdxl":
            raise ValueError(f"text_encoder_2 is SDXL's second CLIP encoder; pipeline {kind!r} has none")
        overrides["text_encoder_2"] = _load_with_projection(text_encoder_2, torch_dtype)
    try:
        pipe = pipeline_class.from_pretrained(base, torch_dtype=torch_dtype, **overrides, **from_pretrained_kwargs)
    except OSError as e:
        raise FileNotFoundError(_missing_message(base, e)) from e
    return with_long_text_encoders(pipe)


def _load_with_projection(model: Any, torch_dtype: torch.dtype | None) -> nn.Module:
    if not isinstance(model, (str, os.PathLike)):
        return model
    from transformers import CLIPTextModelWithProjection

    try:
        return CLIPTextModelWithProjection.from_pretrained(str(model), torch_dtype=torch_dtype)
    except OSError as e:
        raise FileNotFoundError(_missing_message(str(model), e)) from e


def _missing_message(name: str, error: Exception) -> str:
    if Path(name).exists():
        return f"{name} is not a complete diffusers/transformers model folder: {error}"
    return (
        f"{name} is not in the local Hugging Face cache and could not be downloaded; "
        f"on a machine with network run `hf download {name}` (and copy the cache here) or pass a local folder"
    )


# --- prompt embeddings --------------------------------------------------------------------------------------------


class PromptEmbeddings(NamedTuple):
    """What diffusers pipelines take instead of a prompt. The pooled ones are ``None`` for SD 1.x/2.x."""

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor | None
    negative_pooled_prompt_embeds: torch.Tensor | None

    def as_kwargs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for ``pipe(...)``, leaving out the ``None`` ones (SD 1.x does not accept them)."""
        return {name: value for name, value in self._asdict().items() if value is not None}


@torch.no_grad()
def encode_prompt(
    pipe: Any,
    prompt: str | Sequence[str],
    negative_prompt: str | Sequence[str] | None = None,
    *,
    long_prompts: LongPrompts = "truncate",
) -> PromptEmbeddings:
    """Encode prompts with a pipeline's text encoders the way its own ``encode_prompt`` does, up to 248 tokens.

    SDXL-style pipelines (with ``text_encoder_2``): penultimate hidden states without the final LayerNorm of each
    encoder, concatenated along features; pooled = the second encoder's projected end token. A ``None`` negative
    prompt gives zeros when the pipeline has ``force_zeros_for_empty_prompt`` (SDXL base's default). Otherwise
    (SD 1.x/2.x): the last hidden state after the final LayerNorm; a ``None`` negative prompt means ``""``.

    Args:
        pipe: A pipeline from ``with_long_text_encoders``/``load_pipeline`` (or any with CLIP text encoders).
        prompt: A prompt or a list of prompts.
        negative_prompt: One per prompt (or one string for all), or ``None``.
        long_prompts: What to do with a prompt longer than the encoders' context: ``"truncate"`` (keep the first
            tokens and the end token; warns, naming the length) or ``"chunk"`` (encode consecutive pieces, each with
            start and end tokens, and concatenate them along the sequence; negatives get empty pieces to match).

    Returns:
        ``PromptEmbeddings``; pass ``**embeddings.as_kwargs()`` to the pipeline. No per-image repetition: pipelines
        repeat for ``num_images_per_prompt`` themselves.
    """
    if long_prompts not in ("truncate", "chunk"):
        raise ValueError(f"long_prompts must be 'truncate' or 'chunk', got {long_prompts!r}")
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError("no prompt given")
    encoders = [(pipe.text_encoder, pipe.tokenizer)]
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    if sdxl and not _is_clip_text_encoder(pipe.text_encoder_2):
        raise ValueError(
            f"encode_prompt handles SD 1.x/2.x and SDXL pipelines; this one's second encoder is a "
            f"{type(pipe.text_encoder_2).__name__} (Flux?): pass prompt= to it, it encodes 248 tokens itself"
        )
    if sdxl:
        encoders.append((pipe.text_encoder_2, pipe.tokenizer_2))
    encoders = [(e, t) for e, t in encoders if e is not None]
    force_zeros = bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))
    zero_negative = sdxl and negative_prompt is None and force_zeros
    negatives = _negatives(negative_prompt, len(prompts))

    # Cut or chunk every text once per tokenizer; both lists share one chunk count so they concatenate.
    pieces = [_pieces(tokenizer, prompts + negatives, position_rows(enc), long_prompts) for enc, tokenizer in encoders]
    chunks = max(len(p) for per_encoder in pieces for p in per_encoder)

    # Prompts and negatives go through the encoders as separate batches, as in diffusers: batching them together
    # changes float rounding, and the pipeline's own encoding would then differ in the last bit.
    n = len(prompts)
    dtype = encoders[-1][0].dtype if sdxl else encoders[0][0].dtype
    positive, pooled_positive = _encode(encoders, [p[:n] for p in pieces], chunks, sdxl)
    negative, pooled_negative = _encode(encoders, [p[n:] for p in pieces], chunks, sdxl)
    if zero_negative:
        negative, pooled_negative = torch.zeros_like(positive), torch.zeros_like(pooled_positive)
    positive, negative = positive.to(dtype), negative.to(dtype)
    if sdxl:
        pooled_positive, pooled_negative = pooled_positive.to(dtype), pooled_negative.to(dtype)
    return PromptEmbeddings(positive, negative, pooled_positive, pooled_negative)


def _encode(
    encoders: list[tuple[Any, Any]], pieces: list[list[list[list[int]]]], chunks: int, sdxl: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Hidden states ``[texts, chunks * rows, features of all encoders]`` and (SDXL) the pooled ``[texts, dim]``."""
    hidden, pooled = [], None
    for (encoder, tokenizer), per_text in zip(encoders, pieces, strict=True):
        ids = _pad_pieces(per_text, chunks, tokenizer, position_rows(encoder))  # [texts * chunks, rows]
        out = encoder(ids.to(next(encoder.parameters()).device), output_hidden_states=sdxl)
        states = out.hidden_states[-2] if sdxl else out[0]
        hidden.append(states.reshape(len(per_text), chunks * states.shape[1], states.shape[2]))
        if sdxl and out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds; pooled of the first chunk
            pooled = out[0].reshape(len(per_text), chunks, -1)[:, 0]
    if sdxl and pooled is None:
        raise ValueError("SDXL's second text encoder must be a CLIPTextModelWithProjection (it gives the pooled)")
    return torch.cat(hidden, dim=-1), pooled


def _negatives(negative_prompt: str | Sequence[str] | None, count: int) -> list[str]:
    if negative_prompt is None:
        return [""] * count
    if isinstance(negative_prompt, str):
        return [negative_prompt] * count
    negatives = list(negative_prompt)
    if len(negatives) != count:
        raise ValueError(f"got {len(negatives)} negative prompts for {count} prompts; give one per prompt or one")
    return negatives


def _pieces(tokenizer: Any, texts: list[str], rows: int, long_prompts: LongPrompts) -> list[list[list[int]]]:
    """Per text, the id lists (start and end tokens included) that each fit ``rows`` positions."""
    all_ids = tokenizer(texts, truncation=False, verbose=False).input_ids
    result = []
    for text_index, ids in enumerate(all_ids):
        if len(ids) <= rows:
            result.append([ids])
        elif long_prompts == "truncate":
            warnings.warn(
                f"prompt {text_index} has {len(ids)} tokens, more than the {rows} the text encoder reads; "
                f"its last {len(ids) - rows} tokens are dropped (long_prompts='chunk' encodes all of them)",
                stacklevel=3,
            )
            result.append([[*ids[: rows - 1], ids[-1]]])
        else:
            body, step = ids[1:-1], rows - 2
            result.append([[ids[0], *body[i : i + step], ids[-1]] for i in range(0, len(body), step)])
    return result


def _pad_pieces(per_text: list[list[list[int]]], chunks: int, tokenizer: Any, rows: int) -> torch.Tensor:
    """``[texts * chunks, rows]`` ids: each text's pieces, then empty pieces (start, end) up to ``chunks``."""
    start, end, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    out = torch.full((len(per_text) * chunks, rows), pad, dtype=torch.long)
    for t, pieces in enumerate(per_text):
        for c, piece in enumerate(pieces + [[start, end]] * (chunks - len(pieces))):
            out[t * chunks + c, : len(piece)] = torch.tensor(piece)
    return out


def generate(
    pipe: Any,
    prompt: str,
    negative_prompt: str | None = None,
    *,
    steps: int = 30,
    guidance: float = 7.0,
    width: int | None = None,
    height: int | None = None,
    seed: int | None = None,
    long_prompts: LongPrompts = "truncate",
    output_type: str = "pil",
) -> Any:
    """Generate one image from a long prompt (``encode_prompt`` + the pipeline's denoising loop).

    Returns:
        The pipeline's first image (a PIL image, or latents with ``output_type="latent"``).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    for name, value in (("width", width), ("height", height)):
        if value is not None and (value < 8 or value % 8):
            raise ValueError(f"{name} must be a positive multiple of 8, got {value}")
    embeddings = encode_prompt(pipe, prompt, negative_prompt, long_prompts=long_prompts)
    generator = torch.Generator("cpu").manual_seed(seed) if seed is not None else None
    result = pipe(
        **embeddings.as_kwargs(),
        num_inference_steps=steps,
        guidance_scale=guidance,
        width=width,
        height=height,
        generator=generator,
        output_type=output_type,
    )
    return result.images[0]


# --- export -------------------------------------------------------------------------------------------------------


def export_text_encoder(
    model: Any, out: str | os.PathLike, layout: Layout = "transformers", dtype: torch.dtype | None = None
) -> Path:
    """Write a Long-CLIP text tower (with its 248 positions) to a safetensors file other tools load.

    Args:
        model: A Long-CLIP model or path (see ``text_encoder_from_longclip``).
        out: The ``.safetensors`` file to write.
        layout: ``"transformers"``: keys ``text_model.embeddings.position_embedding.weight`` ..., what ComfyUI's
            CLIP loader reads (it switches to a 248-token CLIP-L when that table has 248 rows) and what
            ``CLIPTextModel.from_pretrained`` reads beside a config. ``"ldm"``: the same under
            ``cond_stage_model.transformer.``, the layout of SD 1.x single-file checkpoints that diffusers'
            single-file loading converts.
        dtype: Store in this dtype (e.g. ``torch.float16``); by default the model's.

    Returns:
        The written path.
    """
    from safetensors.torch import save_file

    from ..atomic import atomic_file

    if layout not in ("transformers", "ldm"):
        raise ValueError(f"layout must be 'transformers' or 'ldm', got {layout!r}")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"the text encoder is written as safetensors; name the file *.safetensors, got {out}")
    encoder = text_encoder_from_longclip(model)
    prefix = ("" if layout == "transformers" else LDM_PREFIX) + "text_model."
    tensors = {}
    for key, value in encoder.state_dict().items():
        key = key.removeprefix("text_model.")  # transformers < 5.6 nests the tower; >= 5.6 does not
        if key.endswith("position_ids") or key.startswith("text_projection"):
            continue
        tensors[prefix + key] = value.detach().to(dtype or value.dtype).contiguous().cpu()
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = position_rows(encoder)
    with atomic_file(out) as temporary:  # safetensors alone would write it 0600
        save_file(tensors, str(temporary), metadata={"format": "pt", "max_position_embeddings": str(rows)})
    logger.info("wrote a %d-position CLIP text encoder (%s layout) to %s", rows, layout, out)
    return out


__all__ = [
    "DEFAULT_BASES",
    "PromptEmbeddings",
    "encode_prompt",
    "export_text_encoder",
    "generate",
    "load_pipeline",
    "long_tokenizer",
    "position_rows",
    "require_diffusers",
    "stretch_text_encoder",
    "text_encoder_from_longclip",
    "with_long_text_encoders",
]
