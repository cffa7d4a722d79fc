"""Upload a model to the Hugging Face hub as a transformers directory with a generated model card.

``push_to_hub(model_path, repo_id)`` loads the model (any format ``longclip.load`` reads), writes it with
``save_pretrained`` into a staging folder, adds a ``README.md`` model card and uploads the folder with
``huggingface_hub``. With ``dry_run=True`` nothing leaves the machine: the folder is prepared and described.

The card states what the files say and nothing more: the architecture and context length from the model's config;
how it was trained from a training run's ``config.json`` / ``metrics.jsonl`` (the folder ``longclip train`` writes,
whose ``model/`` subfolder is the model) or a ``reproduce.json``; evaluation results from a results file given
explicitly or found beside the model (``eval_results.json``, ``results.json``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
RESULT_FILES = ("eval_results.json", "results.json")
TRAINING_KEYS = ("method", "stretch", "data", "epochs", "batch_size", "lr", "warmup_steps", "keep_positions")


@dataclass
class PushPlan:
    """What a push uploads (or, in a dry run, would upload)."""

    repo_id: str
    folder: Path
    files: list[tuple[str, int]]  # (relative path, bytes)
    card: str
    url: str | None = None  # the commit URL after an upload


def check_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` if it looks like ``owner/name``, else raise ``ValueError``."""
    if not REPO_ID.match(repo_id or "") or ".." in repo_id:
        raise ValueError(f"repository id must look like 'owner/name' (letters, digits, - _ .), got {repo_id!r}")
    return repo_id


def describe_architecture(model: Any) -> dict[str, Any]:
    """Sizes of the model's towers, from its config where it has a transformers CLIP config."""
    info: dict[str, Any] = {
        "family": getattr(model, "family", None) or ("clip" if hasattr(model, "clip") else type(model).__name__),
        "context_length": int(model.context_length),
        "embed_dim": int(model.embed_dim),
        "image_size": int(model.image_transform.image_size),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    config = getattr(model, "config", None)
    text, vision = getattr(config, "text_config", None), getattr(config, "vision_config", None)
    if text is not None and vision is not None:
        info["text"] = {
            "width": text.hidden_size,
            "layers": text.num_hidden_layers,
            "heads": text.num_attention_heads,
            "positions": text.max_position_embeddings,
        }
        info["vision"] = {
            "width": vision.hidden_size,
            "layers": vision.num_hidden_layers,
            "heads": vision.num_attention_heads,
            "patch_size": vision.patch_size,
        }
        keep = getattr(config, "longclip_keep_rows", None)
        if keep:
            info["kept_position_rows"] = keep
    return info


def find_training(model_path: Path) -> dict[str, Any] | None:
    """What is known of how the model was trained: a run folder's config and last metrics, or reproduce.json."""
    folder = model_path if model_path.is_dir() else model_path.parent
    for run in (folder, folder.parent):
        config_file = run / "config.json"
        if not config_file.is_file():
            continue
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            continue
        if not {"epochs", "lr"} <= set(config):  # a model config.json, not a training run's
            continue
        info = {"settings": {k: config[k] for k in TRAINING_KEYS if k in config}}
        metrics = run / "metrics.jsonl"
        if metrics.is_file():
            lines = [line for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
            if lines:
                last = json.loads(lines[-1])
                info["final"] = {k: last[k] for k in ("step", "epoch", "loss") if k in last}
        return info
    reproduce = folder / "reproduce.json"
    if reproduce.is_file():
        return {"reproduce": json.loads(reproduce.read_text(encoding="utf-8"))}
    return None


def find_results(model_path: Path, results_file: Path | None = None) -> list[dict[str, Any]]:
    """Evaluation rows for the model: from ``results_file`` or a results file beside it (up to two folders up).

    A ``longclip reproduce`` summary holds rows for several models; only the row whose ``path`` is this model's
    is kept.
    """
    folder = model_path if model_path.is_dir() else model_path.parent
    if results_file is not None:
        if not results_file.is_file():
            raise FileNotFoundError(f"no such results file: {results_file}")
        candidates = [results_file]
    else:
        candidates = [d / name for d in (folder, folder.parent, folder.parent.parent) for name in RESULT_FILES]
    for path in candidates:
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = data.get("results", data) if isinstance(data, dict) else data
        if isinstance(rows, dict):
            rows = [rows]
        if not isinstance(rows, list):
            continue
        mine = [r for r in rows if isinstance(r, dict) and _same_path(r.get("path"), model_path)]
        if any("path" in r for r in rows if isinstance(r, dict)):
            rows = mine
        if rows:
            return rows
    return []


def _same_path(value: Any, path: Path) -> bool:
    try:
        return value is not None and Path(value).resolve() == path.resolve()
    except OSError:
        return False


def model_card(
    repo_id: str,
    architecture: dict[str, Any],
    training: dict[str, Any] | None,
    results: list[dict[str, Any]],
    source: str,
) -> str:
    """The README.md text: metadata header, architecture, usage, training and evaluation sections."""
    name = repo_id.split("/")[-1]
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: zero-shot-image-classification",
        "tags:",
        "- clip",
        "- long-text",
        "- longclip",
        "---",
        "",
        f"# {name}",
        "",
        f"A CLIP model that reads texts of up to **{architecture['context_length']} tokens**, in transformers' "
        "`CLIPModel` format, uploaded with [longclip](https://pypi.org/project/longclip/).",
        "",
        "## Architecture",
        "",
        f"- family: {architecture['family']}",
        f"- text context length: {architecture['context_length']} tokens",
        f"- embedding width: {architecture['embed_dim']}",
        f"- image size: {architecture['image_size']} px",
        f"- parameters: {architecture['parameters']:,}",
    ]
    if "text" in architecture:
        t, v = architecture["text"], architecture["vision"]
        lines.append(f"- text tower: {t['layers']} layers, width {t['width']}, {t['heads']} heads")
        lines.append(f"- text position table: {t['positions']} rows")
        lines.append(f"- vision tower: ViT, {v['layers']} layers, width {v['width']}, {v['heads']} heads")
        lines.append(f"- patch size: {v['patch_size']} px")
    if architecture.get("kept_position_rows"):
        lines.append(
            f"- position table stretched from CLIP's with the first {architecture['kept_position_rows']} rows kept "
            "(knowledge-preserving stretching, Long-CLIP)"
        )
    lines += [
        "",
        "## Usage",
        "",
        "```python",
        "import longclip",
        "",
        f'model, preprocess = longclip.load("{repo_id}")',
        'features = model.embed_texts(["a long paragraph describing a picture ..."], long_texts="chunk")',
        "```",
        "",
        "The directory is also a plain transformers CLIP: `CLIPModel.from_pretrained` reads it (with the "
        f"tokenizer padded or cut to {architecture['context_length']} tokens).",
        "",
        "## Training",
        "",
    ]
    lines += _training_lines(training)
    lines += ["", "## Evaluation", ""]
    lines += _results_lines(results)
    lines += ["", f"Converted from `{source}`.", ""]
    return "\n".join(lines)


def _training_lines(training: dict[str, Any] | None) -> list[str]:
    if not training:
        return ["Not recorded with this model."]
    if "reproduce" in training:
        return [
            "Trained by `longclip reproduce` (a from-scratch miniature on synthetic scenes): "
            f"`{json.dumps(training['reproduce'], sort_keys=True)}`"
        ]
    lines = ["Fine-tuned with `longclip train`:", ""]
    lines += [f"- {k}: {v}" for k, v in training["settings"].items()]
    if "final" in training:
        lines.append("- last logged step: " + ", ".join(f"{k} {v:.4g}" for k, v in training["final"].items()))
    return lines


def _results_lines(results: list[dict[str, Any]]) -> list[str]:
    if not results:
        return ["No evaluation results were found with this model."]
    keys = [k for k in results[0] if k != "path" and all(k in r for r in results)]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in results:
        lines.append("| " + " | ".join(_cell(row[k]) for k in keys) + " |")
    return lines


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def prepare_upload(
    model_path: str | os.PathLike,
    repo_id: str,
    folder: str | os.PathLike,
    results_file: str | os.PathLike | None = None,
    model: Any = None,
) -> PushPlan:
    """Write the model (``save_pretrained``) and its model card into ``folder``; return what would be uploaded."""
    check_repo_id(repo_id)
    source = Path(model_path).expanduser()
    if model is None:
        from ..api import load

        model, _ = load(source)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    results = find_results(source, Path(results_file) if results_file else None)
    card = model_card(repo_id, describe_architecture(model), find_training(source), results, str(model_path))
    (folder / "README.md").write_text(card, encoding="utf-8")
    files = sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file())
    return PushPlan(repo_id, folder, files, card)


