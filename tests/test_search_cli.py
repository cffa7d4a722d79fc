"""The index, search, serve, export and push commands, run through ``longclip.cli.main``."""

from __future__ import annotations

import json
import shutil

import pytest
from search_helpers import make_photos, save_tiny_model

pytest.importorskip("faiss", reason="the search index needs faiss-cpu (pip install 'longclip[search]')")

import longclip  # noqa: E402
import longclip.cli  # noqa: E402

if not hasattr(longclip.cli, "__path__"):
    pytest.skip("the CLI package (longclip/cli/) is not in this checkout yet", allow_module_level=True)

from longclip.cli import main  # noqa: E402


def run(argv: list[str]) -> int:
    """``longclip --debug ARGV``: errors propagate as exceptions instead of one-line messages."""
    return main(["--debug", *argv])


def test_the_commands_are_registered(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    listing = capsys.readouterr().out
    for command in ("index", "search", "serve", "export", "push"):
        assert command in listing


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    model_dir = save_tiny_model(base / "model")
    root = base / "photos"
    make_photos(root)
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return base, model_dir, root


def test_index_then_search_text_and_image(workspace, capsys):
    base, model_dir, root = workspace
    out = base / "index"
    assert run(["index", str(root), "--model", str(model_dir), "--out", str(out), "--batch-size", "2"]) == 0
    printed = capsys.readouterr().out
    assert "6 images (flat index); 6 added" in printed
    assert "1 unreadable files skipped:" in printed and "corrupt.png" in printed

    assert run(["search", str(out), "a purple square", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    model = longclip.load(model_dir)[0]
    assert len(hits) == 3 and hits[0]["rank"] == 1 and hits[0]["score"] >= hits[1]["score"]
    files = [root / h["path"] for h in hits]
    direct = (model.embed_images(files) @ model.embed_texts(["a purple square"])[0]).tolist()
    assert direct == pytest.approx([h["score"] for h in hits], abs=1e-5)

    assert run(["search", str(out), "--image", str(root / "home/blue.png"), "-k", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.endswith(str(root.resolve() / "home/blue.png")) and line.split()[1] == "1.0000"

    # a second run changes nothing and says so
    assert run(["index", str(root), "--model", str(model_dir), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["added"], summary["kept"], summary["total"]) == (0, 6, 6)


def test_search_errors_are_clear(workspace):
    base, model_dir, root = workspace
    with pytest.raises(FileNotFoundError, match="not a longclip index"):
        run(["search", str(root), "a cat"])
    out = base / "index-errors"
    run(["index", str(root), "--model", str(model_dir), "--out", str(out)])
    with pytest.raises(ValueError, match="either a TEXT"):
        run(["search", str(out)])
    other = save_tiny_model(base / "other", seed=3)
    with pytest.raises(ValueError, match="built with"):
        run(["search", str(out), "a cat", "--model", str(other)])


def test_search_through_onnxruntime(workspace, capsys):
    pytest.importorskip("onnxruntime", reason="needs onnxruntime")
    base, model_dir, root = workspace
    out = base / "index-onnx"
    run(["index", str(root), "--model", str(model_dir), "--out", str(out)])
    capsys.readouterr()
    run(["search", str(out), "a green square", "--json"])
    torch_hits = json.loads(capsys.readouterr().out)
    export = base / "onnx"
    assert run(["export", "onnx", str(model_dir), str(export)]) == 0
    assert "onnxruntime matches PyTorch" in capsys.readouterr().out
    run(["search", str(out), "a green square", "--json", "--model", str(export)])
    onnx_hits = json.loads(capsys.readouterr().out)
    assert [h["path"] for h in onnx_hits] == [h["path"] for h in torch_hits]
    assert [h["score"] for h in onnx_hits] == pytest.approx([h["score"] for h in torch_hits], abs=1e-4)
    run(["search", str(out), "a green square", "--json", "--runtime", "onnx"])  # exports on the fly
    assert [h["path"] for h in json.loads(capsys.readouterr().out)] == [h["path"] for h in torch_hits]


def test_export_open_clip_and_push_dry_run(workspace, capsys):
    base, model_dir, _ = workspace
    assert run(["export", "open_clip", str(model_dir), str(base / "oc")]) == 0
    assert (
        json.loads((base / "oc/open_clip_config.json").read_text())["model_cfg"]["text_cfg"]["context_length"] == 248
    )
    assert run(["push", str(model_dir), "me/tiny", "--dry-run", "--folder", str(base / "up")]) == 0
    printed = capsys.readouterr().out
    assert "would upload" in printed and "model.safetensors" in printed and "--- README.md ---" in printed
    assert (base / "up/README.md").read_text() in printed


def test_export_is_a_group_others_extend_with_one_line(monkeypatch):
    from longclip.cli import export

    def add_demo(formats):
        formats.add_parser("demo").set_defaults(func=lambda args: 7)

    monkeypatch.setattr(export, "FORMATS", (*export.FORMATS, f"{__name__}:_unused"), raising=True)
    globals()["_unused"] = add_demo
    assert run(["export", "demo"]) == 7
    with pytest.raises(SystemExit):
        run(["export", "tflite", "m", "d"])


def test_serve_binds_localhost_by_default(workspace, monkeypatch):
    pytest.importorskip("fastapi", reason="needs fastapi")
    base, model_dir, root = workspace
    out = base / "index-serve"
    run(["index", str(root), "--model", str(model_dir), "--out", str(out)])
    seen = {}
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, log_level: seen.update(host=host, port=port))
    assert run(["serve", str(out), "--port", "8123"]) == 0
    assert seen == {"host": "127.0.0.1", "port": 8123}
    with pytest.raises(ValueError, match="--port"):
        run(["serve", str(out), "--port", "0"])


def test_index_resumes_after_an_interrupted_run(workspace, capsys, monkeypatch):
    from longclip.integrations import index as index_module

    base, model_dir, root = workspace
    copy = base / "photos-copy"
    shutil.copytree(root, copy)
    out = base / "index-resume"

    def interrupt(step):
        if step == "metadata":
            raise KeyboardInterrupt

    monkeypatch.setattr(index_module, "_step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(["index", str(copy), "--model", str(model_dir), "--out", str(out)])
    monkeypatch.setattr(index_module, "_step", lambda step: None)
    assert run(["index", str(copy), "--model", str(model_dir), "--out", str(out)]) == 0
    assert "6 resumed" in capsys.readouterr().out
