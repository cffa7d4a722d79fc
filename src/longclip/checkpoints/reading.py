"""Reading checkpoint files into state dicts without ever running code from them.

Three containers reach us:

* safetensors files: plain tensors, safe by construction;
* ``torch.save`` pickles (``.pt``, ``.pth``, ``.bin``; the released ``longclip-B.pt`` is one): read with torch's
  weights-only unpickler, which refuses any global that is not a tensor building block;
* TorchScript archives (OpenAI's ``ViT-B-16.pt``): their ``data.pkl`` names ``__torch__.*`` module classes, which
  weights-only loading refuses and ``torch.jit.load`` would compile and run. We read them with our own restricted
  unpickler that knows only tensors and turns every ``__torch__`` object into an inert record of its attributes;
  the TorchScript code in the archive is never looked at.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors

from ..errors import CheckpointError

__all__ = ["CheckpointError", "read_state_dict", "sample_keys"]


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read all tensors of a checkpoint file as a flat ``{name: tensor}`` dict on the CPU.

    Accepts safetensors files, weights-only ``torch.save`` pickles (a state dict, possibly wrapped under
    ``"state_dict"`` or ``"model"``, possibly with DDP's ``module.`` prefix) and TorchScript archives.

    Raises:
        FileNotFoundError: The path does not exist.
        CheckpointError: The file is truncated, corrupt, holds something other than tensors, or would need to run
            code to load.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes)")

    with open(path, "rb") as f:
        head = f.read(9)
    if head[8:9] == b"{":  # safetensors: an 8-byte header length, then the JSON header
        try:
            return load_safetensors(str(path))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(
                f"{path} ({size} bytes) is a safetensors file that is truncated or corrupt: {e}"
            ) from e
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if any(n.endswith("/constants.pkl") for n in names) or any("/code/" in n for n in names):
                return _flatten_script_module(_read_torchscript(path, archive, names), path)
        return _unwrap(_load_weights_only(path, size), path)
    if head[:1] == b"\x80":  # pickle protocol marker: torch.save's legacy (non-zip) format
        return _unwrap(_load_weights_only(path, size), path)
    kind = "starts like a zip archive but has no readable central directory" if head[:2] == b"PK" else "is not"
    raise CheckpointError(
        f"{path} ({size} bytes) {kind} a torch checkpoint, a TorchScript archive or a safetensors file; "
        "is it truncated or corrupt?"
    )


def _load_weights_only(path: Path, size: int) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's weights-only unpickler met a global it does not allow: the file wants to run code.
        raise CheckpointError(
            f"{path} contains objects other than tensors and was refused, so no code in it ran. "
            f"Only weights are loaded from pickles. Details: {str(e).splitlines()[0]}"
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path} ({size} bytes) could not be read; the file is truncated or corrupt: {e}") from e


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict inside what ``torch.load`` returned and drop DDP's ``module.`` prefix."""
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} holds a dict without tensors; keys: {sample_keys(obj)}")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


# --- TorchScript archives ---------------------------------------------------------------------------------------

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _ScriptObject:
    """Inert stand-in for a pickled ``__torch__`` module: it only stores the attributes it is given."""

    def __init__(self, *args: object) -> None:
        self.attributes: dict[str, object] = {}

    def __setstate__(self, state: object) -> None:
        if isinstance(state, dict):
            self.attributes = state


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_: object) -> torch.Tensor:
    return torch.as_strided(storage, size, stride, offset).clone()


class _RestrictedUnpickler(pickle.Unpickler):
    """Knows tensors, ordered dicts and inert ``__torch__`` records; refuses every other global."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: Path):
        super().__init__(file)
        self._archive, self._prefix, self._path = archive, prefix, path

    def find_class(self, module: str, name: str) -> object:
        if module == "__torch__" or module.startswith("__torch__."):
            return _ScriptObject
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise CheckpointError(
            f"{self._path}: refusing to load global {module}.{name} from a TorchScript archive; "
            "only tensors are read, so no code in it ran"
        )

    def persistent_load(self, pid: tuple) -> torch.Tensor:
        kind, dtype, key, _location, numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise CheckpointError(f"{self._path}: unexpected persistent record {kind!r} in a TorchScript archive")
        data = self._archive.read(f"{self._prefix}data/{key}")
        if len(data) != numel * dtype.itemsize:
            raise CheckpointError(
                f"{self._path}: tensor storage {key} has {len(data)} bytes, expected {numel * dtype.itemsize}"
            )
        return torch.frombuffer(bytearray(data), dtype=dtype) if numel else torch.empty(0, dtype=dtype)


def _read_torchscript(path: Path, archive: zipfile.ZipFile, names: list[str]) -> object:
    data_pkl = next((n for n in names if n.endswith("/data.pkl") and n.count("/") == 1), None)
    if data_pkl is None:
        raise CheckpointError(f"{path} looks like a TorchScript archive but has no data.pkl")
    prefix = data_pkl[: -len("data.pkl")]
    try:
        with archive.open(data_pkl) as f:
            return _RestrictedUnpickler(f, archive, prefix, path).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, KeyError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt TorchScript archive: {e}") from e


def _flatten_script_module(root: object, path: Path) -> dict[str, torch.Tensor]:
    """Turn the tree of ``__torch__`` records into ``{dotted.name: tensor}``, like ``Module.state_dict()``."""
    if not isinstance(root, _ScriptObject):
        raise CheckpointError(f"{path}: the TorchScript archive does not hold a module")
    flat: dict[str, torch.Tensor] = {}
    stack: list[tuple[str, _ScriptObject]] = [("", root)]
    while stack:
        prefix, node = stack.pop()
        for name, value in node.attributes.items():
            if isinstance(value, torch.Tensor):
                flat[prefix + name] = value
            elif isinstance(value, _ScriptObject):
                stack.append((f"{prefix}{name}.", value))
    if not flat:
        raise CheckpointError(f"{path}: the TorchScript archive holds no tensors")
    return flat


def sample_keys(keys: object, n: int = 12) -> str:
    keys = list(keys)
    shown = ", ".join(map(str, keys[:n]))
    return f"{shown}, … ({len(keys)} in all)" if len(keys) > n else shown
