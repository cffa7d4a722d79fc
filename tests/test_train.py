"""Fine-tuning: the objective against hand computations, and whole runs (resume, DDP, failures) on tiny data."""

import csv
import dataclasses
import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_clip
from PIL import Image, ImageDraw
from safetensors.torch import load_file

import longclip
from longclip.data import CaptionCollator, PairDataset, read_pairs
from longclip.models import LongCLIPModel
from longclip.positions import stretch_positional_embedding
from longclip.train import LongCLIPObjective, TrainConfig, TrainingError, checkpointing, train
from longclip.train.checkpointing import list_checkpoints, load_checkpoint, save_checkpoint
from longclip.train.distributed import DistributedContext
from longclip.train.freezing import merge_position_rows
from longclip.train.losses import contrastive_loss, principal_component_reconstruction
from longclip.train.tasks import LongCLIPOptions
from longclip.train.trainer import build_model, epoch_batches

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """16 small pictures of a shape on a background, with long captions, and a 77-token CLIP to stretch."""
    root = tmp_path_factory.mktemp("pairs")
    rows = []
    for i in range(16):
        names = list(COLOURS)
        background, colour = names[i % 4], names[(i // 4 + 1 + i % 4) % 4]
        shape = "square" if i % 2 else "circle"
        image = Image.new("RGB", (32, 32), COLOURS[background])
        draw = ImageDraw.Draw(image)
        (draw.rectangle if shape == "square" else draw.ellipse)([6 + i % 3, 6, 24, 24 + i % 3], fill=COLOURS[colour])
        image.save(root / f"{i}.png")
        caption = (
            f"A {colour} {shape} on a {background} background. The {shape} sits near the middle of the picture, "
            f"slightly shifted by {i % 3} pixels, and the {background} colour fills everything around it."
        )
        rows.append({"image": f"{i}.png", "caption": caption})
    with open(root / "pairs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    LongCLIPModel(tiny_clip(context=77)).save_pretrained(root / "clip77")
    return root


def _config(dataset, output, **overrides) -> tuple[TrainConfig, LongCLIPOptions]:
    """The common settings and Long-CLIP's own, from one set of keyword overrides."""
    settings = dict(
        model=str(dataset / "clip77"), data=str(dataset / "pairs.csv"), output=str(output), batch_size=4, epochs=2,
        lr=1e-3, warmup_steps=2, num_workers=0, log_every=1, save_every=1000, pca_components=2, device="cpu",
    )  # fmt: skip
    settings.update(overrides)
    own = {f.name for f in dataclasses.fields(LongCLIPOptions)}
    options = LongCLIPOptions(**{k: v for k, v in settings.items() if k in own})
    return TrainConfig(**{k: v for k, v in settings.items() if k not in own}), options


def _metrics(output) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


# --- the objective ------------------------------------------------------------------------------------------------


def test_contrastive_loss_equals_the_written_out_definition():
    torch.manual_seed(0)
    images, texts = F.normalize(torch.randn(5, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    scale, smoothing = torch.tensor(10.0), 0.1
    logits = (scale * images @ texts.T).double()

    def smoothed_ce(rows):
        log_p = rows.log_softmax(dim=1)
        n = rows.shape[0]
        return -((1 - smoothing) * log_p.diagonal() + smoothing / n * log_p.sum(dim=1)).mean()

    expected = (smoothed_ce(logits) + smoothed_ce(logits.T)) / 2
    torch.testing.assert_close(contrastive_loss(images, texts, scale, smoothing).double(), expected, rtol=1e-6, atol=0)


def test_pca_reconstruction_matches_covariance_eigenvectors():
    torch.manual_seed(0)
    features = F.normalize(torch.randn(12, 6, dtype=torch.float64), dim=-1)
    mean = features.mean(0)
    _, vectors = torch.linalg.eigh((features - mean).T @ (features - mean))
    top = vectors[:, -3:]  # eigh sorts ascending: the last columns are the top components
    expected = (features - mean) @ top @ top.T + mean
    rebuilt = principal_component_reconstruction(features, 3)
    torch.testing.assert_close(rebuilt, expected)
    assert not torch.allclose(rebuilt.norm(dim=1), torch.ones(12, dtype=torch.float64))  # not renormalized
    torch.testing.assert_close(principal_component_reconstruction(features, 6), features)  # all components: exact


def test_svd_failure_skips_the_short_loss_and_is_counted(monkeypatch):
    def broken_svd(*args, **kwargs):
        raise torch.linalg.LinAlgError("did not converge")

    monkeypatch.setattr(torch.linalg, "svd", broken_svd)
    objective = LongCLIPObjective(pca_components=2)
    torch.manual_seed(0)
    image, long, short = (F.normalize(torch.randn(4, 8), dim=-1) for _ in range(3))
    out = objective(image, long, short, torch.tensor(10.0))
    assert objective.svd_failures == 1 and out.parts["svd_failed"] == 1.0
    torch.testing.assert_close(out.loss, contrastive_loss(image, long, torch.tensor(10.0), 0.1))


# --- whole runs -----------------------------------------------------------------------------------------------------


def test_training_lowers_the_loss_and_keeps_the_kept_rows(dataset, tmp_path):
    config = _config(dataset, tmp_path / "run", epochs=6)
    summary = train(*config)
    assert summary["finished"] and summary["step"] == 24
    losses = [row["loss"] for row in _metrics(tmp_path / "run") if "loss" in row]
    assert sum(losses[-4:]) / 4 < 0.9 * sum(losses[:4]) / 4

    before = stretch_positional_embedding(tiny_clip(context=77).text_model.embeddings.position_embedding.weight)
    weights = load_file(tmp_path / "run" / "model" / "model.safetensors")
    after = weights["text_model.embeddings.position_embedding.weight"]
    assert torch.equal(after[:20], before[:20].detach())  # bit-identical
    assert not torch.allclose(after[20:], before[20:])
    assert {"val/long/image_retrieval_recall@1"}.isdisjoint(_metrics(tmp_path / "run")[0])  # no val rows asked for


def test_validation_reports_long_and_short_retrieval_each_epoch(dataset, tmp_path):
    summary = train(*_config(dataset, tmp_path / "run", val_rows=4, batch_size=4, epochs=2))
    assert summary["step"] == 6  # 12 training pairs after holding out 4: 3 steps per epoch
    validations = [row for row in _metrics(tmp_path / "run") if "val/long/image_retrieval_recall@1" in row]
    assert [row["step"] for row in validations] == [3, 6]
    for row in validations:
        keys = [f"val/{kind}/{d}_retrieval_recall@1" for kind in ("long", "short") for d in ("image", "text")]
        assert all(0.0 <= row[key] <= 1.0 for key in keys)


def test_an_impossible_pt_export_fails_before_training(dataset, tmp_path):
    with pytest.raises(ValueError, match="cannot record attention heads"):
        train(*_config(dataset, tmp_path / "run", save_pt=True))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resumed_run_ends_with_the_same_weights(dataset, tmp_path):
    train(*_config(dataset, tmp_path / "straight"))
    interrupted = train(*_config(dataset, tmp_path / "resumed", stop_after_steps=3))
    assert not interrupted["finished"] and interrupted["step"] == 3
    assert not (tmp_path / "resumed" / "model").exists()
    resumed = train(*_config(dataset, tmp_path / "resumed", resume="auto"))
    assert resumed["finished"] and resumed["step"] == 8
    straight = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    again = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    for name, tensor in straight.items():
        torch.testing.assert_close(again[name], tensor, atol=1e-6, rtol=0, msg=name)


def test_a_save_killed_midway_leaves_the_previous_checkpoint_usable(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    kwargs = dict(model=model, optimizer=optimizer, scheduler=scheduler, scaler=None)
    save_checkpoint(tmp_path, 1, progress={"epoch": 0}, **kwargs)
    saved_weight = model.weight.detach().clone()

    real_save = checkpointing.save_file
    calls = []

    def dies_on_second_file(tensors, path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed while saving")
        real_save(tensors, path)

    monkeypatch.setattr(checkpointing, "save_file", dies_on_second_file)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, progress={"epoch": 0}, **kwargs)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001"]
    step, progress = load_checkpoint(list_checkpoints(tmp_path)[-1], **kwargs)
    assert step == 1 and progress == {"epoch": 0} and torch.equal(model.weight, saved_weight)


def test_non_finite_loss_skips_the_step(dataset, tmp_path, monkeypatch):
    real_call = LongCLIPObjective.__call__
    calls = []

    def nan_on_second(self, *args):
        out = real_call(self, *args)
        calls.append(1)
        if len(calls) == 2:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(LongCLIPObjective, "__call__", nan_on_second)
    summary = train(*_config(dataset, tmp_path / "run", epochs=1))
    assert summary["skipped_steps"] == 1 and summary["finished"]
    weights = load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_unreadable_images_are_counted_and_bounded(dataset, tmp_path):
    table = (dataset / "pairs.csv").read_text().splitlines()
    table[5] = table[5].replace("4.png", "missing.png")
    table[9] = "not-an-image.png," + table[9].split(",", 1)[1]
    (dataset / "not-an-image.png").write_text("text")
    (tmp_path / "bad.csv").write_text("\n".join(table) + "\n")
    config = _config(dataset, tmp_path / "ok", data=str(tmp_path / "bad.csv"), image_root=str(dataset),
                     epochs=1, max_bad_fraction=0.2)  # fmt: skip
    summary = train(*config)
    assert summary["bad_images"] == 2 and summary["seen_images"] == 16
    listed = (tmp_path / "ok" / "bad_images.txt").read_text().split()
    assert sorted(os.path.basename(p) for p in listed) == ["missing.png", "not-an-image.png"]

    strict = _config(dataset, tmp_path / "strict", data=str(tmp_path / "bad.csv"), image_root=str(dataset),
                     epochs=1, max_bad_fraction=0.05)  # fmt: skip
    with pytest.raises(TrainingError, match=r"2 of 16 images \(12.5%\) could not be read"):
        train(*strict)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_equals_a_single_process_computation(dataset, tmp_path):
    output = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), "-m", "longclip.cli", "-q", "train",
        "--model", str(dataset / "clip77"), "--data", str(dataset / "pairs.csv"), "--output", str(output),
        "--batch-size", "4", "--epochs", "1", "--lr", "1e-3", "--warmup-steps", "1", "--num-workers", "0",
        "--log-every", "1", "--pca-components", "2", "--device", "cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp_losses = [row["loss"] for row in _metrics(output) if "loss" in row]
    assert len(ddp_losses) == 2  # 16 pairs / (4 per rank x 2 ranks)

    # The same objective in one process, written out: loss on the global batch of 8, PCA on each rank's 4.
    model = build_model(*_config(dataset, tmp_path / "unused"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
    pairs = PairDataset(read_pairs(dataset / "pairs.csv"), model.image_transform)
    collate = CaptionCollator(model.tokenizer)
    plans = [epoch_batches(len(pairs), 4, DistributedContext(rank=r, world_size=2), seed=0, epoch=0) for r in (0, 1)]
    labels = torch.arange(8)

    def clip_loss(images, texts, scale):
        logits = scale * images @ texts.T
        return (
            F.cross_entropy(logits, labels, label_smoothing=0.1)
            + F.cross_entropy(logits.T, labels, label_smoothing=0.1)
        ) / 2

    def rebuilt_from_top_two_components(image):
        centred = image - image.mean(0)
        _, vectors = torch.linalg.eigh(centred.detach().T @ centred.detach())
        top = vectors[:, -2:]
        return centred @ top @ top.T + image.mean(0)

    # Schedule of 2 steps with 1 warm-up step: (0 + 1) / 1 at step 0, then cosine at progress (1 - 1) / (2 - 1) = 0.
    for step, lr_factor in enumerate([1.0, 0.5 * (1 + math.cos(0.0))]):
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * lr_factor
        images, longs, shorts, coarse = [], [], [], []
        for rank in (0, 1):
            batch = collate([pairs[i] for i in plans[rank][step]])
            image = model.encode_image(batch["pixels"], normalize=True)
            images.append(image)
            longs.append(model.encode_text(batch["long_ids"], normalize=True))
            shorts.append(model.encode_text(batch["short_ids"], normalize=True))
            coarse.append(rebuilt_from_top_two_components(image))
        scale = model.logit_scale.exp()
        loss = clip_loss(torch.cat(images), torch.cat(longs), scale) + clip_loss(
            torch.cat(coarse), torch.cat(shorts), scale
        )
        assert abs(float(loss.detach()) - ddp_losses[step]) < 1e-5, (step, float(loss.detach()), ddp_losses[step])
        loss.backward()
        key_bias_grads = [p.grad.abs().max() for n, p in model.clip.named_parameters() if n.endswith("k_proj.bias")]
        assert max(key_bias_grads) < 1e-6
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

    merge_position_rows(model.clip)
    ddp_weights = load_file(output / "model" / "model.safetensors")
    compared = 0
    for name, tensor in model.clip.state_dict().items():
        # Softmax ignores a bias added to every key, so k_proj.bias has zero gradient in exact arithmetic: what is
        # left is round-off (checked above), which Adam's normalisation turns into +-lr steps that differ between
        # any two summation orders. Every other tensor must agree.
        if name in ddp_weights and not name.endswith("k_proj.bias"):
            torch.testing.assert_close(ddp_weights[name], tensor.detach(), atol=1e-5, rtol=0, msg=name)
            compared += 1
    assert compared == len(ddp_weights) - 4


def test_training_streams_webdataset_shards(dataset, tmp_path):
    import io
    import tarfile

    rows = list(csv.DictReader(open(dataset / "pairs.csv")))
    for shard in range(2):
        with tarfile.open(tmp_path / f"shard-{shard}.tar", "w") as tar:
            for i, row in enumerate(rows[shard * 8 : shard * 8 + 8]):
                for suffix, payload in (
                    ("png", (dataset / row["image"]).read_bytes()),
                    ("txt", row["caption"].encode()),
                ):
                    info = tarfile.TarInfo(f"{shard}{i:05d}.{suffix}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    config = _config(
        dataset, tmp_path / "run", data=str(tmp_path / "shard-{0..1}.tar"), samples_per_epoch=16, epochs=1
    )
    summary = train(*config)
    assert summary["finished"] and summary["step"] == 4 and summary["bad_images"] == 0
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="needs --samples-per-epoch"):
        train(*_config(dataset, tmp_path / "again", data=str(tmp_path / "shard-{0..1}.tar")))


def test_cli_train_writes_a_model_longclip_loads(dataset, tmp_path, capsys):
    from longclip.cli import main

    args = ["-q", "train", "--model", str(dataset / "clip77"), "--data", str(dataset / "pairs.csv"),
            "--output", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "8", "--num-workers", "0"]  # fmt: skip
    assert main(args) == 0
    model, _ = longclip.load(tmp_path / "run" / "model")
    assert model.context_length == 248
    assert main(["train", "--model", "x", "--data", "y", "--output", str(tmp_path / "bad"), "--batch-size", "0"]) == 1
    assert "batch_size must be at least 1" in capsys.readouterr().err


def test_optional_reporters_receive_the_metrics(dataset, tmp_path, monkeypatch):
    import types

    logged = []
    fake_wandb = types.ModuleType("wandb")
    fake_wandb.init = lambda **kwargs: types.SimpleNamespace(log=lambda row, step: logged.append((step, row)))
    monkeypatch.setitem(sys.modules, "wandb", fake_wandb)
    train(*_config(dataset, tmp_path / "run", epochs=1, report_to="wandb"))
    assert [step for step, _ in logged] == [1, 2, 3, 4]
    assert all("loss" in row and "lr" in row for _, row in logged)
    with pytest.raises(ValueError, match="report_to: unknown"):
        train(*_config(dataset, tmp_path / "other", epochs=1, report_to="mlflow"))


def test_two_process_run_lists_every_ranks_unreadable_images(dataset, tmp_path):
    table = (dataset / "pairs.csv").read_text().splitlines()
    bad_rows = [2, 7, 11, 14]  # data rows (1-based after the header) pointing at files that do not exist
    for row in bad_rows:
        table[row] = f"missing-{row}.png," + table[row].split(",", 1)[1]
    (tmp_path / "bad.csv").write_text("\n".join(table) + "\n")
    plans = [epoch_batches(16, 4, DistributedContext(rank=r, world_size=2), seed=0, epoch=0) for r in (0, 1)]
    rank_one_items = {i for batch in plans[1] for i in batch}
    assert any(row - 1 in rank_one_items for row in bad_rows)  # the test means something only if rank 1 has some

    output = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), "-m", "longclip.cli", "-q", "train",
        "--model", str(dataset / "clip77"), "--data", str(tmp_path / "bad.csv"), "--image-root", str(dataset),
        "--output", str(output), "--batch-size", "4", "--epochs", "1", "--num-workers", "0",
        "--max-bad-fraction", "0.5", "--device", "cpu",
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    listed = sorted(os.path.basename(p) for p in (output / "bad_images.txt").read_text().split())
    assert listed == sorted(f"missing-{row}.png" for row in bad_rows)
