"""Loading any CLIP checkpoint into a transformers ``CLIPModel``, and writing the released format back.

Sources: a released Long-CLIP ``.pt``, an OpenAI CLIP ``.pt`` (TorchScript archive or state dict), a
transformers CLIP directory (this package writes those), a safetensors file in OpenAI's layout, or a hub id that
resolves to any of these. The format is detected from file contents and tensor names, never from the file name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel

from ..positions import LONGCLIP_KEEP_ROWS
from ..tokenizer import CLIP_CONTEXT_LENGTH
from .convert import HEAD_WIDTH, _heads, config_from_openai, detect_format, hf_to_openai, openai_to_hf
from .hub import HubUnavailableError, available_models, is_hub_id, resolve
from .reading import CheckpointError, read_state_dict

__all__ = [
    "CheckpointError",
    "HubUnavailableError",
    "LoadedCheckpoint",
    "available_models",
    "check_pt_compatible",
    "config_from_openai",
    "detect_format",
    "hf_to_openai",
    "is_hub_id",
    "load_clip",
    "openai_to_hf",
    "read_state_dict",
    "save_longclip_pt",
]

_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


@dataclass
class LoadedCheckpoint:
    """A loaded CLIP and where it came from.

    Attributes:
        model: The weights as a transformers ``CLIPModel`` in float32 on the CPU, in eval mode.
        format: ``"longclip-pt"`` (released Long-CLIP), ``"openai"`` (OpenAI CLIP state dict or TorchScript
            archive) or ``"hf"`` (transformers directory).
        path: The file or directory read.
        directory: The directory whose tokenizer / preprocessor configs apply, for ``"hf"`` checkpoints.
        stored_dtypes: The dtypes of the floating-point weights as stored on disk (``model`` is always float32);
            empty where the files do not say (a transformers directory without safetensors).
    """

    model: CLIPModel
    format: str
    path: Path
    directory: Path | None = None
    stored_dtypes: tuple[str, ...] = ()

    @property
    def keep_rows(self) -> int | None:
        """Leading rows of the text position table that Long-CLIP keeps frozen, if this is a Long-CLIP."""
        return getattr(self.model.config, "longclip_keep_rows", None)


def load_clip(name_or_path: str | os.PathLike, revision: str | None = None) -> LoadedCheckpoint:
    """Load any supported CLIP checkpoint as a transformers ``CLIPModel``.

    Args:
        name_or_path: A file, a directory, or a hub id such as ``BeichenZhang/LongCLIP-B``.
        revision: Hub revision (branch, tag or commit), for hub ids.

    Raises:
        FileNotFoundError: Nothing at that path and not a hub id, or a hub id neither cached nor downloadable.
        CheckpointError: The file is unreadable, would run code, or its tensors do not form a CLIP.
    """
    path = resolve(name_or_path, revision)
    if path.is_dir():
        if (path / "config.json").is_file():
            return _hf_checkpoint(path)
        path = _single_weight_file(path)
    state_dict = read_state_dict(path)
    layout = detect_format(state_dict)
    if layout == "hf":
        if (path.parent / "config.json").is_file():
            return _hf_checkpoint(path.parent)
        raise CheckpointError(f"{path} holds transformers-layout weights without a config.json beside it")
    stored = _dtype_names(str(t.dtype).removeprefix("torch.") for t in state_dict.values() if t.is_floating_point())
    try:
        config, hf_state_dict = openai_to_hf(state_dict)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from e
    return LoadedCheckpoint(_build(config, hf_state_dict, path), layout, path, stored_dtypes=stored)


def _hf_checkpoint(folder: Path) -> LoadedCheckpoint:
    return LoadedCheckpoint(
        _load_hf_directory(folder), "hf", folder, directory=folder, stored_dtypes=_safetensors_dtypes(folder)
    )


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def _safetensors_dtypes(folder: Path) -> tuple[str, ...]:
    """Floating-point dtypes in the safetensors headers of a directory (headers only: no tensor is read)."""
    from safetensors import safe_open

    codes = []
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            codes.extend(f.get_slice(key).get_dtype() for key in f.keys())
    return _dtype_names(_SAFETENSORS_DTYPES.get(c, c.lower()) for c in codes if c.startswith(("F", "BF")))


def _dtype_names(names) -> tuple[str, ...]:
    return tuple(sorted(set(names)))


def _single_weight_file(folder: Path) -> Path:
    candidates = sorted(p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file())
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise CheckpointError(
            f"{folder} has no config.json, so it must hold exactly one checkpoint file; found: {found}"
        )
    return candidates[0]


def _check_loading_info(info: dict, where: Path) -> None:
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        entries = [e for e in info.get(kind, []) if not str(e).endswith("position_ids")]
        if entries:
            problems.append(f"{kind.replace('_', ' ')}: {', '.join(map(str, entries[:8]))}")
    if problems:
        raise CheckpointError(f"{where} does not hold a complete CLIP ({'; '.join(problems)})")


def _build(config: CLIPConfig, state_dict: dict[str, torch.Tensor], where: Path) -> CLIPModel:
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    model, info = CLIPModel.from_pretrained(
        None, config=config, state_dict=state_dict, attn_implementation="sdpa", output_loading_info=True
    )
    _check_loading_info(info, where)
    return model.float().eval()


def _load_hf_directory(folder: Path) -> CLIPModel:
    try:
        config = CLIPConfig.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}/config.json is not a CLIP config: {e}") from e
    if config.model_type != "clip":
        raise CheckpointError(f"{folder}/config.json describes a {config.model_type!r} model, expected 'clip'")
    try:
        model, info = CLIPModel.from_pretrained(
            folder, attn_implementation="sdpa", dtype=torch.float32, output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"could not read the weights in {folder} (truncated or corrupt?): {e}") from e
    _check_loading_info(info, folder)
    return model.eval()


def check_pt_compatible(config: CLIPConfig) -> None:
    """Raise ``ValueError`` if the ``.pt`` layout cannot describe this architecture (it has no field for heads)."""
    for tower in (config.text_config, config.vision_config):
        if tower.num_attention_heads != _heads(tower.hidden_size):
            raise ValueError(
                f"the .pt layout cannot record attention heads; readers assume width // {HEAD_WIDTH} = "
                f"{_heads(tower.hidden_size)}, but this model's {tower.model_type} has {tower.num_attention_heads}. "
                "Save it with save_pretrained instead."
            )


def save_longclip_pt(model: CLIPModel, path: str | os.PathLike) -> None:
    """Write a model in the released Long-CLIP ``.pt`` layout (a pickled OpenAI-layout state dict).

    For tools that only read that format. Both position tables hold the model's table, so the released code's
    ``positional_embedding * mask1 + positional_embedding_res * mask2`` gives it back exactly. A 77-token CLIP that
    is no Long-CLIP is written in OpenAI's layout, with a single table, as OpenAI's loader expects.
    """
    check_pt_compatible(model.config)
    keep = getattr(model.config, "longclip_keep_rows", None)
    if keep is None and model.config.text_config.max_position_embeddings != CLIP_CONTEXT_LENGTH:
        keep = LONGCLIP_KEEP_ROWS
    state_dict = hf_to_openai(model.state_dict(), model.config, keep=keep)
    torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, Path(path))
