"""The seams other methods plug into: text batches, the family registry, the layout table, one loading entry.

The toy family here is registered through public names only (``longclip.models``, ``longclip.checkpoints``,
``longclip.text``), the way a new method or user code adds one. Its tokenizer pads with a non-zero id and has no end
token at all, so shared code that assumed CLIP's conventions (pad id 0, end token last) would give other features.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_clip
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CLIPConfig, CLIPModel

import longclip
from longclip import LongCLIPModel, LongCLIPProcessor
from longclip.checkpoints import Checkpoint, CheckpointError, Layout, read_checkpoint, register_layout
from longclip.images import ImageTransform
from longclip.models import DualEncoder, build_model, family_for, register_family, stretch_clip
from longclip.text import TextBatch, TextTokenizer, pad_ids
from longclip.tokenizer import EOT_ID, PAD_ID, SOT_ID, get_tokenizer

WORDS = "a an the cat dog car red blue sky street man woman walks sits under over near tree house old".split()
SHORT = ["a cat", "the red car near the old house", "a dog"]
LONG = "the old man walks near the red car under the blue sky " * 3  # 36 words, more than the toy's 8 positions


# --- a toy family: bag of words, mean pooling over real tokens, no end token --------------------------------------


class WordTokenizer:
    """Whitespace words; id 0 starts a text, words are 1..n, padding is the last id; texts have no end token."""

    start_id = 0

    def __init__(self, vocab: Sequence[str], context_length: int):
        self.vocab = {word: i + 1 for i, word in enumerate(vocab)}
        self.pad_id = len(vocab) + 1
        self.context_length = context_length

    def encode(self, texts: str | Sequence[str]) -> list[list[int]]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return [[self.start_id, *(self.vocab[w] for w in text.split())] for text in texts]

    def truncate(self, ids: Sequence[int], length: int) -> list[int]:
        return list(ids[:length])  # no end token to keep: the first ids are the text's start

    def chunk(self, text: str, length: int | None = None) -> list[list[int]]:
        step = (length or self.context_length) - 1
        body = self.encode(text)[0][1:]
        return [[self.start_id, *body[i : i + step]] for i in range(0, len(body), step)]

    def pad(self, ids: Sequence[Sequence[int]], length: int | None = None, truncate: bool = False) -> TextBatch:
        return pad_ids(ids, self.pad_id, self.context_length, self.truncate, length=length, truncate=truncate)

    def batch(self, texts: str | Sequence[str], truncate: bool = False) -> TextBatch:
        return self.pad(self.encode(texts), truncate=truncate)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        pass  # the vocabulary travels in config.json


class BagOfWords(DualEncoder):
    """Mean of word embeddings over the attention mask; a linear image tower on flattened 8x8 pixels."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        dim = config["embed_dim"]
        self.tokenizer = WordTokenizer(config["vocab"], config["context_length"])
        self.words = nn.Embedding(len(config["vocab"]) + 2, dim)
        self.image = nn.Linear(3 * 8 * 8, dim)
        self.scale = nn.Parameter(torch.tensor(2.0))
        self.image_transform = ImageTransform.for_size(8)

    @property
    def context_length(self) -> int:
        return self.config["context_length"]

    @property
    def embed_dim(self) -> int:
        return self.config["embed_dim"]

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.scale

    def encode_text(self, input_ids, attention_mask=None, normalize=False):
        if attention_mask is None:
            raise ValueError("the bag-of-words encoder pools over the attention mask; pass it")
        mask = attention_mask.to(self.device, self.dtype)[..., None]
        features = (self.words(input_ids.to(self.device)) * mask).sum(1) / mask.sum(1)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_image(self, pixels, normalize=False):
        features = self.image(pixels.to(self.device, self.dtype).flatten(1))
        return F.normalize(features, dim=-1) if normalize else features

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> BagOfWords:
        model = cls(checkpoint.config)
        model.load_state_dict(checkpoint.state_dict)
        return model

    def save_pretrained(self, directory) -> None:
        os.makedirs(directory, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, f"{directory}/model.safetensors")
        with open(f"{directory}/config.json", "w") as f:
            json.dump(self.config, f)


