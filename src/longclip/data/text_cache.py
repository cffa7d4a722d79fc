"""A cache of caption embeddings: sharded safetensors files and an index (which caption, which shard, which row).

LLM2CLIP (Huang et al., 2024) freezes its language model after caption-contrastive tuning and embeds every caption
once, so training the adapter and the vision encoder never runs the language model. The cache is written so that a
long run can be stopped and resumed and split over ranks:

* the unique captions are listed in a fixed order and cut into shards of ``shard_size``; shard ``k`` always holds
  the same captions, so a resumed run produces the files an uninterrupted one would;
* each shard is written to a temporary name and renamed into place (atomic), so a killed run never leaves a partial
  ``shard-*.safetensors``; a rerun skips the shards that exist and deletes stale temporary files;
* rank ``r`` of ``w`` embeds shards ``r, r + w, ...``; rank 0 writes ``index.json`` once every shard exists.

This module knows nothing of models: the caller passes ``embed(texts) -> [len(texts), dim]``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
MANIFEST_FILE = "manifest.json"
TENSOR_NAME = "embeddings"


def unique_captions(pairs: Iterable) -> list[str]:
    """Every caption of a data set (long then short of each pair), each once, in first-seen order."""
    seen: dict[str, None] = {}
    for pair in pairs:
        for text in (pair.caption, pair.short_caption):
            if text:
                seen.setdefault(text, None)
    return list(seen)


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def _digest(captions: Sequence[str]) -> str:
    h = hashlib.sha256()
    for text in captions:
        h.update(text.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_text_cache(
    captions: Sequence[str],
    embed: Callable[[list[str]], torch.Tensor],
    output: str | os.PathLike,
    shard_size: int = 4096,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] | None = None,
    metadata: dict | None = None,
) -> Path:
    """Embed ``captions`` into a cache at ``output``, resuming what an earlier run of the same job left.

    Args:
        captions: The captions, unique (``unique_captions``), in the order that defines the shards.
        embed: ``fn(texts) -> FloatTensor[len(texts), dim]``.
        output: The cache folder.
        shard_size: Captions per shard.
        rank: This process's rank; it embeds shards ``rank, rank + world_size, ...``.
        world_size: Number of processes.
        barrier: Waits for every rank (under torchrun); needed before rank 0 writes the index.
        metadata: Recorded in the index (e.g. the language model, its pooling); a rerun must give the same.

    Returns:
        The path of ``index.json``.

    Raises:
        ValueError: ``output`` holds a cache of other captions, shard size or metadata; or bad arguments.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    if len(set(captions)) != len(captions):
        raise ValueError("the captions must be unique (see unique_captions)")
    from safetensors.torch import save_file

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    manifest = {
        "captions_sha256": _digest(captions),
        "count": len(captions),
        "shard_size": shard_size,
        "metadata": metadata or {},
    }
    _check_or_write_manifest(output / MANIFEST_FILE, manifest)
    for stale in output.glob(f".shard-*.tmp-{rank}-*"):
        stale.unlink()  # a shard this rank was writing when it was stopped
    n_shards = -(-len(captions) // shard_size)
    done = 0
    for k in range(rank, n_shards, world_size):
        path = output / shard_name(k)
        if path.is_file():
            continue
        texts = list(captions[k * shard_size : (k + 1) * shard_size])
        features = embed(texts).detach().float().cpu().contiguous()
        if features.shape[0] != len(texts):
            raise ValueError(f"embed returned {features.shape[0]} rows for {len(texts)} captions")
        tmp = output / f".{path.name}.tmp-{rank}-{os.getpid()}"
        save_file({TENSOR_NAME: features}, str(tmp), metadata={"first": str(k * shard_size)})
        os.replace(tmp, path)
        done += 1
        logger.info("cache shard %d/%d written (%d captions)", k + 1, n_shards, len(texts))
    logger.info("rank %d embedded %d shards (the others existed or belong to other ranks)", rank, done)
    if barrier is not None:
        barrier()
    index = output / INDEX_FILE
    if rank == 0:
        missing = [shard_name(k) for k in range(n_shards) if not (output / shard_name(k)).is_file()]
        if missing:
            raise RuntimeError(f"cache {output} is missing shards {missing[:5]}; rerun to complete it")
        dim = _shard_dim(output / shard_name(0)) if n_shards else 0
        entries = [[text, i // shard_size, i % shard_size] for i, text in enumerate(captions)]
        _write_json_atomic(index, {**manifest, "dim": dim, "shards": n_shards, "entries": entries})
    if barrier is not None:
        barrier()
    return index


def _check_or_write_manifest(path: Path, manifest: dict) -> None:
    if path.is_file():
        existing = json.loads(path.read_text())
        if existing != manifest:
            differs = sorted(k for k in manifest if existing.get(k) != manifest[k])
            raise ValueError(
                f"{path.parent} holds a cache made with other {', '.join(differs)}; give a new output folder "
                "(or delete it) instead of resuming it"
            )
        return
    _write_json_atomic(path, manifest)


def _shard_dim(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return int(f.get_slice(TENSOR_NAME).get_shape()[1])


class TextEmbeddingCache:
    """A finished cache, held in memory: caption text -> its embedding.

    Args:
        directory: The cache folder (with ``index.json``).
    """

    def __init__(self, directory: str | os.PathLike):
        from safetensors.torch import load_file

        self.directory = Path(directory)
        index_path = self.directory / INDEX_FILE
        if not index_path.is_file():
            raise FileNotFoundError(
                f"{self.directory} has no {INDEX_FILE}: not a finished text cache (make one with longclip llm-embed)"
            )
        index = json.loads(index_path.read_text())
        self.metadata: dict = index.get("metadata", {})
        self.dim = int(index["dim"])
        shards = [load_file(str(self.directory / shard_name(k)))[TENSOR_NAME] for k in range(index["shards"])]
        self.embeddings = torch.cat(shards) if shards else torch.empty(0, self.dim)
        size = index["shard_size"]
        self.rows = {text: shard * size + row for text, shard, row in index["entries"]}

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, text: str) -> bool:
        return text in self.rows

    def lookup(self, texts: Sequence[str]) -> torch.Tensor:
        """The embeddings of ``texts``, ``[len(texts), dim]``.

        Raises:
            KeyError: A text is not in the cache (names it).
        """
        rows = []
        for text in texts:
            if text not in self.rows:
                raise KeyError(
                    f"caption not in the text cache {self.directory}: {text[:80]!r}; "
                    "embed this data set with longclip llm-embed"
                )
            rows.append(self.rows[text])
        return self.embeddings[torch.tensor(rows, dtype=torch.long)]
