"""The image index: build, incremental update, crash safety, model checks and search against a direct computation."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("faiss", reason="the search index needs faiss-cpu (pip install 'longclip[search]')")

from search_helpers import make_photos, save_tiny_model  # noqa: E402

import longclip  # noqa: E402
from longclip.integrations import index as index_module  # noqa: E402
from longclip.integrations.index import (  # noqa: E402
    ImageIndex,
    IndexFormatError,
    ModelMismatchError,
    build_faiss,
    build_index,
    scan_images,
    search,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def model(model_dir):
    return longclip.load(model_dir)[0]


@pytest.fixture
def photos_dir(tmp_path) -> Path:
    root = tmp_path / "photos"
    make_photos(root)
    (root / "broken.jpg").write_bytes(b"not a jpeg at all")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    make_photos(root / ".hidden")
    return root


class CountingModel:
    """Delegates to a model and counts the images it embeds (to prove what a re-run re-embeds)."""

    def __init__(self, model):
        self.model = model
        self.embedded = 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def embed_images(self, images, **kwargs):
        images = list(images)
        self.embedded += len(images)
        return self.model.embed_images(images, **kwargs)


def direct_scores(model, root: Path, paths: list[str], query: torch.Tensor) -> dict[str, float]:
    """Cosine similarity of each image to a query, computed without the index."""
    features = model.embed_images([root / p for p in paths], batch_size=4)
    return dict(zip(paths, (features @ query.reshape(-1)).tolist(), strict=True))


def test_scan_is_recursive_and_skips_hidden_and_other_files(photos_dir):
    found = scan_images(photos_dir)
    assert sorted(found) == sorted(
        [f"{d}/{c}.png" for d, c in [("home", "red"), ("trip", "green"), ("home", "blue")]]
        + [f"{d}/{c}.png" for d, c in [("trip", "yellow"), ("home", "purple"), ("trip", "white")]]
        + ["broken.jpg"]
    )
    record = found["home/red.png"]
    stat = (photos_dir / "home/red.png").stat()
    assert (record.size, record.mtime_ns) == (stat.st_size, stat.st_mtime_ns)


def test_build_stores_vectors_metadata_and_lists_unreadable(photos_dir, tmp_path, model, model_dir):
    out = tmp_path / "index"
    report = build_index(photos_dir, out, model, str(model_dir), batch_size=4, progress=False)
    assert (report.added, report.total, report.kind) == (6, 6, "flat")
    assert [s["path"] for s in report.skipped] == ["broken.jpg"]
    assert "broken.jpg" in report.skipped[0]["reason"] or report.skipped[0]["reason"]

    index = ImageIndex.open(out)
    paths = [r.path for r in index.records]
    expected = model.embed_images([photos_dir / p for p in paths], batch_size=3).numpy()
    np.testing.assert_allclose(index.vectors, expected, atol=1e-5)
    assert index.model_id == str(model_dir)
    assert index.manifest["model"]["embed_dim"] == 16 and index.manifest["model"]["context_length"] == 248
    assert [s["path"] for s in index.skipped] == ["broken.jpg"]
    assert not (out / "work").exists()


def test_text_search_ranks_as_a_direct_computation(photos_dir, tmp_path, model, model_dir):
    out = tmp_path / "index"
    build_index(photos_dir, out, model, str(model_dir), progress=False)
    index = ImageIndex.open(out)
    # longer than the 248-token context: read in chunks, which a direct computation reproduces here
    text = "a red square on a dark noisy background, " * 40
    hits = index.search_text(model, text, k=6)
    pieces = model.tokenizer.chunk(text)
    assert len(pieces) > 1
    piece_features = torch.nn.functional.normalize(
        torch.cat([model.embed_tokens([p], batch_size=1) for p in pieces]), dim=-1
    )
    query = torch.nn.functional.normalize(piece_features.mean(0), dim=0)
    scores = direct_scores(model, photos_dir, [r.path for r in index.records], query)
    expected = sorted(scores, key=scores.get, reverse=True)
    assert [h.path for h in hits] == expected
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([h.score for h in hits], [scores[p] for p in expected], atol=1e-5)
    assert hits[0].file == str(photos_dir.resolve() / expected[0])


def test_image_search_finds_the_same_image_first(photos_dir, tmp_path, model, model_dir):
    out = tmp_path / "index"
    build_index(photos_dir, out, model, str(model_dir), progress=False)
    hits = search(out, image=photos_dir / "trip/yellow.png", k=3, model=model)
    assert hits[0].path == "trip/yellow.png" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert len(hits) == 3
    # the python API loads the index's own model when none is given
    assert [h.path for h in search(out, "a yellow square", k=2)] == [
        h.path for h in search(out, "a yellow square", k=2, model=model)
    ]


def test_rerun_embeds_only_new_and_changed_files_and_drops_deleted(photos_dir, tmp_path, model, model_dir):
    out = tmp_path / "index"
    counting = CountingModel(model)
    build_index(photos_dir, out, counting, str(model_dir), progress=False)
    first = counting.embedded

    counting.embedded = 0
    report = build_index(photos_dir, out, counting, str(model_dir), progress=False)
    assert counting.embedded == 1  # the fingerprint's probe image only: nothing re-embedded, broken.jpg not retried
    assert (report.added, report.kept, report.removed) == (0, 6, 0)

    (photos_dir / "home/red.png").unlink()
    shutil.copy(photos_dir / "trip/green.png", photos_dir / "new.png")
    os.utime(photos_dir / "home/blue.png", ns=(1, 1))  # changed (mtime) without new content
    counting.embedded = 0
    report = build_index(photos_dir, out, counting, str(model_dir), progress=False)
    assert counting.embedded == 1 + 2  # probe + new.png + home/blue.png
    assert (report.added, report.updated, report.removed, report.kept, report.total) == (1, 1, 1, 4, 6)
    index = ImageIndex.open(out)
    assert "home/red.png" not in [r.path for r in index.records]
    fresh = tmp_path / "fresh"
    build_index(photos_dir, fresh, model, str(model_dir), progress=False)
    np.testing.assert_allclose(index.vectors, ImageIndex.open(fresh).vectors, atol=1e-6)
    assert first >= 7
    # one generation on disk: the old ones were removed (the unchanged re-run wrote none)
    assert sorted(p.name.split("-")[0] for p in out.iterdir()) == ["faiss", "manifest.json", "metadata", "vectors"]
    assert index.manifest["generation"] == 2


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing in the library catches it."""


