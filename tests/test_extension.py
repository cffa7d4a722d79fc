"""The seams hold: a model family and a training task added from outside the package, with no file of it edited.

``tests/plugins/toy_method.py`` registers a bag-of-hashed-words family and a ``toy-distill`` task through public
names only. Here the toy trains with ``fit`` (through ``longclip.train.train``) in one process and under torchrun in
two gloo processes (through the ``longclip`` CLI, flags generated from the task's options), then is saved, reloaded
with ``longclip.load``, embedded with ``embed_texts`` and evaluated with the evaluation runner.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

PLUGINS = Path(__file__).resolve().parent / "plugins"
sys.path.insert(0, str(PLUGINS))

import toy_method  # noqa: E402  (registers the toy family and task)

import longclip  # noqa: E402
from longclip.eval import evaluate  # noqa: E402
from longclip.train import TrainConfig, available_tasks, train  # noqa: E402

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
CONFIG = {"buckets": 64, "context_length": 12, "embed_dim": 8}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """16 plain-colour pictures with captions naming the colour; a teacher and a student toy; a class folder."""
    root = tmp_path_factory.mktemp("toy")
    rows = []
    for i in range(16):
        colour = list(COLOURS)[i % 4]
        Image.new("RGB", (16, 16), COLOURS[colour]).save(root / f"{i}.png")
        rows.append({"image": f"{i}.png", "caption": f"a {colour} picture number {i % 3}"})
        (root / "classes" / colour).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), COLOURS[colour]).save(root / "classes" / colour / f"{i}.png")
    with open(root / "pairs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    for name, seed in (("teacher", 0), ("student", 1)):
        torch.manual_seed(seed)
        toy_method.HashedWords(CONFIG).save_pretrained(root / name)
    return root


def _config(data: Path, output: Path, **settings) -> TrainConfig:
    return TrainConfig.for_method(
        "toy-distill", model=str(data / "student"), data=str(data / "pairs.csv"), output=str(output),
        batch_size=4, epochs=10, num_workers=0, log_every=1, device="cpu", **settings,
    )  # fmt: skip


def _distance_to_teacher(model, teacher, texts) -> float:
    return float((1 - (model.embed_texts(texts) * teacher.embed_texts(texts)).sum(-1)).mean())


def test_a_task_registered_outside_the_package_trains_with_fit_and_reloads(data, tmp_path):
    assert "toy-distill" in available_tasks()
    teacher, _ = longclip.load(data / "teacher")
    student, _ = longclip.load(data / "student")
    assert isinstance(student, toy_method.HashedWords)
    captions = [f"a {c} picture number {i}" for c in COLOURS for i in range(3)]
    before = _distance_to_teacher(student, teacher, captions)

    summary = train(_config(data, tmp_path / "run"), toy_method.ToyDistillOptions(teacher=str(data / "teacher")))
    assert summary["finished"] and summary["distilled_texts"] == 16 * 10  # the task's own counter, via the loop

    trained, preprocess = longclip.load(summary["model"])
    assert isinstance(trained, toy_method.HashedWords)
    after = _distance_to_teacher(trained, teacher, captions)
    assert after < 0.5 * before, (before, after)
    # chunk mode and truncation go through the toy tokenizer's own rules
    long_text = " ".join(["red picture"] * 20)
    assert trained.embed_texts([long_text], long_texts="chunk").shape == (1, 8)

    result = evaluate(trained, "folder", data / "classes", templates=["a {} picture"], model_name="toy")
    assert result["dataset"] == "folder" and 0.0 <= result["acc1"] <= 1.0 and result["model"] == "toy"

    # the CLI talks to a family only through the tokenizer protocol (this tokenizer has no count_tokens)
    from longclip.cli import main

    assert not hasattr(trained.tokenizer, "count_tokens")
    labels = ["--label", "a red picture", "--label", " ".join(["a blue picture"] * 10)]  # the second past 12 tokens
    assert main(["classify", str(data / "0.png"), "--model", summary["model"], *labels, "--device", "cpu"]) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_toy_task_trains_under_torchrun_with_two_gloo_processes(data, tmp_path):
    output = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), str(PLUGINS / "run_longclip.py"), "-q", "train",
        "--method", "toy-distill", "--teacher", str(data / "teacher"), "--model", str(data / "student"),
        "--data", str(data / "pairs.csv"), "--output", str(output), "--batch-size", "2", "--epochs", "2",
        "--num-workers", "0", "--log-every", "1", "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert len(losses) == 8  # 16 pairs / (2 per rank x 2 ranks) x 2 epochs
    assert rows[-1]["distilled_texts"] == 16  # rank 0's own share: 2 texts per step, 8 steps
    model, _ = longclip.load(output / "model")
    assert isinstance(model, toy_method.HashedWords)
    saved = json.loads((output / "config.json").read_text())
    assert saved["method"] == "toy-distill" and saved["options"]["teacher"] == str(data / "teacher")


def test_the_cli_lists_the_methods_own_options(data):
    done = subprocess.run(
        [sys.executable, str(PLUGINS / "run_longclip.py"), "train", "--method", "toy-distill", "--help"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "--teacher" in done.stdout and "--distill-weight" in done.stdout
    assert "(default: 0.05)" in done.stdout  # the task's own learning rate replaces Long-CLIP's 1e-6
    assert "--pca-components" not in done.stdout  # Long-CLIP's options belong to --method longclip
