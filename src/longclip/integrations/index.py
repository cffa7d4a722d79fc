"""A searchable index of an image folder: embeddings, metadata and faiss, updated incrementally and crash-safely.

Layout of an index directory::

    manifest.json            written last; names the files below and their checksums (the index *is* the manifest)
    vectors-<gen>.npy        [N, dim] float32 L2-normalized image embeddings
    metadata-<gen>.jsonl     one line per row: path (relative to the root, POSIX), size, mtime_ns
    faiss-<gen>.index        faiss index over the vectors (inner product = cosine similarity)
    work/                    embeddings of an unfinished run, in parts, so a killed run resumes where it stopped

Every file is written to a temporary name, flushed and renamed into place; a new generation's files are complete
before the manifest that names them is renamed over the old one, so a run killed at any moment leaves either the
old index or the new one, never a mix. Opening an index checks the manifest's sizes and checksums.

A re-run embeds only files that are new or changed (size or modification time) and drops deleted ones. Under
``torchrun`` each rank embeds its share of the pending files into ``work/`` and rank 0 merges them.

Which model built an index is recorded as its id and a *fingerprint*: the model's embeddings of a fixed text and a
fixed image. Comparing fingerprints by cosine similarity tells the same weights in another dtype or device (equal
within rounding) from a different model (unrelated directions), where a hash of the weights could not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ..images import ImageLoadError, open_image

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WORK_DIR = "work"
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
IndexKind = Literal["auto", "flat", "ivf", "hnsw"]
INDEX_KINDS = ("auto", "flat", "ivf", "hnsw")
AUTO_APPROXIMATE_FROM = 100_000  # below this many vectors an exact search is fast enough (milliseconds per query)
HNSW_NEIGHBOURS = 32
HNSW_EF_SEARCH = 128
PROBE_TEXT = "a red bicycle leaning against a blue door, a cat asleep on the step, afternoon light"
# Same weights in bfloat16/float16 vs float32 agree to ~0.999; unrelated models score near 0. A model this close to the
# indexing one (e.g. a few fine-tuning steps away) ranks images the same way, so it is accepted whatever its name.
SAME_MODEL_COSINE = 0.99


class IndexFormatError(ValueError):
    """An index directory is missing, incomplete, corrupt or from another version."""


class ModelMismatchError(ValueError):
    """The model given does not match the one that built the index."""


@dataclass(frozen=True)
class FileRecord:
    """One indexed file: its path relative to the root (POSIX separators), size in bytes and mtime in ns."""

    path: str
    size: int
    mtime_ns: int


@dataclass
class SearchHit:
    """One search result."""

    rank: int
    path: str  # relative to the indexed folder
    score: float  # cosine similarity
    file: str  # absolute path on this machine


@dataclass
class IndexReport:
    """What a build or update did."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    kept: int = 0
    resumed: int = 0  # embeddings reused from an interrupted run
    total: int = 0
    kind: str = "flat"
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"} of unreadable files
    seconds: float = 0.0


# --- kill simulation ------------------------------------------------------------------------------------------------


def _step(name: str) -> None:
    """Called after each durable step of a build; tests replace it to simulate a kill at that point."""


# --- files ----------------------------------------------------------------------------------------------------------


def scan_images(root: str | os.PathLike) -> dict[str, FileRecord]:
    """Image files under ``root`` (recursively; hidden files and folders skipped), by relative POSIX path.

    Symbolic links are followed only where they resolve inside ``root``: an index never points outside its folder.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    real_root = root.resolve()
    found: dict[str, FileRecord] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            path = Path(folder) / name
            if not path.resolve().is_relative_to(real_root):
                logger.warning("skipping %s: it links outside %s", path, root)
                continue
            try:
                stat = path.stat()
            except OSError as e:  # a dangling link, or a file removed while we scan
                logger.warning("skipping %s: %s", path, e)
                continue
            relative = path.relative_to(root).as_posix()
            found[relative] = FileRecord(relative, stat.st_size, stat.st_mtime_ns)
    return found


def _atomic_write(path: Path, write: Callable[[Path], None]) -> str:
    """Write through ``write(tmp_path)``, fsync, rename over ``path``; return the file's sha256."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    with open(tmp, "rb") as f:
        digest = _sha256(f)
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return digest


