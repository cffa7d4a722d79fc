"""LLM2CLIP's masked next-token prediction stage (--method llm2clip-mntp): masking, loss, training, output, DDP."""

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
from llm2clip_fixtures import save_language_model, word_tokenizer, write_pairs
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from longclip.data import read_pairs
from longclip.models.language import load_causal_language_model, load_language_model, set_bidirectional
from longclip.train import TrainConfig, train
from longclip.train.tasks import LLM2CLIPMNTPOptions, LLM2CLIPMNTPTask, LLM2CLIPTextOptions
from longclip.train.tasks.llm2clip_mntp import IGNORE, mask_token_id, mask_tokens, mntp_loss
from longclip.train.trainer import build_model

pytest.importorskip("peft", reason="LLM2CLIP's LoRA tuning needs peft (extra llm2clip)")

MASK = ","  # the tiny word vocabulary has no "_"; any one token will do
PAD, UNK, BOS = 0, 1, 2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The models here are tiny: one intra-op thread is fastest, and many times faster than two on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mntp")
    return {"root": root, "data": write_pairs(root, "pairs.csv", range(16)),
            "lm": save_language_model(root / "lm", "llama-lm")}  # fmt: skip


def _common(setup, output, **overrides) -> dict:
    settings = dict(
        model=str(setup["lm"]), data=str(setup["data"]), output=str(output), batch_size=4, epochs=1, num_workers=0,
        log_every=1, device="cpu",
    )  # fmt: skip
    return {**settings, **overrides}