TOY_CONFIG = {"model_type": "toy-bow", "vocab": WORDS, "context_length": 8, "embed_dim": 6}
register_family("toy-bow", BagOfWords, ("toy-bow",))


def _legacy_matches(state_dict) -> bool:
    return set(state_dict) == {"legacy.vectors", "legacy.pixels.w", "legacy.pixels.b", "legacy.temperature"}


def _legacy_convert(state_dict):
    """An older toy layout: other names, and the image weight stored transposed."""
    vectors = state_dict["legacy.vectors"]
    if vectors.shape[0] != len(WORDS) + 2:
        raise CheckpointError(f"tensor legacy.vectors has {vectors.shape[0]} rows, expected {len(WORDS) + 2}")
    config = dict(TOY_CONFIG, embed_dim=vectors.shape[1])
    converted = {
        "words.weight": vectors,
        "image.weight": state_dict["legacy.pixels.w"].T.contiguous(),
        "image.bias": state_dict["legacy.pixels.b"],
        "scale": state_dict["legacy.temperature"],
    }
    return config, converted


register_layout(Layout("toy-legacy", "toy-bow", _legacy_matches, _legacy_convert))


@pytest.fixture(scope="module")
def toy() -> BagOfWords:
    torch.manual_seed(0)
    with torch.no_grad():
        model = BagOfWords(TOY_CONFIG).eval()
        model.words.weight[model.tokenizer.pad_id] = 1000.0  # padding that leaked into a pooled text would show
    return model


def _alone(model: BagOfWords, ids: list[int]) -> torch.Tensor:
    """Independent: one text's normalized mean word vector, no padding anywhere."""
    return F.normalize(model.words.weight[ids].mean(0), dim=0).detach()


# --- text batches ----------------------------------------------------------------------------------------------


def test_clip_tokenizer_batches_with_a_mask_at_the_batch_width():
    tokenizer = get_tokenizer(16)
    assert isinstance(tokenizer, TextTokenizer) and tokenizer.pad_id == PAD_ID
    batch = tokenizer.batch(SHORT)
    counts = tokenizer.count_tokens(SHORT)
    assert len(batch) == 3 and batch.input_ids.shape == (3, max(counts))
    assert batch.attention_mask.sum(1).tolist() == counts
    for row, n in zip(batch.input_ids, counts, strict=True):
        assert row[0] == SOT_ID and row[n - 1] == EOT_ID and (row[n:] == PAD_ID).all()
    assert torch.equal(batch.input_ids, longclip.tokenize(SHORT, context_length=16)[:, : max(counts)])

    long = tokenizer.encode(LONG)[0]
    with pytest.raises(ValueError, match=r"text 1 has \d+ tokens, more than the context length 16"):
        tokenizer.batch([SHORT[0], LONG])
    cut = tokenizer.batch([SHORT[0], LONG], truncate=True)
    assert cut.input_ids.shape == (2, 16) and cut.input_ids[1].tolist() == [*long[:15], EOT_ID]
    assert cut.attention_mask[1].all() and cut.attention_mask[0].sum() == counts[0]

    wide = tokenizer.pad([[SOT_ID, EOT_ID]], length=5)
    assert wide.input_ids.tolist() == [[SOT_ID, EOT_ID, 0, 0, 0]] and wide.attention_mask.tolist() == [[1, 1, 0, 0, 0]]
    assert tokenizer.truncate([SOT_ID, 1, 2, 3, EOT_ID], 3) == [SOT_ID, 1, EOT_ID]


