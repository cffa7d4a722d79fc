"""TULIP's training stages: distillation measurably moves the student toward the teacher; both run under DDP."""

import csv
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import tiny_clip
from PIL import Image

import longclip
from longclip.models import LongCLIPModel, TulipModel, tulip_from_clip
from longclip.train import TrainConfig, train
from longclip.train.tasks import TulipDistillOptions, TulipFinetuneOptions

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """16 plain-colour pictures with captions of varied length (some past 77 tokens), and a 77-token CLIP."""
    root = tmp_path_factory.mktemp("tulip")
    rows = []
    for i in range(16):
        colour = list(COLOURS)[i % 4]
        Image.new("RGB", (32, 32), COLOURS[colour]).save(root / f"{i}.png")
        detail = " ".join(f"{list(COLOURS)[(i + j) % 4]} stripe number {j}," for j in range(2 + 3 * (i % 5)))
        rows.append({"image": f"{i}.png", "caption": f"A {colour} picture. It shows {detail} and nothing else."})
    with open(root / "pairs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    LongCLIPModel(tiny_clip(context=77)).save_pretrained(root / "clip77")
    return root


def _agreement(student, teacher, captions) -> float:
    """Mean cosine between the student's embeddings of the captions and the teacher's of them cut at 77 tokens."""
    cut = [teacher.tokenizer.truncate(ids, 77) for ids in teacher.tokenizer.encode(captions)]
    with torch.no_grad():
        target = teacher.embed_tokens(cut)
        ours = student.embed_texts(captions, long_texts="error")
    return float((target * ours).sum(-1).mean())


def test_distillation_brings_the_student_closer_to_the_teacher(data, tmp_path):
    captions = [row["caption"] for row in csv.DictReader(open(data / "pairs.csv"))]
    teacher, _ = longclip.load(data / "clip77", dtype="float32")
    assert max(len(ids) for ids in teacher.tokenizer.encode(captions)) > 77  # the student reads past the teacher
    before = _agreement(tulip_from_clip(teacher), teacher, captions)

    config = TrainConfig.for_method(
        "tulip-distill", model=str(data / "clip77"), data=str(data / "pairs.csv"), output=str(tmp_path / "run"),
        batch_size=8, epochs=8, lr=3e-3, warmup_steps=2, num_workers=0, log_every=1, device="cpu",
    )  # fmt: skip
    assert (config.weight_decay, config.lr) == (0.1, 3e-3)  # the method's default, and an override
    summary = train(config, TulipDistillOptions(teacher=str(data / "clip77")))
    student, _ = longclip.load(summary["model"], dtype="float32")
    assert isinstance(student, TulipModel)
    after = _agreement(student, teacher, captions)
    assert after > before + 0.05, (before, after)

    # Only the text tower trained: the image tower and temperature are the teacher's, bit for bit.
    start = tulip_from_clip(teacher).state_dict()
    for name, tensor in student.state_dict().items():
        if name.startswith(("vision_model.", "visual_projection.", "logit_scale")):
            assert torch.equal(tensor, start[name]), name
    assert not torch.equal(student.state_dict()["text_projection.weight"], start["text_projection.weight"])


def test_finetune_extends_the_context_with_ntk_frequencies_saved_in_the_model(data, tmp_path):
    start = tulip_from_clip(longclip.load(data / "clip77", dtype="float32")[0])
    start.save_pretrained(tmp_path / "distilled")
    config = TrainConfig.for_method(
        "tulip-finetune", model=str(tmp_path / "distilled"), data=str(data / "pairs.csv"),
        output=str(tmp_path / "run"), batch_size=8, epochs=1, num_workers=0, log_every=1, device="cpu",
    )  # fmt: skip
    assert (config.lr, config.weight_decay) == (1e-5, 0.1)
    options = TulipFinetuneOptions(extend_context=1024, ntk_factor=8.0, freeze_vision=True)
    summary = train(config, options)
    model, _ = longclip.load(summary["model"], dtype="float32")
    scaling = model.config.text_config.rope_scaling
    assert model.context_length == 1024 and scaling == {
        "rope_type": "dynamic", "factor": 8.0, "original_context_length": 248
    }  # fmt: skip
    d = model.config.text_config.head_dim
    base = 10000.0 * (8 * 1024 / 248 - 7) ** (d / (d - 2))
    torch.testing.assert_close(model.text_model.inv_freq, base ** (-torch.arange(0, d, 2).float() / d))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_long", "loss_short"} <= set(rows[-1])
    with pytest.raises(ValueError, match="give both"):
        TulipFinetuneOptions(ntk_factor=8.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str]) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), "-m", "longclip.cli", "-q", "train", *args,
        "--batch-size", "4", "--epochs", "1", "--num-workers", "0", "--log-every", "1", "--device", "cpu",
    ]  # fmt: skip
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )


def test_both_methods_run_under_two_gloo_processes(data, tmp_path):
    common = ["--data", str(data / "pairs.csv")]
    distill = _torchrun([
        "--method", "tulip-distill", "--teacher", str(data / "clip77"), "--model", str(data / "clip77"),
        "--output", str(tmp_path / "distill"), "--warmup-steps", "1", *common,
    ])  # fmt: skip
    assert distill.returncode == 0, distill.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "distill" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in rows if "loss_distill" in r]) == 2  # 16 pairs / (4 per rank x 2 ranks)

    finetune = _torchrun([
        "--method", "tulip-finetune", "--model", str(tmp_path / "distill" / "model"),
        "--output", str(tmp_path / "finetune"), "--extend-context", "512", "--ntk-factor", "8", *common,
    ])  # fmt: skip
    assert finetune.returncode == 0, finetune.stderr[-3000:]
    model, _ = longclip.load(tmp_path / "finetune" / "model", dtype="float32")
    assert isinstance(model, TulipModel) and model.context_length == 512
    assert model.config.text_config.rope_scaling["factor"] == 8.0
