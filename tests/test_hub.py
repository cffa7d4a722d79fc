"""Hub upload: the folder and model card a push would upload, checked offline (dry run and a fake HfApi)."""

from __future__ import annotations

import json

import huggingface_hub
import pytest
from safetensors.torch import load_file
from search_helpers import save_tiny_model

import longclip
from longclip.integrations.hub import check_repo_id, push_to_hub


@pytest.fixture
def training_run(tmp_path):
    """A folder shaped like 'longclip train' output: config.json, metrics.jsonl, model/, and results beside it."""
    run = tmp_path / "run"
    save_tiny_model(run / "model")
    settings = {"data": "scenes.csv", "epochs": 3, "batch_size": 32, "lr": 1e-4, "stretch": "kps", "seed": 0}
    (run / "config.json").write_text(json.dumps(settings))
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 4.0}\n{"step": 30, "epoch": 3.0, "loss": 2.5}\n')
    rows = [
        {"model": "other", "path": str(tmp_path / "elsewhere"), "recall@1": 0.1},
        {"model": "mine", "path": str(run / "model"), "recall@1": 0.4375},
    ]
    (tmp_path / "results.json").write_text(json.dumps({"results": rows}))
    return run


def forbid_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a dry run must not touch the network")

    monkeypatch.setattr(huggingface_hub.HfApi, "__init__", refuse)


def test_dry_run_prepares_the_folder_and_card(training_run, tmp_path, monkeypatch):
    forbid_network(monkeypatch)
    plan = push_to_hub(training_run / "model", "someone/tiny-longclip", dry_run=True, folder=tmp_path / "up")
    names = {name for name, _ in plan.files}
    assert {"README.md", "config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"} <= names
    assert all(size > 0 for _, size in plan.files) and plan.url is None
    # the folder is a model longclip loads, with the same weights
    reloaded = longclip.load(plan.folder)[0]
    original = load_file(training_run / "model" / "model.safetensors")
    uploaded = load_file(plan.folder / "model.safetensors")
    assert all((uploaded[k] == v).all() for k, v in original.items() if k in uploaded)
    assert reloaded.context_length == 248

    card = (plan.folder / "README.md").read_text()
    assert card == plan.card and card.startswith("---\n")
    assert "**248 tokens**" in card and "- text context length: 248 tokens" in card
    assert "- embedding width: 16" in card and "text tower: 2 layers, width 32, 4 heads" in card
    assert "- epochs: 3" in card and "- lr: 0.0001" in card and "- stretch: kps" in card
    assert "step 30" in card and "loss 2.5" in card
    assert "| mine | 0.4375 |" in card and "other" not in card
    assert 'longclip.load("someone/tiny-longclip")' in card


def test_card_says_what_is_unknown(tmp_path, monkeypatch):
    forbid_network(monkeypatch)
    model_dir = save_tiny_model(tmp_path / "bare")
    plan = push_to_hub(model_dir, "a/b", dry_run=True, folder=tmp_path / "up")
    assert "Not recorded with this model." in plan.card
    assert "No evaluation results were found" in plan.card
    with pytest.raises(FileNotFoundError, match="no such results file"):
        push_to_hub(model_dir, "a/b", dry_run=True, folder=tmp_path / "up2", results_file=tmp_path / "nope.json")


@pytest.mark.parametrize("bad", ["noslash", "a/b/c", "/b", "a/", "a/../b", "a b/c", ""])
def test_bad_repo_ids_are_refused(bad):
    with pytest.raises(ValueError, match="owner/name"):
        check_repo_id(bad)


def test_a_real_push_creates_the_repo_and_uploads_the_folder(training_run, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(("create", repo_id, private, exist_ok))

        def upload_folder(self, repo_id, folder_path, commit_message):
            from pathlib import Path

            calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir()), commit_message))
            return type("Info", (), {"commit_url": f"https://hub.example/{repo_id}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    plan = push_to_hub(training_run / "model", "someone/m", private=True, token="t0k")
    assert calls[0] == ("init", "t0k") and calls[1] == ("create", "someone/m", True, True)
    assert calls[2][0] == "upload" and "README.md" in calls[2][2] and "model.safetensors" in calls[2][2]
    assert plan.url == "https://hub.example/someone/m/commit/1"
    assert not plan.folder.exists()  # the temporary folder is removed after a real upload