def test_text_batch_checks_its_shapes_and_moves():
    ids = torch.ones(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 4\), expected the shape of input_ids"):
        TextBatch(ids, torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"input_ids must be \[batch, length\]"):
        TextBatch(torch.ones(3, dtype=torch.long), torch.ones(3, dtype=torch.long))
    batch = TextBatch(ids, torch.tensor([[1, 1, 0], [1, 0, 0]])).to("cpu")
    assert batch.lengths.tolist() == [2, 1] and len(batch) == 2


def test_forward_takes_a_text_batch_or_plain_ids():
    model = LongCLIPModel(tiny_clip())
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    batch = model.tokenizer.batch(SHORT)
    with torch.no_grad():
        from_batch, _ = model(images, batch)
        from_ids, _ = model(images, longclip.tokenize(SHORT))
    torch.testing.assert_close(from_batch, from_ids, atol=1e-5, rtol=0)


# --- shared embedding code with a tokenizer unlike CLIP's ---------------------------------------------------------


def test_embed_texts_with_a_nonzero_pad_and_no_end_token(toy):
    texts = [SHORT[1], SHORT[0], LONG, SHORT[2]]
    ids = toy.tokenizer.encode(texts)
    features = toy.embed_texts(texts, batch_size=2)  # sorted by length, so short texts share a padded batch
    expected = torch.stack([_alone(toy, toy.tokenizer.truncate(i, 8)) for i in ids])
    torch.testing.assert_close(features, expected, atol=1e-6, rtol=0)
    # what CLIP's rule (last id moved to the end) would have embedded instead:
    clip_rule = _alone(toy, [*ids[2][:7], ids[2][-1]])
    assert not torch.allclose(features[2], clip_rule, atol=1e-3)

    pieces = toy.tokenizer.chunk(LONG)
    assert len(pieces) == 6 and all(len(p) <= 8 for p in pieces)
    chunked = toy.embed_texts([SHORT[0], LONG], long_texts="chunk")
    mean = F.normalize(torch.stack([_alone(toy, p) for p in pieces]).mean(0), dim=0)
    torch.testing.assert_close(chunked[1], mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(chunked[0], expected[1], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="text 0 has 37 tokens, more than the context length 8"):
        toy.embed_texts([LONG], long_texts="error")


def test_embed_tokens_pads_with_the_tokenizers_pad_id(toy):
    seen = []
    handle = toy.words.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))
    try:
        toy.embed_tokens([[0, 1], [0, 1, 2, 3]])
    finally:
        handle.remove()
    assert seen[0].tolist() == [[0, 1, 2, 3], [0, 1, toy.tokenizer.pad_id, toy.tokenizer.pad_id]]
    with pytest.raises(ValueError, match="token list 1 has 9 ids, more than the context length 8"):
        toy.embed_tokens([[0, 1], [0] * 9])


# --- context length --------------------------------------------------------------------------------------------


def test_context_length_comes_from_the_config_and_follows_stretching():
    model = LongCLIPModel(tiny_clip(context=77))
    assert model.context_length == 77 == model.tokenizer.context_length
    stretch_clip(model.clip)
    assert model.context_length == 248 == model.tokenizer.context_length
    assert model.keep_positions == 20


# --- the registry, the layout table and the one loading entry ----------------------------------------------------


def test_registry_builds_a_checkpoint_by_family_or_model_type(toy):
    state = {k: v.clone() for k, v in toy.state_dict().items()}
    by_family = Checkpoint(state, dict(TOY_CONFIG), "toy-bow", "hf", path="memory")
    by_type = Checkpoint(state, dict(TOY_CONFIG), "toy-bow-v0", "hf", path="memory")
    assert family_for(by_family) is BagOfWords and family_for(by_type) is BagOfWords
    built = build_model(by_type)
    assert isinstance(built, BagOfWords) and BagOfWords.family == "toy-bow" and not built.training
    torch.testing.assert_close(built.embed_texts(SHORT), toy.embed_texts(SHORT))

    unknown = Checkpoint({}, {"model_type": "nothing-known"}, "nothing-known", "hf", path="memory")
    with pytest.raises(CheckpointError, match=r"'nothing-known' model, and no registered model family.*clip \(clip\)"):
        family_for(unknown)
    with pytest.raises(ValueError, match="model type 'clip' already belongs to the family 'clip'"):
        register_family("another-clip", BagOfWords, ("clip",))
    with pytest.raises(TypeError, match="must be a DualEncoder subclass"):
        register_family("not-a-model", nn.Linear, ("x",))


