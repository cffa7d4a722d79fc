"""Resolving a model name to local files: a path, or a Hugging Face hub id through huggingface_hub's cache.

With the files cached, loading works offline (``HF_HUB_OFFLINE=1`` or no network); without them, the error says
what to download and where to put it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# Released models users ask for by hub id, with the file each repository holds. Only used for messages and
# ``available_models()``: any hub id holding a CLIP checkpoint loads.
KNOWN_MODELS = {
    "BeichenZhang/LongCLIP-B": "longclip-B.pt",
    "BeichenZhang/LongCLIP-L": "longclip-L.pt",
    "BeichenZhang/LongCLIP-L-336px": "longclip-L@336px.pt",
    "openai/clip-vit-base-patch32": "model.safetensors",
    "openai/clip-vit-base-patch16": "model.safetensors",
    "openai/clip-vit-large-patch14": "model.safetensors",
    "openai/clip-vit-large-patch14-336": "model.safetensors",
}
_WEIGHT_PATTERNS = ["*.safetensors", "*.pt", "*.pth"]
_SIDE_FILES = ["*.json", "*.txt"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".json")


def available_models() -> list[str]:
    """Hub ids of the released models this package is known to load."""
    return list(KNOWN_MODELS)


def is_hub_id(name: str) -> bool:
    """Whether ``name`` means a hub repository: ``hf-hub:org/name``, or ``org/name`` that does not look like a path.

    ``checkpoints/longclip-B.pt`` has the ``org/name`` shape too; a checkpoint file suffix or a leading ``.``,
    ``/`` or ``~`` marks it as a (mistyped or missing) local path instead.
    """
    if name.startswith("hf-hub:"):
        return bool(_HUB_ID.match(name.removeprefix("hf-hub:")))
    return bool(_HUB_ID.match(name)) and not name.endswith(_FILE_SUFFIXES) and not name.startswith((".", "~"))


class HubUnavailableError(FileNotFoundError):
    """A hub model is not in the local cache and could not be downloaded."""


def resolve(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """Local file or directory for a path or hub id.

    Raises:
        FileNotFoundError: ``name_or_path`` is neither an existing path nor a hub id.
        HubUnavailableError: The hub id is not cached and the hub cannot be reached.
    """
    path = Path(name_or_path).expanduser()
    try:
        path.stat()
        return path
    except FileNotFoundError:
        pass
    except PermissionError as e:  # Path.exists() would call this "no such file"
        raise PermissionError(f"{path}: permission denied (cannot look it up)") from e
    except OSError as e:  # a symlink loop (ELOOP), a name too long, ...: a path, never a hub id
        raise FileNotFoundError(f"{path}: {e.strerror}") from e
    if path.is_symlink():
        raise FileNotFoundError(f"{path} is a symbolic link to {os.readlink(path)}, which does not exist")
    name = str(name_or_path)
    if not is_hub_id(name):
        raise FileNotFoundError(f"{name}: no such file or directory, and not a Hugging Face hub id (org/name)")
    return download(name.removeprefix("hf-hub:"), revision)


def download(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot folder of a hub repository, downloading its weights and configs if needed."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=_WEIGHT_PATTERNS + _SIDE_FILES))
        if not any(folder.glob(p) for p in _WEIGHT_PATTERNS):
            # Older transformers repositories only hold pytorch_model.bin.
            folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=["*.bin", *_SIDE_FILES]))
        return folder
    except RepositoryNotFoundError as e:
        raise HubUnavailableError(f"{repo_id}: no such repository on the Hugging Face hub (or it is private)") from e
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        cache = Path(constants.HF_HUB_CACHE)
        folder = cache / ("models--" + repo_id.replace("/", "--"))
        file_hint = f" (the file {KNOWN_MODELS[repo_id]})" if repo_id in KNOWN_MODELS else ""
        raise HubUnavailableError(
            f"{repo_id} is not in the local Hugging Face cache ({cache}) and the hub could not be reached. "
            f"On a machine with network run `hf download {repo_id}` and copy {folder.name} into {cache} here "
            f"(or point HF_HUB_CACHE at a cache holding it), or download the checkpoint{file_hint} and pass its "
            f"local path instead."
        ) from e