@pytest.mark.parametrize("step", ["part", "vectors", "metadata", "faiss", "manifest", "clean"])
@pytest.mark.parametrize("existing", [False, True], ids=["first-build", "update"])
def test_killed_at_any_step_never_leaves_a_wrong_index_and_resumes(
    photos_dir, tmp_path, model, model_dir, monkeypatch, step, existing
):
    out = tmp_path / "index"
    if existing:
        build_index(photos_dir, out, model, str(model_dir), progress=False)
        for name in ("yellow", "purple"):
            (photos_dir / "trip" / f"{name}.png").unlink(missing_ok=True)
            (photos_dir / "home" / f"{name}.png").unlink(missing_ok=True)
        for i in range(4):
            shutil.copy(photos_dir / "trip/green.png", photos_dir / f"added{i}.png")
            os.utime(photos_dir / f"added{i}.png", ns=(10**18 + i, 10**18 + i))
    before = (out / "manifest.json").read_text() if existing else None

    calls = []

    def kill(name):
        calls.append(name)
        if name == step and calls.count(name) == 2 - (step != "part"):  # the second part, or the first other step
            raise Killed(name)

    monkeypatch.setattr(index_module, "_step", kill)
    with pytest.raises(Killed):
        build_index(photos_dir, out, model, str(model_dir), part_size=2, progress=False)
    monkeypatch.setattr(index_module, "_step", lambda name: None)

    # whatever loads is a whole index: the old one, or the new one, never a mix
    if step in ("manifest", "clean"):
        assert ImageIndex.open(out).manifest["count"] == len(scan_images(photos_dir)) - 1
    elif existing:
        assert (out / "manifest.json").read_text() == before
        ImageIndex.open(out)
    else:
        with pytest.raises(FileNotFoundError, match="not a longclip index"):
            ImageIndex.open(out)

    saved = [index_module._load_part(p) for p in sorted((out / "work").glob("part-*.npz"))]
    counting = CountingModel(model)
    build_index(photos_dir, out, counting, str(model_dir), part_size=2, progress=False)
    if step == "part":  # the two parts written before the kill (4 files) are not embedded again
        assert sum(len(p.records) + len(p.skipped) for p in saved) == 4
        readable_pending = 6 if not existing else 4
        assert counting.embedded == 1 + readable_pending - sum(len(p.records) for p in saved)
    else:
        assert counting.embedded == 1  # every embedding was already saved
    fresh = tmp_path / "fresh"
    build_index(photos_dir, fresh, model, str(model_dir), progress=False)
    resumed, expected = ImageIndex.open(out), ImageIndex.open(fresh)
    assert resumed.records == expected.records
    np.testing.assert_allclose(resumed.vectors, expected.vectors, atol=1e-6)
    assert resumed.skipped == expected.skipped
    assert not (out / "work").exists() and not list(out.glob(".*.tmp-*"))