def _sha256(f) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not possible on every platform; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text(path: Path, text: str) -> str:
    return _atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _write_npy(path: Path, array: np.ndarray) -> str:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)

    return _atomic_write(path, write)


# --- model fingerprint ----------------------------------------------------------------------------------------------


def _probe_image() -> np.ndarray:
    """A fixed 64x64 RGB test pattern (gradients and a square), the same on every machine."""
    y, x = np.mgrid[0:64, 0:64]
    image = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)
    image[20:44, 20:44] = (200, 30, 30)
    return image


@torch.no_grad()
def model_fingerprint(model: Any) -> dict[str, Any]:
    """The model's embeddings of a fixed text and a fixed image, with its embedding width and text context."""
    text = model.embed_texts([PROBE_TEXT], batch_size=1)[0]
    image = model.embed_images([model.image_transform(_probe_image())], batch_size=1)[0]
    probe = torch.cat([text, image]).tolist()
    rounded = [round(v, 6) for v in probe]
    digest = hashlib.sha256(json.dumps([round(v, 2) for v in probe]).encode()).hexdigest()[:16]
    return {
        "embed_dim": int(text.shape[0]),
        "context_length": int(model.context_length),
        "probe": rounded,
        "digest": digest,
    }


def fingerprint_similarity(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Worst cosine similarity of the text and image probes of two fingerprints (-1 when widths differ)."""
    if a["embed_dim"] != b["embed_dim"]:
        return -1.0
    dim = a["embed_dim"]
    pa, pb = np.asarray(a["probe"], np.float64), np.asarray(b["probe"], np.float64)

    def cosine(x: np.ndarray, y: np.ndarray) -> float:  # the stored probes are rounded: normalize again
        return float(x @ y / max(np.linalg.norm(x) * np.linalg.norm(y), 1e-12))

    return min(cosine(pa[:dim], pb[:dim]), cosine(pa[dim:], pb[dim:]))


def model_difference(stored: dict[str, Any], current: dict[str, Any]) -> str | None:
    """Why two fingerprints belong to different models (embedding width, text context, probe embeddings), or None."""
    if current["embed_dim"] != stored["embed_dim"]:
        return f"{stored['embed_dim']}- vs {current['embed_dim']}-dimensional embeddings"
    if current["context_length"] != stored["context_length"]:
        return f"a {stored['context_length']}- vs a {current['context_length']}-token text context"
    similarity = fingerprint_similarity(stored, current)
    if similarity < SAME_MODEL_COSINE:
        return (
            f"different embeddings (fingerprint {stored['digest']} vs {current['digest']}, probe cosine "
            f"{similarity:.3f} < {SAME_MODEL_COSINE})"
        )
    return None


def check_same_model(stored: dict[str, Any], stored_id: str, model: Any, model_id: str | None) -> None:
    """Raise ``ModelMismatchError`` unless ``model`` computes the embeddings the stored fingerprint records."""
    difference = model_difference(stored, model_fingerprint(model))
    if difference:
        raise ModelMismatchError(
            f"the index was built with {stored_id}, not with the model {model_id or 'given'} ({difference}): "
            f"search with {stored_id}, or re-index with --rebuild"
        )


# --- faiss ----------------------------------------------------------------------------------------------------------


def _faiss():
    try:
        import faiss
    except ImportError as e:
        raise ImportError("the search index needs faiss: pip install 'longclip[search]'") from e
    return faiss


def choose_kind(kind: IndexKind, count: int) -> str:
    """The faiss index type for ``count`` vectors: ``kind`` itself, or for ``"auto"`` exact below 100k vectors."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"index kind must be one of {', '.join(INDEX_KINDS)}, got {kind!r}")
    if kind != "auto":
        return kind
    return "flat" if count < AUTO_APPROXIMATE_FROM else "ivf"


def build_faiss(vectors: np.ndarray, kind: str) -> tuple[Any, dict[str, int]]:
    """A faiss inner-product index over ``vectors`` and its search settings.

    ``flat`` is exact; ``ivf`` clusters into about ``4 sqrt(N)`` lists (faiss's rule of thumb) and probes a
    sixteenth of them; ``hnsw`` is a graph with 32 neighbours per node.
    """
    faiss = _faiss()
    count, dim = vectors.shape
    if kind == "flat":
        index, settings = faiss.IndexFlatIP(dim), {}
    elif kind == "ivf":
        # k-means wants ~39 training points per list; small collections get fewer lists
        lists = max(1, min(int(4 * math.sqrt(max(count, 1))), count // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        if count:
            index.train(vectors)
        settings = {"nlist": lists, "nprobe": max(1, lists // 16)}
        index.nprobe = settings["nprobe"]
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        settings = {"M": HNSW_NEIGHBOURS, "efSearch": HNSW_EF_SEARCH}
        index.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        raise ValueError(f"unknown faiss index kind {kind!r}; expected flat, ivf or hnsw")
    if count:
        index.add(vectors)
    return index, settings


def _apply_settings(index: Any, kind: str, settings: dict[str, int]) -> None:
    if kind == "ivf":
        index.nprobe = settings["nprobe"]
    elif kind == "hnsw":
        index.hnsw.efSearch = settings["efSearch"]


# --- the index ------------------------------------------------------------------------------------------------------


class ImageIndex:
    """A built index, opened for search.

    Attributes:
        directory: The index directory.
        root: The indexed image folder.
        records: One ``FileRecord`` per row.
        vectors: ``[N, dim]`` float32 embeddings.
        manifest: The parsed ``manifest.json``.
    """

    def __init__(self, directory: Path, manifest: dict, records: list[FileRecord], vectors: np.ndarray, faiss_index):
        self.directory = directory
        self.manifest = manifest
        self.root = Path(manifest["root"])
        self.records = records
        self.vectors = vectors
        self.faiss_index = faiss_index

    @classmethod
    def open(cls, directory: str | os.PathLike, verify: bool = True) -> ImageIndex:
        """Open an index directory, checking that every file the manifest names is whole.

        Args:
            directory: What ``build_index`` wrote.
            verify: Compare each file's sha256 with the manifest (sizes are always compared).

        Raises:
            FileNotFoundError: No index there (no manifest: nothing was ever completed).
            IndexFormatError: A file is missing, truncated or altered, or the format is unknown.
        """
        directory = Path(directory).expanduser()
        manifest = _read_manifest(directory)
        if manifest is None:
            raise FileNotFoundError(f"{directory} is not a longclip index (no {MANIFEST}): run longclip index")
        for role, entry in manifest["files"].items():
            path = directory / entry["name"]
            if not path.is_file():
                raise IndexFormatError(f"index {directory} is incomplete: its {role} file {entry['name']} is missing")
            if path.stat().st_size != entry["bytes"]:
                raise IndexFormatError(f"index {directory} is damaged: {entry['name']} has the wrong size")
            if verify:
                with open(path, "rb") as f:
                    if _sha256(f) != entry["sha256"]:
                        raise IndexFormatError(f"index {directory} is damaged: {entry['name']} fails its checksum")
        vectors = np.load(directory / manifest["files"]["vectors"]["name"], allow_pickle=False)
        records = _read_records(directory / manifest["files"]["metadata"]["name"])
        if len(records) != manifest["count"] or vectors.shape != (manifest["count"], manifest["model"]["embed_dim"]):
            raise IndexFormatError(f"{directory} is inconsistent: {len(records)} records, {vectors.shape} vectors")
        faiss = _faiss()
        index = faiss.read_index(str(directory / manifest["files"]["faiss"]["name"]))
        if index.ntotal != manifest["count"]:
            raise IndexFormatError(f"index {directory} is inconsistent: faiss holds {index.ntotal} vectors")
        _apply_settings(index, manifest["kind"], manifest.get("kind_settings", {}))
        return cls(directory, manifest, records, vectors, index)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def model_id(self) -> str:
        return self.manifest["model"]["id"]

    @property
    def skipped(self) -> list[dict[str, str]]:
        """Files the build could not read: ``{"path", "reason"}``."""
        return self.manifest.get("skipped", [])

    def check_model(self, model: Any, model_id: str | None = None) -> None:
        """Raise ``ModelMismatchError`` unless ``model`` is the model that built this index."""
        check_same_model(self.manifest["model"], self.model_id, model, model_id)

    def search_vectors(self, queries: np.ndarray | torch.Tensor, k: int = 10) -> list[list[SearchHit]]:
        """The ``k`` best rows for each query vector (``[Q, dim]``, L2-normalized), best first."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        queries = np.ascontiguousarray(torch.as_tensor(queries).float().numpy().reshape(-1, self.vectors.shape[1]))
        if not np.isfinite(queries).all():
            raise ValueError("a query embedding is not finite (was the query image unreadable?)")
        scores, rows = self.faiss_index.search(queries, min(k, max(len(self), 1)))
        hits = []
        for score_row, id_row in zip(scores, rows, strict=True):
            found = [(float(s), int(i)) for s, i in zip(score_row, id_row, strict=True) if i >= 0]
            hits.append(
                [
                    SearchHit(rank, self.records[i].path, s, str(self.root / self.records[i].path))
                    for rank, (s, i) in enumerate(found, start=1)
                ]
            )
        return hits

    def search_text(self, model: Any, text: str, k: int = 10, check: bool = True) -> list[SearchHit]:
        """Images best matching a text of any length (texts past the context are read in chunks)."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"the query must be a non-empty text, got {text!r}")
        if check:
            self.check_model(model)
        query = model.embed_texts([text], batch_size=1, long_texts="chunk")
        return self.search_vectors(query, k)[0]

    def search_image(self, model: Any, image: Any, k: int = 10, check: bool = True) -> list[SearchHit]:
        """Images most similar to ``image`` (a path, bytes, PIL image or array)."""
        if check:
            self.check_model(model)
        query = model.embed_images([image], batch_size=1)
        return self.search_vectors(query, k)[0]


def _read_manifest(directory: Path) -> dict | None:
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:  # cannot happen through our atomic writes, but a user may edit it
        raise IndexFormatError(f"{path} is not valid JSON: {e}") from e
    if manifest.get("format") != "longclip-index" or manifest.get("format_version") != FORMAT_VERSION:
        raise IndexFormatError(
            f"{path} is not a longclip index of format version {FORMAT_VERSION} "
            f"(format {manifest.get('format')!r}, version {manifest.get('format_version')!r})"
        )
    return manifest


def _read_records(path: Path) -> list[FileRecord]:
    with open(path, encoding="utf-8") as f:
        return [FileRecord(**json.loads(line)) for line in f if line.strip()]


def open_index(directory: str | os.PathLike, verify: bool = True) -> ImageIndex:
    """Open an index for search (see ``ImageIndex.open``)."""
    return ImageIndex.open(directory, verify=verify)


def search(
    index: str | os.PathLike | ImageIndex,
    query: str | None = None,
    image: Any = None,
    k: int = 10,
    model: Any = None,
) -> list[SearchHit]:
    """Search an index with a text or an image, loading the index's own model unless one is given.

    Args:
        index: An index directory or an opened ``ImageIndex``.
        query: A text of any length.
        image: Or an image (path, bytes, PIL image, array).
        k: How many results.
        model: The model to embed the query with; by default the one recorded in the index.
    """
    if (query is None) == (image is None):
        raise ValueError("search takes either a text query or an image, exactly one of them")
    if not isinstance(index, ImageIndex):
        index = ImageIndex.open(index)
    if model is None:
        from .onnx_export import load_with_runtime

        model = load_with_runtime(index.model_id)  # a PyTorch checkpoint or an ONNX export
    if query is not None:
        return index.search_text(model, query, k)
    return index.search_image(model, image, k)


# --- building -------------------------------------------------------------------------------------------------------


@dataclass
class _Part:
    records: list[FileRecord]
    vectors: np.ndarray  # rows for records
    skipped: list[dict[str, Any]]  # {"path", "size", "mtime_ns", "reason"}


def _save_part(path: Path, part: _Part) -> None:
    meta = {"records": [asdict(r) for r in part.records], "skipped": part.skipped}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, vectors=part.vectors, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))

    _atomic_write(path, write)


def _load_part(path: Path) -> _Part | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes().decode())
            vectors = data["vectors"]
    except (OSError, ValueError, KeyError) as e:  # a part is renamed into place whole; anything else is not ours
        logger.warning("ignoring unreadable resume file %s: %s", path, e)
        return None
    return _Part([FileRecord(**r) for r in meta["records"]], vectors, meta["skipped"])


def _distributed() -> tuple[int, int]:
    """(rank, world size), joining the process group torchrun describes when there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _load_pixels(model: Any, root: Path, record: FileRecord) -> torch.Tensor | str:
    """The preprocessed image, or the reason it cannot be read."""
    try:
        return model.image_transform(open_image(root / record.path))
    except (ImageLoadError, OSError) as e:
        return getattr(e, "reason", None) or str(e)


def build_index(
    root: str | os.PathLike,
    out: str | os.PathLike,
    model: Any,
    model_id: str,
    batch_size: int = 32,
    kind: IndexKind = "auto",
    rebuild: bool = False,
    part_size: int = 512,
    workers: int | None = None,
    progress: bool = True,
) -> IndexReport:
    """Build or update the index of ``root`` in ``out``, embedding only new and changed images.

    Safe to kill at any moment: re-running finishes the work (reusing embeddings already computed) and an index
    that opens is always complete and correct. Under ``torchrun`` every rank calls this with the same arguments;
    each embeds its share and rank 0 writes the index (``out`` must be on a filesystem all ranks see).

    Args:
        root: The image folder (searched recursively).
        out: The index directory.
        model: A loaded model (``longclip.load``, or an ONNX model).
        model_id: How to load the model again (a path is stored absolute), recorded in the index.
        batch_size: Images per forward pass.
        kind: The faiss index type: ``flat`` (exact), ``ivf``, ``hnsw``, or ``auto`` (exact below 100k images).
        rebuild: Re-embed everything, even with another model than the index was built with.
        part_size: Images per resume file: at most this much work is lost when a run is killed.
        workers: Threads decoding images (default: up to 4).
        progress: Show a progress bar (images/s).

    Raises:
        ModelMismatchError: The existing index was built by another model (and ``rebuild`` is off).
    """
    started = time.perf_counter()
    root, out = Path(root).expanduser().resolve(), Path(out).expanduser()
    choose_kind(kind, 0)  # validate before any work
    if batch_size < 1 or part_size < 1:
        raise ValueError(f"batch_size and part_size must be at least 1, got {batch_size} and {part_size}")
    rank, world = _distributed()
    files = scan_images(root)
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {root}")
    work = out / WORK_DIR
    fingerprint = model_fingerprint(model)
    old = None if rebuild else _existing(out, fingerprint, model_id)
    if rank == 0:
        _prepare_work(work, fingerprint)
    _barrier(world)
    reusable = _reusable_rows(old, files)
    resumed = _resume_parts(work, files)
    done = set(reusable) | {r.path for p in resumed for r in p.records}
    done |= {s["path"] for p in resumed for s in p.skipped}
    done |= _still_unreadable(old, files)
    pending = [files[p] for p in sorted(files) if p not in done]
    mine = pending[rank::world]
    if rank == 0:
        logger.info("%d images: %d to embed, %d unchanged", len(files), len(pending), len(files) - len(pending))

    _embed_parts(model, root, mine, work, rank, batch_size, part_size, workers, progress and rank == 0)
    _barrier(world)
    if _up_to_date(old, root, files, reusable, pending, resumed, kind):
        if rank == 0:
            logger.info("the index is up to date")
            _clean(out, {e["name"] for e in old.manifest["files"].values()})
        _barrier(world)
        return IndexReport(kept=len(old), total=len(old), kind=old.manifest["kind"], skipped=_public(old.skipped))
    report = IndexReport()
    if rank == 0:
        report = _commit(out, root, model_id, fingerprint, kind, files, old, reusable, work)
        report.resumed = sum(len(p.records) for p in resumed)
        report.seconds = time.perf_counter() - started
    _barrier(world)
    return report


def _up_to_date(
    old: ImageIndex | None,
    root: Path,
    files: dict[str, FileRecord],
    reusable: dict[str, int],
    pending: list[FileRecord],
    resumed: list[_Part],
    kind: IndexKind,
) -> bool:
    """Whether the old index already says everything a new generation would."""
    return (
        old is not None
        and old.manifest["root"] == str(root)
        and not pending
        and not any(p.records or p.skipped for p in resumed)
        and len(reusable) == len(old)
        and all(_unchanged(files, s) for s in old.skipped)
        and old.manifest["kind"] == choose_kind(kind, len(old))
    )


def _existing(out: Path, fingerprint: dict, model_id: str) -> ImageIndex | None:
    """The index already in ``out``, checked to come from the same model."""
    manifest = _read_manifest(out)
    if manifest is None:
        return None
    stored = manifest["model"]
    difference = model_difference(stored, fingerprint)
    if difference:
        raise ModelMismatchError(
            f"{out} was built with {stored['id']}, not with {model_id} ({difference}): use another --out, or "
            "--rebuild to re-embed everything"
        )
    try:
        return ImageIndex.open(out)
    except IndexFormatError as e:
        logger.warning("re-embedding everything: the existing index cannot be used (%s)", e)
        return None


def _reusable_rows(old: ImageIndex | None, files: dict[str, FileRecord]) -> dict[str, int]:
    """Rows of the old index whose file is unchanged, by path."""
    if old is None:
        return {}
    return {r.path: i for i, r in enumerate(old.records) if files.get(r.path) == r}


def _still_unreadable(old: ImageIndex | None, files: dict[str, FileRecord]) -> set[str]:
    """Files the old index could not read and that have not changed since (not worth another try)."""
    if old is None:
        return set()
    return {
        s["path"]
        for s in old.skipped
        if s["path"] in files and (files[s["path"]].size, files[s["path"]].mtime_ns) == (s["size"], s["mtime_ns"])
    }


def _prepare_work(work: Path, fingerprint: dict) -> None:
    """Create the work folder, dropping an interrupted run's parts if another model made them."""
    work.mkdir(parents=True, exist_ok=True)
    model_file = work / "model.json"
    if model_file.is_file():
        stored = json.loads(model_file.read_text(encoding="utf-8"))
        if model_difference(stored, fingerprint) is None:
            return
        logger.info("discarding the interrupted run's embeddings: another model made them")
        for part in work.glob("part-*.npz"):
            part.unlink()
    _write_text(model_file, json.dumps(fingerprint))


def _resume_parts(work: Path, files: dict[str, FileRecord]) -> list[_Part]:
    """Parts of an interrupted run (same model: see ``_prepare_work``), keeping only files unchanged since."""
    parts = []
    for path in sorted(work.glob("part-*.npz")):
        part = _load_part(path)
        if part is None:
            continue
        keep = [i for i, r in enumerate(part.records) if files.get(r.path) == r]
        skipped = [s for s in part.skipped if _unchanged(files, s)]
        parts.append(_Part([part.records[i] for i in keep], part.vectors[keep], skipped))
    return parts


def _unchanged(files: dict[str, FileRecord], entry: dict[str, Any]) -> bool:
    record = files.get(entry["path"])
    return record is not None and (record.size, record.mtime_ns) == (entry["size"], entry["mtime_ns"])


def _embed_parts(
    model: Any,
    root: Path,
    records: list[FileRecord],
    work: Path,
    rank: int,
    batch_size: int,
    part_size: int,
    workers: int | None,
    progress: bool,
) -> None:
    """Embed ``records`` and save them to ``work/`` a part at a time."""
    if not records:
        return
    first = _next_part_number(work, rank)
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(records), unit="img", disable=not progress) as bar:
        for n, start in enumerate(range(0, len(records), part_size)):
            chunk = records[start : start + part_size]
            loaded = list(pool.map(lambda r: _load_pixels(model, root, r), chunk))
            good = [(r, x) for r, x in zip(chunk, loaded, strict=True) if isinstance(x, torch.Tensor)]
            skipped = [
                {"path": r.path, "size": r.size, "mtime_ns": r.mtime_ns, "reason": x}
                for r, x in zip(chunk, loaded, strict=True)
                if not isinstance(x, torch.Tensor)
            ]
            for s in skipped:
                logger.warning("skipping unreadable image %s: %s", s["path"], s["reason"])
            vectors = np.zeros((0, 0), np.float32)
            if good:
                features = model.embed_images([x for _, x in good], batch_size=batch_size, progress=False)
                vectors = features.numpy().astype(np.float32)
            _save_part(work / f"part-r{rank:03d}-{first + n:06d}.npz", _Part([r for r, _ in good], vectors, skipped))
            bar.update(len(chunk))
            _step("part")


def _next_part_number(work: Path, rank: int) -> int:
    numbers = [int(p.stem.rsplit("-", 1)[1]) for p in work.glob(f"part-r{rank:03d}-*.npz")]
    return max(numbers, default=-1) + 1


def _commit(
    out: Path,
    root: Path,
    model_id: str,
    fingerprint: dict,
    kind: IndexKind,
    files: dict[str, FileRecord],
    old: ImageIndex | None,
    reusable: dict[str, int],
    work: Path,
) -> IndexReport:
    """Merge the old index's unchanged rows and every part into a new generation, then switch the manifest."""
    parts = _resume_parts(work, files)
    rows: dict[str, tuple[FileRecord, np.ndarray]] = {}
    for path, i in reusable.items():
        rows[path] = (old.records[i], old.vectors[i])
    new_paths: set[str] = set()
    for part in parts:
        for record, vector in zip(part.records, part.vectors, strict=True):
            if record.path not in reusable:  # a run killed after its manifest leaves parts the index already has
                rows[record.path] = (record, vector)
                new_paths.add(record.path)
    skipped = {s["path"]: s for s in (old.skipped if old else []) if _unchanged(files, s)}
    for part in parts:
        skipped.update({s["path"]: s for s in part.skipped})
    for path in rows:
        skipped.pop(path, None)

    ordered = sorted(rows)
    records = [rows[p][0] for p in ordered]
    dim = fingerprint["embed_dim"]
    vectors = np.stack([rows[p][1] for p in ordered]).astype(np.float32) if ordered else np.zeros((0, dim), np.float32)
    chosen = choose_kind(kind, len(records))
    index, settings = build_faiss(vectors, chosen)

    old_paths = {r.path for r in old.records} if old else set()
    report = IndexReport(
        added=len(new_paths - old_paths),
        updated=len(new_paths & old_paths),
        removed=len(old_paths - set(files)),
        kept=len(reusable),
        total=len(records),
        kind=chosen,
        skipped=_public(sorted(skipped.values(), key=_by_path)),
    )
    generation = (old.manifest["generation"] + 1) if old else _next_generation(out)
    names = {
        "vectors": f"vectors-{generation:06d}.npy",
        "metadata": f"metadata-{generation:06d}.jsonl",
        "faiss": f"faiss-{generation:06d}.index",
    }
    digests = {"vectors": _write_npy(out / names["vectors"], vectors)}
    _step("vectors")
    metadata = "".join(json.dumps(asdict(r)) + "\n" for r in records)
    digests["metadata"] = _write_text(out / names["metadata"], metadata)
    _step("metadata")
    faiss = _faiss()
    digests["faiss"] = _atomic_write(out / names["faiss"], lambda tmp: faiss.write_index(index, str(tmp)))
    _step("faiss")
    manifest = {
        "format": "longclip-index",
        "format_version": FORMAT_VERSION,
        "generation": generation,
        "root": str(root),
        "count": len(records),
        "kind": chosen,
        "kind_settings": settings,
        "model": {"id": model_id, **fingerprint},
        "files": {
            role: {"name": names[role], "bytes": (out / names[role]).stat().st_size, "sha256": digests[role]}
            for role in names
        },
        "skipped": sorted(skipped.values(), key=_by_path),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_text(out / MANIFEST, json.dumps(manifest, indent=1))
    _step("manifest")
    _clean(out, set(names.values()))
    _step("clean")
    return report


def _public(skipped: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"path": s["path"], "reason": s["reason"]} for s in skipped]


def _by_path(entry: dict[str, Any]) -> str:
    return entry["path"]


def _next_generation(out: Path) -> int:
    """One past any generation whose files lie around (from a run killed before its manifest was written)."""
    numbers = [int(p.stem.rsplit("-", 1)[1]) for p in out.glob("vectors-*.npy")]
    return max(numbers, default=0) + 1


def _clean(out: Path, keep: Iterable[str]) -> None:
    """Remove other generations' files, temporary files and the finished run's parts."""
    keep = set(keep)
    for pattern in ("vectors-*.npy", "metadata-*.jsonl", "faiss-*.index", ".*.tmp-*"):
        for path in out.glob(pattern):
            if path.name not in keep:
                path.unlink(missing_ok=True)
    work = out / WORK_DIR
    if work.is_dir():
        for path in work.iterdir():
            path.unlink(missing_ok=True)
        work.rmdir()


def format_hits(hits: Sequence[SearchHit]) -> list[dict[str, Any]]:
    """Hits as plain dictionaries (for JSON output)."""
    return [asdict(h) for h in hits]
