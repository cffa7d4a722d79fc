"""Export a model's text and vision towers to ONNX, and run inference through onnxruntime with the same API.

``export_onnx(model, directory)`` writes::

    text.onnx                 input_ids [batch, sequence] int64, attention_mask [batch, sequence] int64
                              -> text_embeds [batch, dim]   (not normalized, as ``encode_text``)
    vision.onnx               pixel_values [batch, 3, size, size] float32 -> image_embeds [batch, dim]
    longclip_onnx.json        family, context length, embedding width, image size, logit scale, file names
    tokenizer / preprocessor files (as ``save_pretrained`` writes them)

and checks that onnxruntime reproduces PyTorch within ``1e-4`` at two batch sizes and sequence lengths before it
returns. ``OnnxDualEncoder`` (``load_onnx(directory)``) is a ``DualEncoder`` whose ``encode_text`` and
``encode_image`` call onnxruntime, so ``embed_texts`` / ``embed_images`` / search work unchanged.

How a family's towers become traceable modules is a registry: ``register_onnx_towers(family, fn)``. The tracer
records Python-level control flow as constants, so a family whose ``encode_text`` trims batches by data (as the
CLIP family does, for speed) registers plain tower modules; the export's parity check catches a family that
does not.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..images import ImageTransform
from ..models.base import DualEncoder

logger = logging.getLogger(__name__)

ONNX_CONFIG = "longclip_onnx.json"
TEXT_FILE = "text.onnx"
VISION_FILE = "vision.onnx"
OPSET = 17
PARITY_ATOL = 1e-4

OnnxTowers = Callable[[Any], tuple[nn.Module, nn.Module]]
_TOWERS: dict[str, OnnxTowers] = {}


def register_onnx_towers(family: str, towers: OnnxTowers) -> None:
    """Register how to turn a model of ``family`` into (text module, vision module) for tracing.

    The text module takes ``(input_ids, attention_mask)`` and the vision module ``pixel_values``; both return
    unnormalized embeddings equal to the model's ``encode_text`` / ``encode_image``.
    """
    _TOWERS[family] = towers


class _CLIPText(nn.Module):
    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # causal tower pooled at the first end token: padding after it never matters, so no trimming is needed
        return self.clip.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output


class _CLIPVision(nn.Module):
    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.clip.get_image_features(pixel_values=pixel_values).pooler_output


class _GenericText(nn.Module):
    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids, attention_mask)


class _GenericVision(nn.Module):
    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixel_values)


register_onnx_towers("clip", lambda model: (_CLIPText(model.clip), _CLIPVision(model.clip)))


def _family(model: Any) -> str:
    family = getattr(model, "family", None)
    if family:
        return family
    from transformers import CLIPModel

    return "clip" if isinstance(getattr(model, "clip", None), CLIPModel) else type(model).__name__


def onnx_towers(model: Any) -> tuple[nn.Module, nn.Module]:
    """The traceable (text, vision) modules of ``model``: its family's registered ones, else its encode methods."""
    towers = _TOWERS.get(_family(model))
    if towers is None:
        return _GenericText(model), _GenericVision(model)
    return towers(model)


def _onnx_modules():
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ImportError("ONNX export and inference need onnx and onnxruntime: pip install 'longclip[onnx]'") from e
    return onnx, onnxruntime