def test_damaged_files_are_refused(photos_dir, tmp_path, model, model_dir):
    out = tmp_path / "index"
    build_index(photos_dir, out, model, str(model_dir), progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    vectors = out / manifest["files"]["vectors"]["name"]
    data = bytearray(vectors.read_bytes())
    data[-1] ^= 0xFF
    vectors.write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="checksum"):
        ImageIndex.open(out)
    vectors.write_bytes(bytes(data[:-4]))
    with pytest.raises(IndexFormatError, match="wrong size"):
        ImageIndex.open(out)
    (out / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(IndexFormatError, match="format version"):
        ImageIndex.open(out)


def test_model_mismatch_is_a_clear_error(photos_dir, tmp_path, model, model_dir):
    out = tmp_path / "index"
    build_index(photos_dir, out, model, str(model_dir), progress=False)
    other_dir = save_tiny_model(tmp_path / "other", seed=1)
    other = longclip.load(other_dir)[0]
    index = ImageIndex.open(out)
    with pytest.raises(ModelMismatchError, match=f"built with {model_dir}"):
        index.search_text(other, "a red square")
    with pytest.raises(ModelMismatchError, match="--rebuild"):
        build_index(photos_dir, out, other, str(other_dir), progress=False)
    report = build_index(photos_dir, out, other, str(other_dir), rebuild=True, progress=False)
    assert report.total == 6 and ImageIndex.open(out).model_id == str(other_dir)
    # the same weights in another dtype are the same model
    ImageIndex.open(out).check_model(longclip.load(other_dir, dtype="bfloat16")[0])
    # a shorter text context is another model, even where it embeds the probes alike
    short = longclip.load(save_tiny_model(tmp_path / "short", seed=1, context=77))[0]
    with pytest.raises(ModelMismatchError, match="248- vs a 77-token text context"):
        ImageIndex.open(out).check_model(short)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_find_the_exact_neighbours_on_small_data(kind):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((400, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index, settings = build_faiss(vectors, kind)
    if kind == "ivf":
        index.nprobe = settings["nlist"]  # probing every list makes IVF exact
    queries = vectors[:20] + 0.01 * rng.standard_normal((20, 16)).astype(np.float32)
    _, rows = index.search(queries, 1)
    assert (rows[:, 0] == np.argmax(queries @ vectors.T, axis=1)).mean() >= 0.95


def test_index_kind_by_flag_and_bad_kind(photos_dir, tmp_path, model, model_dir):
    report = build_index(photos_dir, tmp_path / "i", model, str(model_dir), kind="hnsw", progress=False)
    assert report.kind == "hnsw" and ImageIndex.open(tmp_path / "i").manifest["kind"] == "hnsw"
    with pytest.raises(ValueError, match="'annoy'"):
        build_index(photos_dir, tmp_path / "j", model, str(model_dir), kind="annoy")
    with pytest.raises(FileNotFoundError, match="no image files"):
        build_index(tmp_path / "i", tmp_path / "k", model, str(model_dir))


def test_symlinks_out_of_the_root_are_not_indexed(photos_dir, tmp_path):
    outside = tmp_path / "secret.png"
    shutil.copy(photos_dir / "home/red.png", outside)
    (photos_dir / "link.png").symlink_to(outside)
    (photos_dir / "inside.png").symlink_to(photos_dir / "home/red.png")
    found = scan_images(photos_dir)
    assert "link.png" not in found and "inside.png" in found


DISTRIBUTED_SCRIPT = """
import sys
import longclip
from longclip.integrations.index import build_index

root, out, model_dir = sys.argv[1:4]
model = longclip.load(model_dir)[0]
embedded = []
original = model.embed_images
def counting(images, **kwargs):
    images = list(images)
    embedded.append(len(images))
    return original(images, **kwargs)
model.embed_images = counting
report = build_index(root, out, model, model_dir, part_size=2, progress=False)
import pathlib
import torch.distributed as dist
line = f"rank {dist.get_rank()} of {dist.get_world_size()} embedded {sum(embedded) - 1} total {report.total}"
pathlib.Path(out).with_name(f"rank{dist.get_rank()}.txt").write_text(line)  # stdout of two ranks interleaves
"""


@pytest.mark.slow
def test_torchrun_ranks_share_the_embedding_and_merge_one_index(photos_dir, tmp_path, model, model_dir):
    import socket
    import subprocess
    import sys

    script = tmp_path / "build.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "index"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    command += ["--master_port", str(port), str(script), str(photos_dir), str(out), str(model_dir)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = sorted(p.read_text() for p in tmp_path.glob("rank*.txt"))
    # 7 files pending (one unreadable): ranks take 4 and 3, so each embedded only its share of the 6 readable ones
    embedded = [int(line.split()[5]) for line in lines]
    assert len(lines) == 2 and sum(embedded) == 6 and all(n >= 2 for n in embedded), lines
    fresh = tmp_path / "fresh"
    build_index(photos_dir, fresh, model, str(model_dir), progress=False)
    merged, expected = ImageIndex.open(out), ImageIndex.open(fresh)
    assert merged.records == expected.records and merged.skipped == expected.skipped
    np.testing.assert_allclose(merged.vectors, expected.vectors, atol=1e-5)


KILL_SCRIPT = """
import sys, time
import longclip
from longclip.integrations.index import build_index

root, out, model_dir = sys.argv[1:4]
model = longclip.load(model_dir)[0]
original = model.embed_images
def slow(images, **kwargs):
    time.sleep(0.5)  # time for the test to kill us between parts
    return original(images, **kwargs)
model.embed_images = slow
build_index(root, out, model, model_dir, part_size=1, progress=False)
"""


@pytest.mark.slow
def test_a_real_sigkill_mid_run_leaves_no_index_and_the_rerun_completes(photos_dir, tmp_path, model, model_dir):
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "build.py"
    script.write_text(KILL_SCRIPT)
    out = tmp_path / "index"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, str(script), str(photos_dir), str(out), str(model_dir)], env=env)
    try:
        deadline = time.monotonic() + 120
        while len(list((out / "work").glob("part-*.npz"))) < 2 and time.monotonic() < deadline:
            assert process.poll() is None, "the build finished before it could be killed"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    with pytest.raises(FileNotFoundError):
        ImageIndex.open(out)
    saved = [index_module._load_part(p) for p in (out / "work").glob("part-*.npz")]
    assert len(saved) >= 2 and all(p is not None for p in saved)

    counting = CountingModel(model)
    build_index(photos_dir, out, counting, str(model_dir), progress=False)
    assert counting.embedded == 1 + 6 - sum(len(p.records) for p in saved)
    fresh = tmp_path / "fresh"
    build_index(photos_dir, fresh, model, str(model_dir), progress=False)
    resumed, expected = ImageIndex.open(out), ImageIndex.open(fresh)
    assert resumed.records == expected.records
    np.testing.assert_allclose(resumed.vectors, expected.vectors, atol=1e-6)


def test_a_moved_folder_keeps_its_embeddings_and_the_index_follows_it(photos_dir, tmp_path, model, model_dir):
    out = tmp_path / "index"
    build_index(photos_dir, out, model, str(model_dir), progress=False)
    moved = tmp_path / "moved"
    shutil.copytree(photos_dir, moved)  # copy2 keeps sizes and modification times
    counting = CountingModel(model)
    report = build_index(moved, out, counting, str(model_dir), progress=False)
    assert counting.embedded == 1 and report.kept == 6
    hits = ImageIndex.open(out).search_image(model, moved / "home/red.png", k=1)
    assert hits[0].file == str(moved.resolve() / "home/red.png")