def _metrics(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


# --- the masking rule ---------------------------------------------------------------------------------------------


def test_masking_rule_fraction_specials_padding_and_shifted_labels():
    # 400 rows: <s>, then 30 to 40 words, then padding; "<unk>" (a special id) inside some rows.
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(31, 42, (400,), generator=generator)
    ids = torch.randint(4, 40, (400, 41), generator=generator)
    ids[:, 0] = BOS
    ids[::7, 5] = UNK
    mask = (torch.arange(41) < lengths[:, None]).long()
    ids[mask == 0] = PAD
    specials = [PAD, UNK, BOS, 3]

    masked, labels = mask_tokens(ids, mask, specials, 0.2, mask_id=99, vocab_size=44, generator=generator)
    # Labels sit one position before the token they name: labels[:, j] is the token at j + 1 when it was chosen.
    chosen = torch.zeros_like(mask, dtype=torch.bool)
    chosen[:, 1:] = labels[:, :-1] != IGNORE
    assert (labels[:, -1] == IGNORE).all()
    assert torch.equal(labels[:, :-1][chosen[:, 1:]], ids[:, 1:][chosen[:, 1:]])
    # Never chosen: the first token (<s>, nothing before it), special ids inside a row, padding.
    assert not chosen[:, 0].any() and not chosen[::7, 5].any() and not chosen[mask == 0].any()
    choosable = (mask == 1) & (ids != UNK)
    choosable[:, 0] = False
    assert abs(chosen.sum() / choosable.sum() - 0.2) < 0.01  # about 3,600 of 14,000 tokens: 0.2 +- 0.003 (1 sd)
    # Unchosen tokens are untouched; chosen ones: 80% the mask id, 10% random, 10% as they were.
    assert torch.equal(masked[~chosen], ids[~chosen])
    as_mask = (masked[chosen] == 99).float().mean()
    same = (masked[chosen] == ids[chosen]).float().mean()
    assert abs(as_mask - 0.8) < 0.03 and 0.07 < same < 0.14 and (masked < 100).all()
    full, full_labels = mask_tokens(ids, mask, specials, 0.2, 99, 44, full_masking=True, generator=generator)
    full_chosen = torch.zeros_like(chosen)
    full_chosen[:, 1:] = full_labels[:, :-1] != IGNORE
    assert (full[full_chosen] == 99).all() and torch.equal(full[~full_chosen], ids[~full_chosen])


def test_masking_rule_on_a_hand_made_batch():
    ids = torch.tensor([[BOS, 10, 11, 12, 13], [BOS, 20, 21, PAD, PAD], [BOS, PAD, PAD, PAD, PAD]])
    mask = (ids != PAD).long()
    # Probability ~1: every choosable token is chosen (everything but <s> and padding).
    masked, labels = mask_tokens(ids, mask, [PAD, BOS], 0.999999, 99, 40, full_masking=True)
    assert masked.tolist() == [[BOS, 99, 99, 99, 99], [BOS, 99, 99, PAD, PAD], [BOS, PAD, PAD, PAD, PAD]]
    assert labels.tolist() == [[10, 11, 12, 13, IGNORE], [20, 21, IGNORE, IGNORE, IGNORE], [IGNORE] * 5]
    # Probability ~0: still one token per batch, so that every step has a loss.
    for seed in range(5):
        masked, labels = mask_tokens(ids, mask, [PAD, BOS], 1e-9, 99, 40, True, torch.Generator().manual_seed(seed))
        assert (labels != IGNORE).sum() == 1 and (masked == 99).sum() == 1
        row, column = (masked == 99).nonzero()[0].tolist()
        assert labels[row, column - 1] == ids[row, column] and mask[row, column] and column > 0


def test_mask_token_is_the_tokenizers_or_the_replacement():
    tokenizer = word_tokenizer(bert_style=False)
    assert mask_token_id(tokenizer, ",") == (tokenizer.convert_tokens_to_ids(","), ",")
    with pytest.raises(ValueError, match="no mask token and '_' is not a token.*--mask-token"):
        mask_token_id(tokenizer, "_")
    tokenizer.add_special_tokens({"mask_token": "[MASK]"})
    assert mask_token_id(tokenizer, ",") == (tokenizer.mask_token_id, "[MASK]")


# --- the loss -----------------------------------------------------------------------------------------------------


def test_mntp_loss_equals_an_independent_computation(setup, tmp_path):
    options = LLM2CLIPMNTPOptions(lora_r=4, mask_token=MASK, mask_probability=0.3)
    config = TrainConfig.for_method("llm2clip-mntp", **_common(setup, tmp_path / "run"))
    assert config.lr == 5e-5
    model = build_model(config, options)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    task = LLM2CLIPMNTPTask(model, options).eval()  # eval: no LoRA dropout (LoRA starts as a no-op)
    pairs = read_pairs(setup["data"])[:3]
    items = [{"index": i, "caption": p.caption, "short_caption": p.short_caption} for i, p in enumerate(pairs)]
    torch.manual_seed(1)
    batch = task.collate(items)
    assert batch["input_ids"].shape[0] == 6  # long and short caption of each item
    with torch.no_grad():
        loss = float(task(batch).loss)

    # Independently: transformers' full forward pass of the model as saved, bidirectional, and for every chosen
    # token t at position i, -log softmax(logits at i - 1)[t], averaged.
    reference = AutoModelForCausalLM.from_pretrained(setup["lm"]).eval()
    set_bidirectional(reference, True)
    texts = [text for p in pairs for text in (p.caption, p.short_caption)]
    original = task.model.tokenizer.batch(texts).input_ids
    with torch.no_grad():
        logits = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    terms = []
    for row in range(len(texts)):
        for i in range(1, original.shape[1]):
            if batch["labels"][row, i - 1] != IGNORE:
                terms.append(-torch.log_softmax(logits[row, i - 1], dim=-1)[original[row, i]].item())
    assert len(terms) == int((batch["labels"] != IGNORE).sum()) > 0
    assert loss == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    # transformers' own shifted causal-LM loss with labels at the tokens' own positions agrees too.
    unshifted = torch.full_like(original, IGNORE)
    unshifted[:, 1:] = batch["labels"][:, :-1]
    with torch.no_grad():
        hf_loss = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=unshifted)
    assert loss == pytest.approx(float(hf_loss.loss), rel=1e-5)
    # And the attention is bidirectional: the causal model's loss on the same batch differs.
    set_bidirectional(reference, False)
    with torch.no_grad():
        causal = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=unshifted)
    assert abs(float(causal.loss) - loss) > 1e-3


# --- training, output, command line -------------------------------------------------------------------------------


def _mntp_loss_of(model_dir, texts: list[str], draws: int = 8) -> float:
    """The MNTP loss of a saved model on texts, averaged over fixed random maskings."""
    causal_lm, tokenizer = load_causal_language_model(model_dir)
    set_bidirectional(causal_lm, True)
    batch = tokenizer.batch(texts)
    generator = torch.Generator().manual_seed(123)
    losses = []
    for _ in range(draws):
        ids, labels = mask_tokens(
            batch.input_ids, batch.attention_mask, tokenizer.hf.all_special_ids, 0.2,
            tokenizer.hf.convert_tokens_to_ids(MASK), len(tokenizer.hf), True, generator,
        )  # fmt: skip
        with torch.no_grad():
            losses.append(float(mntp_loss(causal_lm, ids, batch.attention_mask, labels)))
    return sum(losses) / len(losses)


