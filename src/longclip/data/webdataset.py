"""Streaming image/long-caption pairs from webdataset tar shards, split across ranks and DataLoader workers.

A shard is a tar file whose members are grouped into samples by name: ``000017.jpg`` (or another suffix of
``longclip.images.IMAGE_EXTENSIONS``), ``000017.txt`` (the long caption) and optionally ``000017.short.txt`` (the
short caption; else the long caption's first sentence) and ``000017.neg.txt`` (a hard negative caption, used only by
``--method llm2clip-text``). Tar reading and brace expansion (``shards-{000..009}.tar``)
come from the ``webdataset`` library (1.0.x), an optional dependency imported only when a stream is built or read.

Splitting is deterministic and by whole shards, so that no two ranks (or workers) ever see the same sample: shard
``i`` goes to rank ``i % world_size``, and a rank's shards are dealt out in the same way to its DataLoader workers.
"""

from __future__ import annotations

import logging
import os
import random
import tarfile
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from longclip.data.captions import first_sentence
from longclip.images import IMAGE_EXTENSIONS, ImageLoadError

__all__ = ["IMAGE_EXTENSIONS", "WebDatasetPairs", "webdataset_pairs"]

logger = logging.getLogger(__name__)

# Sample members read as the image: webdataset names a member by its suffix without the dot.
_IMAGE_KEYS: tuple[str, ...] = tuple(sorted(suffix.lstrip(".") for suffix in IMAGE_EXTENSIONS))

_CAPTION_KEY = "txt"
_SHORT_CAPTION_KEY = "short.txt"
_HARD_NEGATIVE_KEY = "neg.txt"


def _import_webdataset() -> ModuleType:
    """Import the optional ``webdataset`` package, or explain how to install it."""
    try:
        import webdataset
    except ImportError as exc:
        raise ImportError(
            "streaming webdataset tar shards needs the 'webdataset' package: pip install 'longclip[webdataset]'"
        ) from exc
    return webdataset


def webdataset_pairs(
    urls: str | os.PathLike | Sequence[str | os.PathLike],
    transform: Callable[[Any], torch.Tensor],
    *,
    rank: int = 0,
    world_size: int = 1,
    shuffle_buffer: int = 0,
    seed: int = 0,
    short_caption: Callable[[str], str] = first_sentence,
) -> WebDatasetPairs:
    """Stream image/caption pairs from webdataset tar shards, reading only this rank's share of them.

    Each sample holds an image (``jpg``, ``jpeg``, ``png`` or ``webp``), a ``txt`` long caption and optionally a
    ``short.txt`` short caption (else :func:`~longclip.data.first_sentence` of the long one) and optionally a
    ``neg.txt`` hard negative caption. The stream yields the same items as :class:`~longclip.data.PairDataset`
    (``{"index", "pixels", "caption", "short_caption"}``, plus ``"hard_negative"`` for samples with a ``neg.txt``;
    samples without one are kept and simply add no hard negative), or
    ``None`` for a sample whose image cannot be decoded or that lacks an image or caption, so use it with
    :class:`~longclip.data.CaptionCollator`. ``index`` is the running sample number of the stream: ``0, 1, 2, ...``
    with a single DataLoader worker, and ``k * num_workers + worker_id`` for a worker's ``k``-th sample otherwise,
    which keeps indices unique within a rank.

    Shard ``i`` (after brace expansion, in the order given) is read by rank ``i % world_size`` only, and within a
    rank the shards are dealt out to DataLoader workers in the same way, so no sample is seen twice per epoch.

    Args:
        urls: Shard paths or URLs (anything ``webdataset.gopen`` opens): one string, which may use brace notation
            (``"shards-{000..009}.tar"``) and ``::`` to join lists, or a sequence of such strings.
        transform: Encoded image bytes -> float tensor ``[3, H, W]``, e.g. :class:`longclip.images.ImageTransform`.
            It should raise :class:`~longclip.images.ImageLoadError` for undecodable images.
        rank: This process's rank, in ``[0, world_size)``.
        world_size: Number of ranks reading the same shards.
        shuffle_buffer: If positive, shuffle this rank's shard order and then the samples through a buffer of this
            many samples. 0 streams shards and samples in order.
        seed: Seed of the shuffling, combined with the epoch (:meth:`WebDatasetPairs.set_epoch`), the rank and the
            worker, so runs are reproducible.
        short_caption: The rule that makes a short caption where a sample has no ``short.txt``
            (``longclip.data.SHORT_CAPTION_RULES``).

    Returns:
        A :class:`WebDatasetPairs` iterable dataset.

    Raises:
        ImportError: ``webdataset`` is not installed (``pip install 'longclip[webdataset]'``).
        ValueError: No shards are given, ``rank``/``world_size``/``shuffle_buffer`` are out of range, or there are
            fewer shards than ranks. Iterating raises ``ValueError`` too when there are fewer shards than ranks times
            DataLoader workers.
    """
    wds = _import_webdataset()
    if isinstance(urls, (str, os.PathLike)):
        urls = [urls]
    shards = [shard for url in urls for shard in wds.shardlists.expand_urls(os.fspath(url))]
    return WebDatasetPairs(
        shards, transform, rank=rank, world_size=world_size, shuffle_buffer=shuffle_buffer, seed=seed,
        short_caption=short_caption,
    )  # fmt: skip