def test_a_family_registered_here_saves_and_loads_with_longclip_load(toy, tmp_path):
    toy.save_pretrained(tmp_path / "toy")
    model, preprocess = longclip.load(tmp_path / "toy")
    assert isinstance(model, BagOfWords) and preprocess.image_size == 8
    torch.testing.assert_close(model.embed_texts(SHORT + [LONG]), toy.embed_texts(SHORT + [LONG]), atol=0, rtol=0)
    checkpoint = read_checkpoint(tmp_path / "toy")
    assert (checkpoint.format, checkpoint.family, checkpoint.directory) == ("hf", "toy-bow", tmp_path / "toy")
    assert checkpoint.stored_dtypes == ("float32",)

    with pytest.raises(ValueError, match=r"holds a 'toy-bow' model \(BagOfWords\), not a LongCLIPModel"):
        LongCLIPModel.from_pretrained(tmp_path / "toy")
    with pytest.raises(ValueError, match="is a 'toy-bow' model; LongCLIPProcessor is CLIP's"):
        LongCLIPProcessor.from_pretrained(tmp_path / "toy")


def test_a_registered_layout_converts_a_foreign_file(toy, tmp_path):
    state = toy.state_dict()
    legacy = {
        "legacy.vectors": state["words.weight"].half(),
        "legacy.pixels.w": state["image.weight"].T.contiguous(),
        "legacy.pixels.b": state["image.bias"],
        "legacy.temperature": state["scale"],
    }
    torch.save(legacy, tmp_path / "old-toy.pt")
    checkpoint = read_checkpoint(tmp_path / "old-toy.pt")
    assert (checkpoint.format, checkpoint.family) == ("toy-legacy", "toy-bow")
    assert checkpoint.stored_dtypes == ("float16", "float32") and checkpoint.directory is None
    model, _ = longclip.load(tmp_path / "old-toy.pt")
    pixels = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(pixels), toy.encode_image(pixels))
    torch.testing.assert_close(model.embed_texts(SHORT), toy.embed_texts(SHORT), atol=1e-3, rtol=0)  # stored fp16

    torch.save({**legacy, "legacy.vectors": torch.zeros(3, 6)}, tmp_path / "bad-toy.pt")
    with pytest.raises(CheckpointError, match=r"bad-toy\.pt: tensor legacy\.vectors has 3 rows"):
        read_checkpoint(tmp_path / "bad-toy.pt")


# --- Long-CLIP specifics of the CLIP family ----------------------------------------------------------------------


def test_keep_positions_is_saved_in_config_json_and_old_directories_still_read(tmp_path):
    model = LongCLIPModel(stretch_clip(tiny_clip(context=77), keep_positions=12))
    model.save_pretrained(tmp_path / "new")
    saved = json.loads((tmp_path / "new" / "config.json").read_text())
    assert saved["keep_positions"] == 12 and saved["model_type"] == "clip" and "longclip_keep_rows" not in saved
    assert longclip.load(tmp_path / "new")[0].keep_positions == 12

    saved["longclip_keep_rows"] = saved.pop("keep_positions")  # a directory written before the field was declared
    (tmp_path / "new" / "config.json").write_text(json.dumps(saved))
    loaded, _ = longclip.load(tmp_path / "new")
    assert loaded.keep_positions == 12

    loaded.save_pretrained(tmp_path / "again")  # built from LongCLIPConfig: still a plain transformers CLIP
    plain = CLIPModel.from_pretrained(tmp_path / "again").eval()
    assert type(plain.config) is CLIPConfig and plain.config.keep_positions == 12
    tokens = longclip.tokenize(SHORT)
    with torch.no_grad():
        expected = model.clip.get_text_features(input_ids=tokens).pooler_output
        torch.testing.assert_close(plain.get_text_features(input_ids=tokens).pooler_output, expected)


