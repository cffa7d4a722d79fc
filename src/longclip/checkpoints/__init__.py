"""Reading checkpoints: files in, ``Checkpoint`` (config + state dict in a family's layout) out. Never models.

Sources: a transformers-style directory (``config.json`` + safetensors, or a weights-only ``.bin``; this package
writes those), or a single file in a registered layout (``layouts.py``: a released Long-CLIP ``.pt``, an OpenAI CLIP
``.pt`` as state dict or TorchScript archive, a safetensors file in OpenAI's layout, ...), or a hub id that resolves
to any of these. The format is detected from file contents and tensor names, never from the file name.
``longclip.models.build_model`` turns a ``Checkpoint`` into a model.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..atomic import atomic_file
from ..positions import LONGCLIP_KEEP_POSITIONS, keep_positions_of
from ..tokenizer import CLIP_CONTEXT_LENGTH
from . import llm2clip as _llm2clip  # noqa: F401  (registers the released LLM2CLIP layout)
from .convert import HEAD_WIDTH, config_from_openai, detect_format, heads_for_width, hf_to_openai, openai_to_hf
from .hub import HubUnavailableError, available_models, is_hub_id, resolve
from .layouts import Layout, find_layout, layout_named, layouts, register_layout, unknown_layout_error
from .reading import CheckpointError, read_state_dict, sample_keys

if TYPE_CHECKING:
    from transformers import CLIPConfig, CLIPModel

logger = logging.getLogger(__name__)

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "HubUnavailableError",
    "Layout",
    "LoadedCheckpoint",
    "available_models",
    "check_finite",
    "check_pt_compatible",
    "config_from_openai",
    "detect_format",
    "hf_to_openai",
    "is_hub_id",
    "layout_named",
    "layouts",
    "load_clip",
    "openai_to_hf",
    "read_checkpoint",
    "read_config",
    "read_state_dict",
    "register_layout",
    "save_longclip_pt",
    "single_weight_file",
]

_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


@dataclass
class Checkpoint:
    """What a checkpoint holds, in the layout of the family that builds it.

    Attributes:
        state_dict: The tensors, in the family's own key layout, in their stored dtypes, on the CPU.
        config: The family's config (what its ``config.json`` holds), with ``"model_type"``.
        family: The registry name of the family that builds it; for a transformers directory, its ``model_type``
            (the registry maps model types to families).
        format: How it was stored: ``"hf"`` (a transformers directory) or a layout name (``"openai"``,
            ``"longclip-pt"``, ...).
        path: The file or directory read.
        directory: Where tokenizer / preprocessor files live (transformers directories only).
        stored_dtypes: The floating-point dtypes of the weights as stored, sorted.
    """

    state_dict: dict[str, torch.Tensor]
    config: dict
    family: str
    format: str
    path: Path
    directory: Path | None = None
    stored_dtypes: tuple[str, ...] = field(default=())

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")


def read_checkpoint(
    name_or_path: str | os.PathLike, revision: str | None = None, layout: str | None = None
) -> Checkpoint:
    """Read any supported checkpoint: a transformers directory, a file in a registered layout, or a hub id.

    Args:
        name_or_path: A file, a directory, or a hub id such as ``BeichenZhang/LongCLIP-B``.
        revision: Hub revision (branch, tag or commit), for hub ids.
        layout: The name of a registered layout to read a single checkpoint file in, instead of detecting it from
            the keys: for files whose key names fit more than one layout (a TULIP stage-2 file, ``tulip-open_clip``,
            has exactly OpenAI CLIP's names). Its converter still checks every tensor.

    Raises:
        ValueError: ``layout`` names no registered layout (the message lists them), or is given for a
            transformers directory (its ``config.json`` says what it holds).
        FileNotFoundError: Nothing at that path and not a hub id, or a hub id neither cached nor downloadable.
        CheckpointError: The file is unreadable, would run code, or its tensors match no known layout (or do not
            have the shapes its layout needs; the message names the tensor).
    """
    chosen = layout_named(layout) if layout is not None else None  # a bad name fails before any file is read
    path = training_checkpoint_model(resolve(name_or_path, revision))
    if path.is_dir():
        if (path / "config.json").is_file():
            if chosen is not None:
                raise ValueError(
                    f"{path} is a transformers directory (config.json names its model); layout={layout!r} applies "
                    "to a single checkpoint file"
                )
            return read_directory(path)
        path = single_weight_file(path)
    state_dict = read_state_dict(path)
    detected = find_layout(state_dict)
    if chosen is not None and chosen is not detected:
        logger.info(
            "reading %s in the layout %s as asked (its keys alone suggest %s)",
            path, chosen.name, detected.name if detected else "no registered layout",
        )  # fmt: skip
    found = chosen or detected
    if found is None:
        if (path.parent / "config.json").is_file():
            return read_directory(path.parent)
        if "text_model.embeddings.token_embedding.weight" in state_dict:
            raise CheckpointError(f"{path} holds transformers-layout weights without a config.json beside it")
        raise unknown_layout_error(state_dict)
    try:
        config, converted = found.convert(state_dict)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from e
    check_finite(converted, path)
    return Checkpoint(converted, config, found.family, found.name, path, stored_dtypes=stored_dtypes(state_dict))


def read_config(name_or_path: str | os.PathLike, revision: str | None = None) -> Checkpoint:
    """Like ``read_checkpoint``, but a transformers directory's weights are not read (``state_dict`` is empty).

    For what only needs the config (a processor, a tokenizer); a single file has to be read whole.
    """
    path = training_checkpoint_model(resolve(name_or_path, revision))
    if path.is_dir() and (path / "config.json").is_file():
        config = read_config_json(path)
        return Checkpoint({}, config, config["model_type"], "hf", path, directory=path)
    return read_checkpoint(path)


def training_checkpoint_model(path: Path) -> Path:
    """The model folder of a training checkpoint (``checkpoints/step-N``), so that a run can be evaluated midway.

    A training checkpoint holds ``state.json``, the optimizer and RNG states and the model as ``save_pretrained``
    wrote it in ``model/``; any other path is returned unchanged.
    """
    model = path / "model"
    if path.is_dir() and not (path / "config.json").exists() and (path / "state.json").is_file():
        if (model / "config.json").is_file():
            return model
    return path


def read_directory(folder: Path) -> Checkpoint:
    """A transformers-style directory: ``config.json`` as a dict, and its safetensors (or ``.bin``) weights."""
    config = read_config_json(folder)
    state_dict: dict[str, torch.Tensor] = {}
    for file in weight_files(folder):
        state_dict.update(read_state_dict(file))
    check_finite(state_dict, folder)
    dtypes = stored_dtypes(state_dict)
    return Checkpoint(state_dict, config, config["model_type"], "hf", folder, directory=folder, stored_dtypes=dtypes)


def read_config_json(folder: Path) -> dict:
    """``folder/config.json`` as a dict, checked to name a ``model_type``."""
    file = folder / "config.json"
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file} is not a readable JSON config: {e}") from e
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise CheckpointError(f"{file} does not name a model_type, so no model family can be chosen for it")
    return config


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a transformers directory: safetensors (one file or an index of shards), else ``.bin``."""
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = folder / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            except (OSError, json.JSONDecodeError, KeyError, AttributeError) as e:
                raise CheckpointError(f"{index} is not a readable weight index: {e}") from e
            outside = [name for name in shards if not isinstance(name, str) or Path(name).name != name]
            if outside:
                raise CheckpointError(f"{index} names shard {outside[0]!r}, which is not a file name in {folder}")
            return [folder / name for name in shards]
        if (folder / single).is_file():
            return [folder / single]
    found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    raise CheckpointError(f"{folder} has a config.json but no model.safetensors or pytorch_model.bin (found: {found})")


def single_weight_file(folder: Path) -> Path:
    """The one checkpoint file in a directory without ``config.json``."""
    candidates = sorted(p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file())
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise CheckpointError(
            f"{folder} has no config.json, so it must hold exactly one checkpoint file; found: {found}"
        )
    return candidates[0]


def check_finite(state_dict: dict[str, torch.Tensor], where: object) -> None:
    """Refuse floating-point weights holding NaN or infinity: they load fine and then make every output NaN.

    Raises:
        CheckpointError: Naming the tensors and how many of their values are not finite.
    """
    bad = []
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() or tensor.is_complex():
            count = tensor.numel() - int(torch.isfinite(tensor).sum())
            if count:
                bad.append(f"{name} ({count} of {tensor.numel()})")
    if bad:
        raise CheckpointError(
            f"{where} holds weights that are NaN or infinite, which would make every output NaN: {sample_keys(bad, 4)}"
        )


def stored_dtypes(state_dict: dict[str, torch.Tensor]) -> tuple[str, ...]:
    """The floating-point dtypes of a state dict's tensors, sorted (``("float16",)``)."""
    names = {str(t.dtype).removeprefix("torch.") for t in state_dict.values() if t.is_floating_point()}
    return tuple(sorted(names))


# --- compatibility: load_clip returned a built transformers CLIPModel -------------------------------------------


@dataclass
class LoadedCheckpoint:
    """A loaded CLIP and where it came from (what ``load_clip`` returns; kept for compatibility).

    Attributes:
        model: The weights as a transformers ``CLIPModel`` in float32 on the CPU, in eval mode.
        format: ``"longclip-pt"``, ``"openai"`` or ``"hf"``.
        path: The file or directory read.
        directory: The directory whose tokenizer / preprocessor configs apply, for ``"hf"`` checkpoints.
        stored_dtypes: The dtypes of the floating-point weights as stored on disk.
    """

    model: CLIPModel
    format: str
    path: Path
    directory: Path | None = None
    stored_dtypes: tuple[str, ...] = ()

    @property
    def keep_positions(self) -> int | None:
        """Leading rows of the text position table that Long-CLIP keeps frozen, if this is a Long-CLIP."""
        return keep_positions_of(self.model.config)

    @property
    def keep_rows(self) -> int | None:
        """Old name of ``keep_positions``."""
        return self.keep_positions


def load_clip(name_or_path: str | os.PathLike, revision: str | None = None) -> LoadedCheckpoint:
    """Compatibility wrapper: ``read_checkpoint`` + the CLIP family's builder, returning the ``CLIPModel``.

    New code uses ``longclip.load`` (or ``read_checkpoint`` and ``longclip.models.build_model``).

    Raises:
        CheckpointError: As ``read_checkpoint``, or the checkpoint is not of the CLIP family.
    """
    from ..models import build_model  # models build; this wrapper only forwards

    checkpoint = read_checkpoint(name_or_path, revision)
    model = build_model(checkpoint)
    clip = getattr(model, "clip", None)
    if clip is None:
        raise CheckpointError(f"{checkpoint.path} is a {checkpoint.family!r} model, not a CLIP")
    return LoadedCheckpoint(clip, checkpoint.format, checkpoint.path, checkpoint.directory, checkpoint.stored_dtypes)


# --- writing the released format ---------------------------------------------------------------------------------


def check_pt_compatible(config: CLIPConfig) -> None:
    """Raise ``ValueError`` if the ``.pt`` layout cannot describe this architecture (it has no field for heads)."""
    for tower in (config.text_config, config.vision_config):
        if tower.num_attention_heads != heads_for_width(tower.hidden_size):
            raise ValueError(
                f"the .pt layout cannot record attention heads; readers assume width // {HEAD_WIDTH} = "
                f"{heads_for_width(tower.hidden_size)}, but this model's {tower.model_type} has "
                f"{tower.num_attention_heads}. Save it with save_pretrained instead."
            )


def save_longclip_pt(model: CLIPModel, path: str | os.PathLike) -> None:
    """Write a model in the released Long-CLIP ``.pt`` layout (a pickled OpenAI-layout state dict).

    For tools that only read that format. Both position tables hold the model's table, so the released code's
    ``positional_embedding * mask1 + positional_embedding_res * mask2`` gives it back exactly. A 77-token CLIP that
    is no Long-CLIP is written in OpenAI's layout, with a single table, as OpenAI's loader expects.
    """
    check_pt_compatible(model.config)
    keep_positions = keep_positions_of(model.config)
    if keep_positions is None and model.config.text_config.max_position_embeddings != CLIP_CONTEXT_LENGTH:
        keep_positions = LONGCLIP_KEEP_POSITIONS
    state_dict = hf_to_openai(model.state_dict(), model.config, keep_positions=keep_positions)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with atomic_file(path) as temporary:
        torch.save(tensors, temporary)