def push_to_hub(
    model_path: str | os.PathLike,
    repo_id: str,
    dry_run: bool = False,
    folder: str | os.PathLike | None = None,
    results_file: str | os.PathLike | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> PushPlan:
    """Convert ``model_path``, write a model card and upload both to ``repo_id`` (created if needed).

    Args:
        model_path: Any model ``longclip.load`` reads.
        repo_id: ``owner/name`` on the hub.
        dry_run: Prepare the folder and return the plan without any network access.
        folder: Where to prepare the upload (kept); by default a temporary folder (kept in a dry run, so it can be
            inspected; removed after a real upload).
        results_file: Evaluation results (JSON) for the card; by default a results file found beside the model.
        private: Create the repository as private.
        token: Hub token (default: huggingface_hub's login).
        commit_message: The upload's commit message.
    """
    check_repo_id(repo_id)
    if folder is None and not dry_run:
        with tempfile.TemporaryDirectory(prefix="longclip-push-") as tmp:
            return _upload(prepare_upload(model_path, repo_id, tmp, results_file), private, token, commit_message)
    folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="longclip-push-"))
    plan = prepare_upload(model_path, repo_id, folder, results_file)
    return plan if dry_run else _upload(plan, private, token, commit_message)


def _upload(plan: PushPlan, private: bool, token: str | None, commit_message: str | None) -> PushPlan:
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(plan.repo_id, private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=plan.repo_id,
        folder_path=str(plan.folder),
        commit_message=commit_message or "Upload longclip model",
    )
    plan.url = str(getattr(info, "commit_url", info))
    logger.info("uploaded %d files to %s", len(plan.files), plan.repo_id)
    return plan
