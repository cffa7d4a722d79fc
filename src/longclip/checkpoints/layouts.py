"""The table of checkpoint layouts: how to recognize a state dict stored in a foreign layout and convert it.

A layout belongs to a model family: ``convert`` turns the stored tensors into the family's own key layout and
returns the config the family builds from (what its ``config.json`` would hold, ``model_type`` included). Layouts
are tried in the order they were registered; the first whose ``matches`` accepts the keys wins. Adding a format is
one ``register_layout`` line beside its converter. Where key names cannot tell two layouts apart, the reader is
told the layout by name (``read_checkpoint(path, layout=NAME)``, ``longclip.load(..., layout=NAME)``,
``--layout NAME``): ``layout_named`` looks it up, and its converter is used whatever ``matches`` says.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from .convert import detect_format, openai_to_hf
from .reading import CheckpointError, sample_keys

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Layout:
    """One stored layout of a family's weights.

    Attributes:
        name: What ``Checkpoint.format`` says for it (``"openai"``, ``"longclip-pt"``, ``"tulip-open_clip"``...).
        family: The registry name of the model family that builds it.
        matches: ``fn(state_dict) -> bool``: whether a state dict is in this layout (from its keys).
        convert: ``fn(state_dict) -> (config, state_dict)``: the family's config dict and its own key layout, every
            shape checked (raise ``CheckpointError`` naming the tensor).
    """

    name: str
    family: str
    matches: Callable[[Mapping[str, torch.Tensor]], bool]
    convert: Callable[[Mapping[str, torch.Tensor]], tuple[dict, StateDict]]


_LAYOUTS: dict[str, Layout] = {}


def register_layout(layout: Layout, before: str | None = None) -> None:
    """Add a layout to the table (a layout of the same name is replaced).

    Args:
        layout: The layout.
        before: Try it before this registered layout (for a layout whose keys a broader one would also match);
            by default it is tried after all registered so far.

    Raises:
        ValueError: The layout has no name or family, or ``before`` names no registered layout.
    """
    if not layout.name or not layout.family:
        raise ValueError(f"a layout needs a name and a family, got {layout.name!r} / {layout.family!r}")
    if before is not None and before not in _LAYOUTS:
        raise ValueError(
            f"no registered layout {before!r} to put {layout.name!r} before; known: {', '.join(_LAYOUTS)}"
        )
    _LAYOUTS.pop(layout.name, None)
    if before is None:
        _LAYOUTS[layout.name] = layout
        return
    entries = list(_LAYOUTS.items())
    at = [name for name, _ in entries].index(before)
    _LAYOUTS.clear()
    _LAYOUTS.update([*entries[:at], (layout.name, layout), *entries[at:]])


def layouts() -> list[Layout]:
    """The registered layouts, in the order they are tried."""
    return list(_LAYOUTS.values())


def find_layout(state_dict: Mapping[str, torch.Tensor]) -> Layout | None:
    """The first registered layout that matches ``state_dict``, or None."""
    return next((layout for layout in _LAYOUTS.values() if layout.matches(state_dict)), None)


def layout_named(name: str) -> Layout:
    """The registered layout called ``name``.

    Raises:
        ValueError: No layout of that name is registered (the message lists the registered names).
    """
    if name not in _LAYOUTS:
        raise ValueError(f"unknown checkpoint layout {name!r}; registered layouts: {', '.join(_LAYOUTS)}")
    return _LAYOUTS[name]


def unknown_layout_error(state_dict: Mapping[str, torch.Tensor]) -> CheckpointError:
    """The error for tensors no layout matches: it lists the layouts known and the keys seen."""
    return CheckpointError(
        "unknown checkpoint layout: not OpenAI CLIP, Long-CLIP nor transformers CLIP, and none of the registered "
        f"layouts ({', '.join(_LAYOUTS)}). Keys seen: {sample_keys(sorted(state_dict))}"
    )


# --- the CLIP family's layouts ----------------------------------------------------------------------------------

_OPENAI_KEYS = {"token_embedding.weight", "positional_embedding", "text_projection"}


def _is_openai(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return _OPENAI_KEYS <= set(state_dict) and "positional_embedding_res" not in state_dict


def _is_released_longclip(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return _OPENAI_KEYS <= set(state_dict) and "positional_embedding_res" in state_dict


def convert_openai(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict, StateDict]:
    """OpenAI CLIP or released Long-CLIP tensors -> a ``CLIPModel`` config dict and state dict.

    The config dict holds ``keep_positions`` for a released Long-CLIP (the rows its two tables split at).
    """
    detect_format(state_dict)  # refuses ResNet towers with a clear message
    config, converted = openai_to_hf(state_dict)
    return config.to_dict(), converted


# OpenAI's .pt (state dict or TorchScript archive), the released Long-CLIP .pt and OpenAI-layout safetensors all
# hold these key layouts; the container is read by reading.read_state_dict whatever it is.
register_layout(Layout("longclip-pt", "clip", _is_released_longclip, convert_openai))
register_layout(Layout("openai", "clip", _is_openai, convert_openai))

# --- the TULIP family's layouts ---------------------------------------------------------------------------------

from .tulip import convert_tulip_open_clip, is_tulip_open_clip  # noqa: E402

# Tried first: a CoPE TULIP file that keeps open_clip's unused text position table would match "openai" too.
register_layout(Layout("tulip-open_clip", "tulip", is_tulip_open_clip, convert_tulip_open_clip), before="longclip-pt")