def test_mntp_training_lowers_the_loss_and_feeds_llm2clip_text(setup, tmp_path):
    options = LLM2CLIPMNTPOptions(lora_r=8, mask_token=MASK, full_masking=True)
    common = _common(setup, tmp_path / "mntp", lr=1e-2, epochs=4, save_every=10)
    summary = train(TrainConfig.for_method("llm2clip-mntp", **common), options)
    assert summary["finished"] and summary["step"] == 16
    rows = [row for row in _metrics(tmp_path / "mntp") if "loss" in row]
    assert len(rows) == 16 and all(row["masked_tokens"] > 0 for row in rows)
    # Training checkpoints hold the tied head once (safetensors refuses shared tensors) and load back.
    saved = load_file(tmp_path / "mntp" / "checkpoints" / "step-00000010" / "model.safetensors")
    fresh = build_model(TrainConfig.for_method("llm2clip-mntp", **common), options)
    assert set(saved) == set(fresh.state_dict()) and not any("lm_head" in name for name in saved)
    fresh.load_state_dict(saved)  # strict: the head's name is filled in from the embeddings'
    assert fresh.causal_lm.lm_head.weight is fresh.causal_lm.get_input_embeddings().weight

    final = Path(summary["model"])
    assert final == tmp_path / "mntp" / "language_model"
    settings = json.loads((final / "llm2clip_mntp.json").read_text())
    assert settings["mask_token"] == MASK and settings["merged"] and settings["text"] == "both"
    pairs = read_pairs(setup["data"])
    texts = [text for p in pairs for text in (p.caption, p.short_caption)]
    before, after = _mntp_loss_of(setup["lm"], texts), _mntp_loss_of(final, texts)
    assert after < 0.8 * before, (before, after)

    # The output is a plain transformers directory: LoRA merged, saved causal (bidirectional is chosen at load).
    assert "is_causal" not in json.loads((final / "config.json").read_text())
    tuned, _ = load_language_model(final, bidirectional=True)
    base, _ = load_language_model(setup["lm"], bidirectional=True)
    assert tuned.bidirectional and tuned.is_decoder
    delta = tuned.model.layers[0].self_attn.q_proj.weight - base.model.layers[0].self_attn.q_proj.weight
    assert delta.abs().max() > 0
    torch.testing.assert_close(tuned.model.embed_tokens.weight, base.model.embed_tokens.weight)
    # ... that the caption-contrastive stage takes as its --model.
    text_run = _common(setup, tmp_path / "text", model=str(final), max_steps=1)
    text = train(TrainConfig.for_method("llm2clip-text", **text_run), LLM2CLIPTextOptions(lora_r=4))
    assert text["finished"] and (Path(text["model"]) / "model.safetensors").is_file()


def test_mntp_refuses_an_encoder_and_a_mask_token_outside_the_vocabulary(setup, tmp_path):
    bert = save_language_model(tmp_path / "bert", "bert")
    config = TrainConfig.for_method("llm2clip-mntp", **_common(setup, tmp_path / "run", model=str(bert)))
    with pytest.raises(ValueError, match="not a causal decoder"):
        build_model(config, LLM2CLIPMNTPOptions(mask_token=MASK))
    config = TrainConfig.for_method("llm2clip-mntp", **_common(setup, tmp_path / "run"))
    with pytest.raises(ValueError, match="'_' is not a token"):
        build_model(config, LLM2CLIPMNTPOptions())  # the default "_" is not in the tiny vocabulary
    with pytest.raises(ValueError, match="mask_probability"):
        LLM2CLIPMNTPOptions(mask_probability=1.0)


def test_train_help_lists_the_mntp_options(capsys):
    from longclip.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--method", "llm2clip-mntp", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "settings of --method llm2clip-mntp" in out
    for flag in ("--mask-probability", "--mask-token", "--full-masking", "--text", "--lora-r", "--no-merge"):
        assert flag in out, flag
    assert "(default: 0.2)" in out and "(default: _)" in out and "80% mask token" in out


# --- two processes ------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mntp_under_two_gloo_processes(setup, tmp_path):
    worker = Path(__file__).with_name("llm2clip_worker.py")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), str(worker), "llm2clip-mntp", str(setup["lm"]), str(setup["data"]),
        str(tmp_path / "run"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ,
                          "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [row for row in _metrics(tmp_path / "run") if "loss" in row]
    assert len(rows) == 2 and all(math.isfinite(row["loss"]) for row in rows)  # 16 pairs / (4 per rank x 2)
    tuned, _ = load_language_model(tmp_path / "run" / "language_model", bidirectional=True)
    assert tuned.is_decoder