def _sample_batches(model: Any, lengths: tuple[int, ...]) -> list[Any]:
    """Text batches (``TextBatch``: ids and mask, padded by the model's tokenizer) of the given widths, each with
    one full row and one shorter, padded row of real words."""
    words = "a red bicycle leaning against a blue door a cat asleep on the step in the afternoon light " * 40
    batches = []
    for width in lengths:
        width = min(width, model.context_length)
        rows = []
        for n_words in (width, max(2, width // 3)):
            ids = model.tokenizer.encode(" ".join(words.split()[:n_words]))[0]
            rows.append(model.tokenizer.truncate(ids, width) if len(ids) > width else ids)
        batches.append(model.tokenizer.pad(rows, width))
    return batches


def _mask(tokens: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    mask = torch.zeros_like(tokens)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return mask


def _row_lengths(tokens: torch.Tensor, end_id: int | None) -> list[int]:
    """Real tokens per row: up to and including the end token (or the whole row when there is no end id)."""
    if end_id is None:
        return [tokens.shape[1]] * tokens.shape[0]
    return [int((row == end_id).nonzero()[0]) + 1 if (row == end_id).any() else len(row) for row in tokens]


@torch.no_grad()
def export_onnx(model: Any, directory: str | os.PathLike, opset: int = OPSET, atol: float = PARITY_ATOL) -> Path:
    """Write the model's towers as ONNX files with tokenizer and preprocessing, and check them against PyTorch.

    Args:
        model: A loaded model (float32 recommended: the check compares at ``atol``).
        directory: The output directory (created).
        opset: ONNX opset.
        atol: Largest allowed difference between onnxruntime and PyTorch embeddings.

    Raises:
        ValueError: onnxruntime disagrees with PyTorch (a family whose towers do not trace: register them).
    """
    _onnx_modules()
    directory = Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    if model.dtype != torch.float32 or model.device.type != "cpu":
        model = copy.deepcopy(model).float().cpu()  # leave the caller's model where it is
    model.eval()
    text, vision = onnx_towers(model)
    size = model.image_transform.image_size
    sample = _sample_batches(model, (16,))[0]
    end_id = _end_id(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python values recorded as constants
        torch.onnx.export(
            text,
            (sample.input_ids, sample.attention_mask),
            str(directory / TEXT_FILE),
            input_names=["input_ids", "attention_mask"],
            output_names=["text_embeds"],
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}},
            opset_version=opset,
            dynamo=False,
        )
        torch.onnx.export(
            vision,
            (torch.randn(2, 3, size, size),),
            str(directory / VISION_FILE),
            input_names=["pixel_values"],
            output_names=["image_embeds"],
            dynamic_axes={"pixel_values": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    model.tokenizer.save_pretrained(directory)
    model.image_transform.image_processor.save_pretrained(directory)
    config = {
        "format": "longclip-onnx",
        "format_version": 1,
        "family": _family(model),
        "context_length": int(model.context_length),
        "embed_dim": int(model.embed_dim),
        "image_size": int(size),
        "logit_scale": float(model.logit_scale.detach().float()),
        "end_token_id": end_id,
        "text": TEXT_FILE,
        "vision": VISION_FILE,
        "opset": opset,
    }
    (directory / ONNX_CONFIG).write_text(json.dumps(config, indent=2))
    worst = check_parity(model, OnnxDualEncoder(directory, tokenizer=model.tokenizer))
    if worst > atol:
        raise ValueError(
            f"onnxruntime differs from PyTorch by {worst:.2e} (> {atol}) for the {_family(model)} family: "
            "its encode methods do not trace; register traceable towers with register_onnx_towers"
        )
    logger.info("exported %s (onnxruntime matches PyTorch within %.1e)", directory, worst)
    return directory


def _end_id(model: Any) -> int | None:
    """CLIP's end-of-text id for the CLIP family (its mask ends there); ``None`` for families that mask padding."""
    from ..tokenizer import EOT_ID

    return EOT_ID if _family(model) == "clip" else None


@torch.no_grad()
def check_parity(model: Any, onnx_model: OnnxDualEncoder) -> float:
    """Largest difference between PyTorch and onnxruntime embeddings over batches of several shapes."""
    worst = 0.0
    for batch in _sample_batches(model, (7, 23, model.context_length)):
        expected = model.encode_text(batch.input_ids, batch.attention_mask).float()
        got = onnx_model.encode_text(batch.input_ids, batch.attention_mask)
        worst = max(worst, float((got - expected).abs().max()))
    size = onnx_model.config["image_size"]
    for batch in (1, 3):
        pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        worst = max(worst, float((onnx_model.encode_image(pixels) - model.encode_image(pixels).float()).abs().max()))
    return worst


class OnnxDualEncoder(DualEncoder):
    """A model exported by ``export_onnx``, run by onnxruntime, with the ``DualEncoder`` API (embed_*, forward).

    Args:
        directory: What ``export_onnx`` wrote.
        providers: onnxruntime execution providers (default: CPU).
        threads: Intra-op threads for onnxruntime (default: its own choice).
        tokenizer: The model's tokenizer; by default rebuilt from the export (CLIP family; another family passes its
            own, as there is no safe way to rebuild an arbitrary tokenizer from files).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        providers: list[str] | None = None,
        threads: int | None = None,
        tokenizer: Any = None,
    ):
        super().__init__()
        _, ort = _onnx_modules()
        self.directory = Path(directory).expanduser()
        config_file = self.directory / ONNX_CONFIG
        if not config_file.is_file():
            raise FileNotFoundError(f"{self.directory} is not a longclip ONNX export (no {ONNX_CONFIG})")
        self.config = json.loads(config_file.read_text())
        if self.config.get("format") != "longclip-onnx" or self.config.get("format_version") != 1:
            raise ValueError(f"{config_file} is not a longclip ONNX export of format version 1")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = providers or ["CPUExecutionProvider"]
        self.text_session = ort.InferenceSession(
            str(self.directory / self.config["text"]), options, providers=providers
        )
        self.vision_session = ort.InferenceSession(
            str(self.directory / self.config["vision"]), options, providers=providers
        )
        self._text_inputs = {i.name for i in self.text_session.get_inputs()}
        self.end_token_id = self.config.get("end_token_id")
        self.tokenizer = tokenizer if tokenizer is not None else _load_tokenizer(self.config)
        self.image_transform = ImageTransform.from_directory(self.directory, self.config["image_size"])
        self.family = self.config["family"]

    @property
    def context_length(self) -> int:
        return self.config["context_length"]

    @property
    def embed_dim(self) -> int:
        return self.config["embed_dim"]

    @property
    def logit_scale(self) -> torch.Tensor:
        return torch.tensor(self.config["logit_scale"])

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # inputs go to onnxruntime as numpy arrays

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, normalize: bool = False
    ) -> torch.Tensor:
        """Token ids ``[N, L]`` (``L`` up to the context) -> text features ``[N, dim]``, through onnxruntime."""
        if input_ids.ndim != 2:
            raise ValueError(f"expected token ids of shape [batch, length], got {tuple(input_ids.shape)}")
        if input_ids.shape[1] > self.context_length:
            raise ValueError(f"texts of {input_ids.shape[1]} tokens do not fit the context of {self.context_length}")
        if input_ids.shape[0] == 0:
            return torch.empty(0, self.embed_dim)
        if attention_mask is None:  # CLIP: real tokens run to the end token (id 0 is a word); others: not padding
            if self.end_token_id is None:
                attention_mask = (input_ids != self.tokenizer.pad_id).long()
            else:
                attention_mask = _mask(input_ids, _row_lengths(input_ids, self.end_token_id))
        feed = {"input_ids": input_ids.cpu().long().numpy(), "attention_mask": attention_mask.cpu().long().numpy()}
        output = self.text_session.run(None, {k: v for k, v in feed.items() if k in self._text_inputs})[0]
        features = torch.from_numpy(np.asarray(output, dtype=np.float32))
        return F.normalize(features, dim=-1) if normalize else features

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Preprocessed images ``[N, 3, H, W]`` -> image features ``[N, dim]``, through onnxruntime."""
        output = self.vision_session.run(None, {"pixel_values": pixels.cpu().float().numpy()})[0]
        features = torch.from_numpy(np.asarray(output, dtype=np.float32))
        return F.normalize(features, dim=-1) if normalize else features

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Copy the export to another directory."""
        import shutil

        shutil.copytree(self.directory, directory, dirs_exist_ok=True)


def _load_tokenizer(config: dict) -> Any:
    """The tokenizer of an export: CLIP's BPE at the model's context for the CLIP family."""
    if config["family"] == "clip":
        from ..tokenizer import get_tokenizer

        return get_tokenizer(config["context_length"])
    raise ValueError(
        f"an ONNX export of the {config['family']!r} family needs its tokenizer: "
        "load_onnx(directory, tokenizer=...) with the tokenizer of the model that was exported"
    )


def is_onnx_directory(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory ``export_onnx`` wrote."""
    return (Path(path).expanduser() / ONNX_CONFIG).is_file()


def load_onnx(
    directory: str | os.PathLike,
    providers: list[str] | None = None,
    threads: int | None = None,
    tokenizer: Any = None,
) -> tuple[OnnxDualEncoder, ImageTransform]:
    """Load an ONNX export for onnxruntime inference: ``(model, preprocess)`` like ``longclip.load``."""
    model = OnnxDualEncoder(directory, providers, threads, tokenizer)
    return model, model.image_transform


RUNTIMES = ("auto", "torch", "onnx")


def load_with_runtime(
    name_or_path: str | os.PathLike,
    runtime: str = "auto",
    device: str = "cpu",
    dtype: str | None = None,
    export_dir: str | os.PathLike | None = None,
) -> DualEncoder:
    """Load a model for inference through PyTorch or onnxruntime.

    Args:
        name_or_path: Anything ``longclip.load`` reads, or a directory ``export_onnx`` wrote.
        runtime: ``"auto"`` (onnxruntime for an ONNX export, PyTorch otherwise), ``"torch"`` or ``"onnx"`` (a
            PyTorch model is exported first, into ``export_dir`` or a temporary directory).
        device: PyTorch device (the ONNX runtime here runs on the CPU).
        dtype: PyTorch weight dtype.
        export_dir: Where ``runtime="onnx"`` exports a PyTorch model.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    onnx_dir = is_onnx_directory(name_or_path)
    if runtime == "torch" and onnx_dir:
        raise ValueError(f"{name_or_path} is an ONNX export: run it with the onnx runtime")
    if onnx_dir:
        return load_onnx(name_or_path)[0]
    from ..api import load

    model, _ = load(name_or_path, device=device, dtype=dtype)
    if runtime != "onnx":
        return model
    import tempfile

    directory = Path(export_dir) if export_dir else Path(tempfile.mkdtemp(prefix="longclip-onnx-"))
    logger.info("exporting %s to ONNX in %s", name_or_path, directory)
    return load_onnx(export_onnx(model, directory))[0]