def test_transformers_directory_shapes_are_checked_against_its_config(tmp_path):
    LongCLIPModel(tiny_clip()).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["text_projection.weight"] = torch.zeros(16, 31)
    weights["extra.bias"] = torch.zeros(2)
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"unexpected keys: extra\.bias; tensor text_projection\.weight has shape \(16, 31\), expected \(16, 32",
    ):
        longclip.load(tmp_path)


def test_loading_does_not_draw_transformers_progress_bars(tmp_path, capfd):
    from transformers.utils import logging as hf_logging

    LongCLIPModel(tiny_clip()).save_pretrained(tmp_path)
    capfd.readouterr()
    assert hf_logging.is_progress_bar_enabled()
    longclip.load(tmp_path)
    out, err = capfd.readouterr()
    assert not re.search("Loading weights|Writing model shards", out + err)
    assert hf_logging.is_progress_bar_enabled()  # restored for everyone else's loads
    CLIPModel.from_pretrained(tmp_path)  # control: outside our loads transformers still draws it, and we see it
    assert "Loading weights" in "".join(capfd.readouterr())


def test_sharded_transformers_directory_reads_every_shard(tmp_path):
    clip = tiny_clip()
    clip.save_pretrained(tmp_path, max_shard_size="2MB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and len(list(tmp_path.glob("*.safetensors"))) > 1
    checkpoint = read_checkpoint(tmp_path)
    assert checkpoint.state_dict.keys() == clip.state_dict().keys()
    model, _ = longclip.load(tmp_path)
    tokens = longclip.tokenize(SHORT)
    with torch.no_grad():
        expected = clip.get_text_features(input_ids=tokens).pooler_output
        torch.testing.assert_close(model.encode_text(tokens), expected, atol=1e-5, rtol=0)


def test_a_config_json_that_is_no_valid_clip_config_is_named(tmp_path):
    LongCLIPModel(tiny_clip()).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["text_config"]["hidden_size"] = "wide"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"the config is not a valid CLIP config.*hidden_size"):
        longclip.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["CLIPModel"]}))
    with pytest.raises(CheckpointError, match="config.json does not name a model_type"):
        longclip.load(tmp_path)


def test_processor_of_a_released_pt_file_and_read_checkpoint_of_it(tmp_path):
    from reference_clip import ReferenceCLIP

    torch.manual_seed(0)
    torch.save(
        ReferenceCLIP(context=248, long=True, keep=12, masks_in_state_dict=True).state_dict(), tmp_path / "l.pt"
    )
    checkpoint = read_checkpoint(tmp_path / "l.pt")
    assert (checkpoint.format, checkpoint.family, checkpoint.config["model_type"]) == ("longclip-pt", "clip", "clip")
    assert checkpoint.config["keep_positions"] == 12 and checkpoint.directory is None
    assert "text_model.embeddings.position_embedding.weight" in checkpoint.state_dict  # the family's own layout
    processor = LongCLIPProcessor.from_pretrained(tmp_path / "l.pt")
    assert processor.tokenizer.context_length == 248 and processor.image_transform.image_size == 32


def test_a_layout_can_be_tried_before_a_broader_one():
    from longclip.checkpoints import layouts

    # registered layouts stay for the whole session, so this one only matches the toy's own keys
    register_layout(Layout("toy-first", "toy-bow", _legacy_matches, _legacy_convert), before="longclip-pt")
    names = [layout.name for layout in layouts()]
    assert names.index("toy-first") == names.index("longclip-pt") - 1 and names.count("toy-first") == 1
    with pytest.raises(ValueError, match="no registered layout 'nope'"):
        register_layout(Layout("toy-x", "toy-bow", _legacy_matches, _legacy_convert), before="nope")