class WebDatasetPairs(IterableDataset):
    """The iterable dataset returned by :func:`webdataset_pairs` (build it with that function).

    It holds only shard names and settings, so it can be sent to DataLoader worker processes, each of which opens its
    own shards.

    Attributes:
        shards: All shards of all ranks, brace notation expanded.
        rank: This process's rank.
        world_size: Number of ranks.
        shuffle_buffer: Shuffle buffer size in samples (0: no shuffling).
        seed: Base seed of the shuffling.
        epoch: Mixed into the shuffling seed; see :meth:`set_epoch`.
    """

    def __init__(
        self,
        shards: Sequence[str],
        transform: Callable[[Any], torch.Tensor],
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 0,
        seed: int = 0,
        short_caption: Callable[[str], str] = first_sentence,
    ) -> None:
        """Check the settings; see :func:`webdataset_pairs` for the arguments."""
        super().__init__()
        if not shards:
            raise ValueError("webdataset_pairs needs at least one shard; got an empty list")
        if not _is_int(world_size) or world_size < 1:
            raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
        if not _is_int(rank) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an integer in [0, {world_size}), got {rank!r}")
        if not _is_int(shuffle_buffer) or shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be a non-negative integer, got {shuffle_buffer!r}")
        if len(shards) < world_size:
            raise ValueError(
                f"only {len(shards)} shard(s) for {world_size} ranks: every rank must read at least one whole shard "
                "so that no two ranks see the same samples; write more, smaller shards or use fewer ranks"
            )
        self.shards = list(shards)
        self.transform = transform
        self.rank = rank
        self.world_size = world_size
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.short_caption = short_caption
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass shuffle differently (call it before each epoch, as with ``DistributedSampler``).

        DataLoader workers get a copy of the dataset when iteration starts, so this takes effect on the next
        ``iter(loader)``, except with ``persistent_workers=True``, where the workers keep their first copy.
        """
        self.epoch = epoch

    def shards_for(self, worker_id: int = 0, num_workers: int = 1) -> list[str]:
        """The shards one DataLoader worker of this rank reads, in order (before any shuffling).

        Args:
            worker_id: The worker, in ``[0, num_workers)``.
            num_workers: Number of DataLoader workers of each rank (1 when loading in the main process).

        Returns:
            Every ``world_size * num_workers``-th shard, starting from ``rank + world_size * worker_id``.

        Raises:
            ValueError: There are fewer shards than ranks times workers, so some worker would have none.
        """
        if len(self.shards) < self.world_size * num_workers:
            raise ValueError(
                f"only {len(self.shards)} shard(s) for {self.world_size} rank(s) x {num_workers} DataLoader "
                "worker(s): every worker must read at least one whole shard; write more, smaller shards or use "
                "fewer workers"
            )
        # Rank first, then worker: which shards a rank reads must not depend on how many workers it uses.
        return self.shards[self.rank :: self.world_size][worker_id::num_workers]

    def __iter__(self) -> Iterator[dict[str, Any] | None]:
        """Yield this rank's (and this DataLoader worker's) items; ``None`` for bad samples."""
        wds = _import_webdataset()
        info = get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        shards = self.shards_for(worker_id, num_workers)

        if self.shuffle_buffer > 0:
            # A string seed is hashed with SHA-512 by random.Random, so nearby seeds give unrelated streams; the
            # rank and worker are mixed in so that ranks do not all shuffle their (different) shards alike.
            rng = random.Random(f"{self.seed}:{self.epoch}:{self.rank}:{worker_id}")
            rng.shuffle(shards)
            samples = wds.shuffle(self.shuffle_buffer, self.shuffle_buffer, rng=rng)(self._samples(wds, shards))
        else:
            samples = self._samples(wds, shards)
        count = 0
        for sample in samples:
            if _BAD_SHARD in sample:
                yield {"bad_shard": sample[_BAD_SHARD]}  # counted by the collator, not a sample
                continue
            yield self._to_item(sample, count * num_workers + worker_id)
            count += 1

    @staticmethod
    def _samples(wds: ModuleType, shards: list[str]) -> Iterator[dict[str, Any]]:
        """The raw samples (``{"__key__": ..., "jpg": bytes, "txt": bytes, ...}``) of the given shards, in order."""
        tariterators = wds.tariterators
        for url in shards:
            logger.debug("reading shard %s", url)
            # Opened here rather than with wds.tarfile_samples so that each shard's file is closed when it is done.
            try:
                with wds.gopen(url) as stream:
                    files = tariterators.tar_file_expander([{"url": url, "stream": stream}])
                    yield from tariterators.group_by_keys(files)
            except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
                # One truncated or corrupt shard costs its (remaining) samples, not the run.
                logger.warning("skipping the rest of shard %s: %s", url, exc)
                yield {_BAD_SHARD: url}

    def _to_item(self, sample: dict[str, Any], index: int) -> dict[str, Any] | None:
        where = f"sample {sample.get('__key__')!r} of {sample.get('__url__')}"
        image_key = next((key for key in _IMAGE_KEYS if key in sample), None)
        if image_key is None or _CAPTION_KEY not in sample:
            found = sorted(key for key in sample if not key.startswith("__"))
            logger.warning(
                "skipping %s: it needs an image (%s) and a txt caption; found %s", where, ", ".join(_IMAGE_KEYS), found
            )
            return None
        caption = _decode_text(sample[_CAPTION_KEY])
        if not caption:
            logger.warning("skipping %s: its caption is empty", where)
            return None
        short_caption = _decode_text(sample.get(_SHORT_CAPTION_KEY, b"")) or self.short_caption(caption)
        try:
            pixels = self.transform(sample[image_key])
        except ImageLoadError as exc:
            logger.debug("skipping %s: %s", where, exc.reason)
            return None
        item = {"index": index, "pixels": pixels, "caption": caption, "short_caption": short_caption}
        negative = _decode_text(sample.get(_HARD_NEGATIVE_KEY, b""))
        if negative:
            item["hard_negative"] = negative
        return item


_BAD_SHARD = "__bad_shard__"


def _decode_text(data: bytes) -> str:
    # A stray invalid byte should cost one character, not the sample.
    return data.decode("utf-8", errors="replace").strip()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
