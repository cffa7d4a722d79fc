"""LLM2CLIP training: caption-contrastive LoRA tuning, adapter + vision training on a cache, two gloo processes."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_clip
from llm2clip_fixtures import save_language_model, write_pairs
from safetensors.torch import load_file

import longclip
from longclip.data import PairDataset, read_pairs
from longclip.data.text_cache import TextEmbeddingCache
from longclip.models import LongCLIPModel
from longclip.models.language import LanguageEncoder, load_language_model
from longclip.models.llm2clip import LLM2CLIPModel
from longclip.train import TrainConfig, train
from longclip.train.distributed import DistributedContext
from longclip.train.losses import contrastive_loss
from longclip.train.tasks import LLM2CLIPOptions, LLM2CLIPTextOptions, LLM2CLIPTextTask
from longclip.train.tasks.llm2clip import build_text_cache
from longclip.train.trainer import build_model, epoch_batches

pytest.importorskip("peft", reason="LLM2CLIP's LoRA tuning needs peft (extra llm2clip)")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm2clip")
    data = write_pairs(root, "pairs.csv", range(16))
    heldout = write_pairs(root, "heldout.csv", range(16, 24))
    negatives = write_pairs(root, "negatives.csv", range(16), hard_negatives=True)
    lm = save_language_model(root / "lm", "llama")
    LongCLIPModel(tiny_clip(context=77)).save_pretrained(root / "clip")
    return {"root": root, "data": data, "heldout": heldout, "negatives": negatives, "lm": lm, "clip": root / "clip"}


def _common(setup, output, **overrides) -> dict:
    settings = dict(
        model=str(setup["lm"]), data=str(setup["data"]), output=str(output), batch_size=4, epochs=1, num_workers=0,
        log_every=1, device="cpu",
    )  # fmt: skip
    return {**settings, **overrides}


def test_llm2clip_text_tunes_lora_and_reports_caption_retrieval(setup, tmp_path):
    options = LLM2CLIPTextOptions(lora_r=4, heldout=str(setup["heldout"]))
    config = TrainConfig.for_method("llm2clip-text", **_common(setup, tmp_path / "run"))
    assert config.lr == 2e-4  # the method's own default
    model = build_model(config, options)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }  # fmt: skip

    summary = train(TrainConfig.for_method("llm2clip-text", **_common(setup, tmp_path / "run", lr=1e-2)), options)
    assert summary["finished"]
    report = json.loads((tmp_path / "run" / "caption_retrieval.json").read_text())
    assert report["heldout_pairs"] == 8 and 0 <= report["before"] <= 1 and 0 <= report["after"] <= 1
    # The merged model is a plain transformers directory that differs from the base only through LoRA.
    tuned, tokenizer = load_language_model(summary["model"], bidirectional=True)
    base, _ = load_language_model(setup["lm"], bidirectional=True)
    delta = tuned.model.layers[0].self_attn.q_proj.weight - base.model.layers[0].self_attn.q_proj.weight
    assert delta.abs().max() > 0
    torch.testing.assert_close(tuned.model.embed_tokens.weight, base.model.embed_tokens.weight)
    losses = [row["loss"] for row in _metrics(tmp_path / "run") if "loss" in row]
    assert len(losses) == 4 and all(loss == loss for loss in losses)


def test_llm2clip_text_can_save_lora_apart(setup, tmp_path):
    options = LLM2CLIPTextOptions(lora_r=4, merge=False)
    summary = train(TrainConfig.for_method("llm2clip-text", **_common(setup, tmp_path / "run", max_steps=1)), options)
    final = Path(summary["model"])
    assert (final / "lora" / "adapter_config.json").is_file()
    base = load_file(setup["lm"] / "model.safetensors")
    saved = load_file(final / "model.safetensors")
    torch.testing.assert_close(saved["layers.0.self_attn.q_proj.weight"], base["layers.0.self_attn.q_proj.weight"])


def test_llm2clip_text_loss_takes_the_data_hard_negatives(setup, tmp_path):
    options = LLM2CLIPTextOptions(lora_r=4, scale=5.0)
    config = TrainConfig.for_method("llm2clip-text", **_common(setup, tmp_path / "run"))
    task = LLM2CLIPTextTask(build_model(config, options), options).eval()  # eval: no LoRA dropout
    items = [{"index": i, "caption": p.caption, "short_caption": p.short_caption, "hard_negative": p.hard_negative}
             for i, p in enumerate(read_pairs(setup["negatives"])[:3])]  # fmt: skip
    del items[1]["hard_negative"]  # as a webdataset sample without neg.txt: it adds no negative
    batch = task.collate([items[0], None, *items[1:]])
    assert batch["negative_ids"].shape[0] == 2 and batch["num_bad"] == 1
    with torch.no_grad():
        loss = float(task(batch).loss)
        q = task.model.embed([i["caption"] for i in items], options.instruction)
        d = task.model.embed([i["short_caption"] for i in items])
        n = task.model.embed([items[0]["hard_negative"], items[2]["hard_negative"]])
    # By hand: query r scores cos x 5 against the 3 documents and the 2 hard negatives; -log softmax of its own.
    candidates = [*d, *n]
    expected = 0.0
    for r in range(3):
        scores = [5.0 * float(F.cosine_similarity(q[r], c, dim=0)) for c in candidates]
        expected -= scores[r] - math.log(sum(math.exp(s) for s in scores))
    assert loss == pytest.approx(expected / 3, rel=1e-5)
    # The negatives count: without them the loss is smaller (fewer candidates to beat).
    plain = {k: v for k, v in batch.items() if not k.startswith("negative_")}
    with torch.no_grad():
        assert float(task(plain).loss) < loss


def test_llm2clip_text_trains_with_hard_negatives(setup, tmp_path):
    common = _common(setup, tmp_path / "run", data=str(setup["negatives"]), max_steps=2, lr=1e-2)
    summary = train(TrainConfig.for_method("llm2clip-text", **common), LLM2CLIPTextOptions(lora_r=4))
    assert summary["finished"]
    rows = [row for row in _metrics(tmp_path / "run") if "loss" in row]
    assert [row["hard_negatives"] for row in rows] == [4.0, 4.0]  # one per row of each batch of 4
    assert all(math.isfinite(row["loss"]) for row in rows)
    assert (tmp_path / "run" / "language_model" / "model.safetensors").is_file()


def test_llm2clip_trains_adapter_and_vision_from_the_cache_only(setup, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    build_text_cache(str(setup["lm"]), str(setup["data"]), cache, shard_size=5, batch_size=3, device="cpu")

    def no_language_model(*args, **kwargs):
        raise AssertionError("the language model ran during adapter training")

    monkeypatch.setattr(LanguageEncoder, "forward", no_language_model)
    options = LLM2CLIPOptions(text_cache=str(cache), train_vision_layers=1)
    common = _common(setup, tmp_path / "run", model=str(setup["clip"]), lr=1e-3, epochs=2)
    summary = train(TrainConfig.for_method("llm2clip", **common), options)
    monkeypatch.undo()
    assert summary["finished"]

    clip = longclip.load(setup["clip"], dtype="float32")[0].clip
    model, _ = longclip.load(summary["model"], dtype="float32")
    assert isinstance(model, LLM2CLIPModel) and model.language_model is not None
    # Partly frozen: the first vision layer is CLIP's, the last one and the projection trained.
    first, last = model.vision.vision_model.encoder.layers
    torch.testing.assert_close(first.mlp.fc1.weight, clip.vision_model.encoder.layers[0].mlp.fc1.weight)
    assert (last.mlp.fc1.weight - clip.vision_model.encoder.layers[1].mlp.fc1.weight).abs().max() > 0
    assert (model.vision.visual_projection.weight - clip.visual_projection.weight).abs().max() > 0
    # The attached language model is the one the cache was made with: live text features equal cached ones.
    texts = [p.caption for p in read_pairs(setup["data"])[:3]]
    cached = TextEmbeddingCache(cache).lookup(texts)
    torch.testing.assert_close(model.embed_texts(texts), model.encode_embeddings(cached, normalize=True).detach())


def test_text_only_and_cache_methods_validate_held_out_rows(setup, tmp_path):
    """--val-rows works for methods whose model cannot embed images and texts while training (it crashed before).

    llm2clip-text measures caption-to-caption retrieval; llm2clip measures image<->text retrieval against the cached
    caption embeddings through the adapter (no language model is loaded while training).
    """
    options = LLM2CLIPTextOptions(lora_r=4)
    summary = train(TrainConfig.for_method("llm2clip-text", **_common(setup, tmp_path / "text", val_rows=4)), options)
    assert summary["finished"] and 0 <= summary["validation"]["caption_retrieval"] <= 1

    cache = tmp_path / "cache"
    build_text_cache(str(setup["lm"]), str(setup["data"]), cache, batch_size=8, device="cpu")
    common = _common(setup, tmp_path / "run", model=str(setup["clip"]), lr=1e-3, val_rows=4)
    summary = train(TrainConfig.for_method("llm2clip", **common), LLM2CLIPOptions(text_cache=str(cache)))
    validation = summary["validation"]
    # Independently: the saved model (the one validated after the last epoch) on the first 4 rows.
    model, _ = longclip.load(summary["model"], dtype="float32")
    held_out = read_pairs(setup["data"])[:4]
    images = F.normalize(model.embed_images([p.image for p in held_out]), dim=-1)
    for kind in ("long", "short"):
        texts = [p.caption if kind == "long" else p.short_caption for p in held_out]
        captions = model.encode_embeddings(TextEmbeddingCache(cache).lookup(texts), normalize=True).detach()
        similarity = images @ captions.T
        own = similarity.diagonal()
        text_to_image = float(((similarity >= own[None, :]).sum(dim=0) == 1).float().mean())
        image_to_text = float(((similarity >= own[:, None]).sum(dim=1) == 1).float().mean())
        assert validation[f"{kind}/image_retrieval_recall@1"] == pytest.approx(text_to_image)
        assert validation[f"{kind}/text_retrieval_recall@1"] == pytest.approx(image_to_text)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str) -> None:
    worker = Path(__file__).with_name("llm2clip_worker.py")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), str(worker), *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


def _metrics(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_llm2clip_methods_under_two_gloo_processes(setup, tmp_path):
    lm, data = str(setup["lm"]), str(setup["data"])
    # llm-embed: each rank embeds its own shards; the cache equals one made by a single process.
    _torchrun("cache", lm, data, str(tmp_path / "cache2"))
    build_text_cache(lm, data, tmp_path / "cache1", shard_size=3, batch_size=4, device="cpu")
    assert (tmp_path / "cache2" / "index.json").read_text() == (tmp_path / "cache1" / "index.json").read_text()
    two, one = TextEmbeddingCache(tmp_path / "cache2"), TextEmbeddingCache(tmp_path / "cache1")
    torch.testing.assert_close(two.embeddings, one.embeddings, atol=1e-5, rtol=1e-5)

    # llm2clip: the first step's loss over the global batch of 8 equals a single-process computation.
    _torchrun("llm2clip", str(setup["clip"]), data, str(tmp_path / "run"), str(tmp_path / "cache2"))
    ddp_losses = [row["loss"] for row in _metrics(tmp_path / "run") if "loss" in row]
    assert len(ddp_losses) == 2  # 16 pairs / (4 per rank x 2 ranks)
    options = LLM2CLIPOptions(text_cache=str(tmp_path / "cache2"), long_probability=1.0)
    torch.manual_seed(0)  # as train() seeds before preparing the model (the adapter's initialisation)
    config = TrainConfig.for_method("llm2clip", **_common(setup, tmp_path / "unused", model=str(setup["clip"])))
    model = build_model(config, options)
    pairs = read_pairs(data)
    dataset = PairDataset(pairs, model.image_transform)
    plans = [epoch_batches(len(pairs), 4, DistributedContext(rank=r, world_size=2), seed=0, epoch=0) for r in (0, 1)]
    first = [i for r in (0, 1) for i in plans[r][0]]
    pixels = torch.stack([dataset[i]["pixels"] for i in first])
    texts = one.lookup([pairs[i].caption for i in first])
    with torch.no_grad():
        loss = contrastive_loss(
            model.encode_image(pixels, normalize=True), model.encode_embeddings(texts, normalize=True),
            model.logit_scale.exp(),
        )  # fmt: skip
    assert abs(float(loss) - ddp_losses[0]) < 1e-4, (float(loss), ddp_losses[0])

    # llm2clip-text under two processes: runs, and every rank's steps are logged.
    # llm2clip-text under two processes, with hard negatives: runs, every rank's steps are logged, and the loss
    # of each step saw the hard negatives of both ranks.
    _torchrun("llm2clip-text", lm, str(setup["negatives"]), str(tmp_path / "text"))
    rows = [row for row in _metrics(tmp_path / "text") if "loss" in row]
    assert len(rows) == 2 and all(row["hard_negatives"] == 8 for row in rows)
    assert (tmp_path / "text" / "language_model" / "model.safetensors").is_file()


def test_llm_embed_command_writes_and_resumes_a_cache(setup, tmp_path, capsys):
    from longclip.cli import main

    output = tmp_path / "cache"
    argv = ["llm-embed", "--model", str(setup["lm"]), "--data", str(setup["data"]), "--output", str(output),
            "--shard-size", "7", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    assert "index.json" in capsys.readouterr().out
    cache = TextEmbeddingCache(output)
    pairs = read_pairs(setup["data"])
    assert len(cache) == len({p.caption for p in pairs} | {p.short_caption for p in pairs})
    assert cache.metadata["model"] == str(setup["lm"].resolve()) and cache.metadata["bidirectional"] is False
    (output / "shard-00001.safetensors").unlink()  # as if the run had stopped there
    assert main(argv) == 0
    torch.testing.assert_close(TextEmbeddingCache(output).embeddings, cache.embeddings)
    assert main([*argv[:-2], "--bidirectional"]) == 1  # another setting: refused, not mixed into the cache
    assert "other metadata" in capsys.readouterr().err
