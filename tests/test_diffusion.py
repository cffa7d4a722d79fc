"""Long-CLIP text encoders in diffusers pipelines, on tiny random SD 1.x and SDXL pipelines built in code (CPU)."""

from __future__ import annotations

import sys

import pytest
import torch

pytest.importorskip("diffusers", reason="the diffusion integration needs diffusers: pip install 'longclip[diffusion]'")

from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402

from longclip.integrations import diffusion  # noqa: E402
from longclip.models import LongCLIPModel  # noqa: E402
from longclip.tokenizer import EOT_ID, SOT_ID, VOCAB_SIZE  # noqa: E402

HIDDEN = 32
WORDS = "a red fox jumps over the lazy brown dog near a quiet river under tall green trees".split()


def words(count: int, offset: int = 0) -> str:
    return " ".join(WORDS[(i + offset) % len(WORDS)] for i in range(count))


def text_config(rows: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=rows,
        projection_dim=HIDDEN,
        bos_token_id=SOT_ID,
        eos_token_id=EOT_ID,
        hidden_act="quick_gelu",
    )


def tiny_longclip() -> LongCLIPModel:
    vision = dict(
        hidden_size=HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    config = CLIPConfig(text_config=text_config(248).to_dict(), vision_config=vision, projection_dim=HIDDEN)
    return LongCLIPModel(CLIPModel(config).eval())


def bigg_tokenizer(rows: int):
    tokenizer = diffusion.long_tokenizer(rows)
    tokenizer.pad_token = "!"  # OpenCLIP bigG's tokenizer (SDXL's tokenizer_2) pads with "!" (id 0)
    return tokenizer


def vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        norm_num_groups=2,
    )


def sd15_base() -> StableDiffusionPipeline:
    """A tiny SD 1.x pipeline as the hub would give it: a 77-position CLIP text encoder."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=HIDDEN,
        norm_num_groups=2,
    )
    return StableDiffusionPipeline(
        vae=vae(),
        text_encoder=CLIPTextModel(text_config(77)).eval(),
        tokenizer=diffusion.long_tokenizer(77),
        unet=unet,
        scheduler=DDIMScheduler(clip_sample=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def sdxl_base(force_zeros: bool = True) -> StableDiffusionXLPipeline:
    """A tiny SDXL pipeline with 77-position encoders (CLIP-L style, and a bigG-style one with a projection)."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + HIDDEN,
        cross_attention_dim=2 * HIDDEN,
        norm_num_groups=2,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    return StableDiffusionXLPipeline(
        vae=vae(),
        text_encoder=CLIPTextModel(text_config(77)).eval(),
        tokenizer=diffusion.long_tokenizer(77),
        text_encoder_2=CLIPTextModelWithProjection(text_config(77)).eval(),
        tokenizer_2=bigg_tokenizer(77),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=force_zeros,
    )


@pytest.fixture(scope="module")
def sd15():
    return diffusion.with_long_text_encoders(sd15_base(), tiny_longclip())


@pytest.fixture(scope="module")
def sdxl():
    return diffusion.with_long_text_encoders(sdxl_base(), tiny_longclip())


def latents(pipe, seed: int = 0, **kwargs) -> torch.Tensor:
    generator = torch.Generator("cpu").manual_seed(seed)
    out = pipe(
        num_inference_steps=2,
        guidance_scale=5.0,
        width=32,
        height=32,
        generator=generator,
        output_type="latent",
        **kwargs,
    )
    return out.images


# --- building --------------------------------------------------------------------------------------------------


def test_sd15_pipeline_reads_248_tokens_with_the_longclip_tower(sd15):
    assert type(sd15) is StableDiffusionPipeline
    assert diffusion.position_rows(sd15.text_encoder) == 248
    assert sd15.tokenizer.model_max_length == 248
    ids = sd15.tokenizer(words(200), padding="max_length", max_length=248, truncation=True).input_ids
    assert len(ids) == 248 and ids[201] == EOT_ID  # 200 words are 200 tokens here: nothing cut at 77


def test_sdxl_second_encoder_is_stretched_by_kps():
    base = sdxl_base()
    original = base.text_encoder_2.text_model.embeddings.position_embedding.weight.detach().clone()
    pipe = diffusion.with_long_text_encoders(base, tiny_longclip())
    table = pipe.text_encoder_2.text_model.embeddings.position_embedding.weight
    assert table.shape == (248, HIDDEN) and pipe.tokenizer_2.model_max_length == 248
    assert pipe.tokenizer_2.pad_token_id == 0  # the second tokenizer keeps its own padding
    assert torch.equal(table[:20], original[:20])  # KPS keeps the first 20 rows
    # row 20 + 4*i + j interpolates original rows 20+i and 21+i
    assert torch.allclose(table[20 + 4 * 3 + 1], 0.75 * original[23] + 0.25 * original[24], atol=1e-6)
    with pytest.raises(ValueError, match="248 positions"):
        diffusion.stretch_text_encoder(pipe.text_encoder_2)


def test_sd2_style_pipeline_is_stretched_without_a_new_encoder():
    pipe = diffusion.with_long_text_encoders(sd15_base())  # SD 2.x: keep its own (ViT-H) encoder, stretch it
    assert diffusion.position_rows(pipe.text_encoder) == 248 and pipe.tokenizer.model_max_length == 248
    image = diffusion.generate(pipe, words(120), steps=1, width=16, height=16, seed=0, output_type="pt")
    assert image.shape[-2:] == (16, 16)
    narrow = CLIPTextModel(CLIPTextConfig(**{**text_config(248).to_dict(), "hidden_size": 16}))
    with pytest.raises(ValueError, match="16 wide, the pipeline's is 32"):
        diffusion.with_long_text_encoders(sd15_base(), narrow)


def test_missing_diffusers_model_names_the_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="hf download example-org/not-cached"):
        diffusion.load_pipeline("sd15", "example-org/not-cached", text_encoder=tiny_longclip())
    with pytest.raises(ValueError, match="pipeline must be one of"):
        diffusion.load_pipeline("sd3", text_encoder=None)


def test_missing_diffusers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` fail
    with pytest.raises(ImportError, match=r"pip install 'longclip\[diffusion\]'"):
        diffusion.with_long_text_encoders(object())


# --- prompt embeddings -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_helper_embeddings_equal_passing_the_prompt(kind, sd15, sdxl):
    pipe = sd15 if kind == "sd15" else sdxl
    prompt, negative = words(150), "blurry, low quality"
    embeddings = diffusion.encode_prompt(pipe, prompt, negative)
    assert embeddings.prompt_embeds.shape[1] == 248
    from_prompt = latents(pipe, prompt=prompt, negative_prompt=negative)
    from_embeddings = latents(pipe, **embeddings.as_kwargs())
    assert torch.equal(from_prompt, from_embeddings)


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_words_after_token_77_change_embeddings_and_latents(kind, sd15, sdxl):
    pipe = sd15 if kind == "sd15" else sdxl
    head = words(100)
    first, second = head + " " + words(30), head + " " + words(30, offset=5)
    a, b = diffusion.encode_prompt(pipe, first), diffusion.encode_prompt(pipe, second)
    assert torch.equal(a.prompt_embeds[:, :101], b.prompt_embeds[:, :101])  # causal: the shared start is equal
    assert not torch.allclose(a.prompt_embeds[:, 101:], b.prompt_embeds[:, 101:])
    if kind == "sdxl":
        assert not torch.allclose(a.pooled_prompt_embeds, b.pooled_prompt_embeds)
    assert not torch.allclose(latents(pipe, **a.as_kwargs()), latents(pipe, **b.as_kwargs()))


@pytest.mark.parametrize("negative", [None, "ugly, deformed"])
def test_sdxl_layer_matches_diffusers_encode_prompt_at_77(negative):
    pipe = sdxl_base()  # 77-position encoders: diffusers' own encode_prompt is the reference
    prompt = words(60)
    ours = diffusion.encode_prompt(pipe, prompt, negative)
    theirs = pipe.encode_prompt(
        prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=negative
    )
    for got, expected in zip(ours, theirs, strict=True):
        assert torch.equal(got, expected)
    # and it is the penultimate layer without the final LayerNorm, which differs from the last hidden state
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    out = pipe.text_encoder(ids, output_hidden_states=True)
    assert torch.equal(ours.prompt_embeds[..., :HIDDEN], out.hidden_states[-2])
    assert not torch.allclose(ours.prompt_embeds[..., :HIDDEN], out.last_hidden_state)
    if negative is None:  # SDXL base zeroes an absent negative prompt
        assert not ours.negative_prompt_embeds.any() and not ours.negative_pooled_prompt_embeds.any()


def test_sd15_layer_matches_diffusers_encode_prompt_at_77():
    pipe = sd15_base()
    prompt, negative = words(60), "grainy"
    ours = diffusion.encode_prompt(pipe, prompt, negative)
    theirs = pipe.encode_prompt(prompt, "cpu", 1, True, negative_prompt=negative)
    assert torch.equal(ours.prompt_embeds, theirs[0]) and torch.equal(ours.negative_prompt_embeds, theirs[1])
    assert ours.pooled_prompt_embeds is None and set(ours.as_kwargs()) == {"prompt_embeds", "negative_prompt_embeds"}


def test_prompt_past_248_tokens_warns_and_is_cut(sdxl):
    long_prompt = words(300)  # 302 tokens with start and end
    with pytest.warns(UserWarning, match="302 tokens"):
        cut = diffusion.encode_prompt(sdxl, long_prompt)
    exact = diffusion.encode_prompt(sdxl, words(246))  # what is kept: the first 246 words and the end token
    assert torch.equal(cut.prompt_embeds, exact.prompt_embeds)


def test_chunked_long_prompt_concatenates_and_pads_the_negative(sdxl):
    long_prompt = words(300)
    chunked = diffusion.encode_prompt(sdxl, long_prompt, "dull", long_prompts="chunk")
    assert chunked.prompt_embeds.shape == (1, 2 * 248, 2 * HIDDEN)
    assert chunked.negative_prompt_embeds.shape == chunked.prompt_embeds.shape
    # chunk 1: the first 246 words; chunk 2: the other 54, each its own start/end-token sequence. Encoded one by
    # one here, in a batch of two there: equal up to float rounding.
    first, second = diffusion.encode_prompt(sdxl, words(246)), diffusion.encode_prompt(sdxl, words(54, offset=246))
    close = dict(rtol=0, atol=1e-5)
    torch.testing.assert_close(chunked.prompt_embeds[:, :248], first.prompt_embeds, **close)
    torch.testing.assert_close(chunked.prompt_embeds[:, 248:], second.prompt_embeds, **close)
    torch.testing.assert_close(chunked.pooled_prompt_embeds, first.pooled_prompt_embeds, **close)
    # the negative's second chunk is an empty prompt
    empty = diffusion.encode_prompt(sdxl, "").prompt_embeds
    torch.testing.assert_close(chunked.negative_prompt_embeds[:, 248:], empty, **close)
    assert latents(sdxl, **chunked.as_kwargs()).shape == (1, 4, 16, 16)


def test_generate_runs_end_to_end_and_gives_the_requested_size(sd15, sdxl):
    for pipe in (sd15, sdxl):
        image = diffusion.generate(pipe, words(120), "lowres", steps=2, guidance=6.0, width=48, height=32, seed=3)
        assert image.size == (48, 32)
    with pytest.raises(ValueError, match="multiple of 8"):
        diffusion.generate(sd15, "x", width=30)


# --- export ----------------------------------------------------------------------------------------------------


def test_export_transformers_layout_round_trips(tmp_path):
    from safetensors.torch import load_file

    model = tiny_longclip()
    path = diffusion.export_text_encoder(model, tmp_path / "clip_l.safetensors")
    tensors = load_file(path)
    # the key and shape ComfyUI checks to switch to a 248-token CLIP-L
    assert tensors["text_model.embeddings.position_embedding.weight"].shape == (248, HIDDEN)
    folder = tmp_path / "te"
    text_config(248).save_pretrained(folder)
    path.rename(folder / "model.safetensors")
    loaded = CLIPTextModel.from_pretrained(folder).eval()
    ids = diffusion.long_tokenizer(248)(words(150), return_tensors="pt").input_ids
    original = diffusion.text_encoder_from_longclip(model)
    assert torch.equal(loaded(ids).last_hidden_state, original(ids).last_hidden_state)


def test_export_ldm_layout_is_read_by_diffusers_single_file_conversion(tmp_path):
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm, is_clip_model
    from safetensors.torch import load_file

    model = tiny_longclip()
    path = diffusion.export_text_encoder(model, tmp_path / "te.safetensors", layout="ldm", dtype=torch.float16)
    checkpoint = load_file(path)
    assert is_clip_model(checkpoint)
    config_dir = tmp_path / "config"
    text_config(248).save_pretrained(config_dir)
    loaded = create_diffusers_clip_model_from_ldm(
        CLIPTextModel, checkpoint, config=str(config_dir), local_files_only=True, torch_dtype=torch.float32
    )
    original = diffusion.text_encoder_from_longclip(model).state_dict()
    for key, value in loaded.state_dict().items():
        if not key.endswith("position_ids"):
            assert torch.equal(value, original[key].half().float()), key
    with pytest.raises(ValueError, match="safetensors"):
        diffusion.export_text_encoder(model, tmp_path / "te.pt")


# --- command line ----------------------------------------------------------------------------------------------


def cli(argv: list[str]) -> int:
    """Run ``generate`` / ``export text-encoder`` through the ``longclip`` command (``--debug``: errors raise)."""
    from longclip.cli import main

    return main(["--debug", *argv])


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    sd15_base().save_pretrained(folder / "sd15")
    tiny_longclip().save_pretrained(folder / "longclip")
    return folder


def test_cli_generate_writes_the_image(saved_models, tmp_path, capsys):
    out = tmp_path / "image.png"
    argv = [
        "generate",
        words(120),
        "--pipeline",
        "sd15",
        "--model",
        str(saved_models / "sd15"),
        "--text-encoder",
        str(saved_models / "longclip"),
        "--out",
        str(out),
        "--seed",
        "1",
        "--steps",
        "2",
        "--guidance",
        "4",
        "--width",
        "40",
        "--height",
        "24",
        "--negative-prompt",
        "blurry",
        "--device",
        "cpu",
    ]
    assert cli(argv) == 0
    from PIL import Image

    with Image.open(out) as image:
        assert image.size == (40, 24)
    assert f"wrote {out}" in capsys.readouterr().out


def test_cli_generate_names_the_download_when_a_model_is_missing(saved_models, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    # an id that exists nowhere: the test never downloads, with or without network
    argv = [
        "generate",
        "a cat",
        "--pipeline",
        "sdxl",
        "--model",
        "example-org/missing-sdxl",
        "--text-encoder",
        str(saved_models / "longclip"),
        "--out",
        str(tmp_path / "x.png"),
    ]
    with pytest.raises(FileNotFoundError, match="hf download example-org/missing-sdxl"):
        cli(argv)
    with pytest.raises(ValueError, match="image file"):
        cli([*argv[:-1], str(tmp_path / "x.txt")])


def test_cli_export_text_encoder(saved_models, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "longclip-L.safetensors"
    assert cli(["export", "text-encoder", str(saved_models / "longclip"), str(out), "--dtype", "float16"]) == 0
    table = load_file(out)["text_model.embeddings.position_embedding.weight"]
    assert table.shape == (248, HIDDEN) and table.dtype == torch.float16


# --- Flux ------------------------------------------------------------------------------------------------------


def flux_base():
    """A tiny Flux pipeline: CLIP-L (77 positions, gives the pooled embedding), a T5 with a word-level tokenizer."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    torch.manual_seed(0)
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(sorted(set(WORDS)))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    t5_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=32
    )
    t5 = T5EncoderModel(
        T5Config(vocab_size=len(vocab), d_model=HIDDEN, d_ff=37, d_kv=8, num_layers=2, num_heads=4)
    ).eval()
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=HIDDEN,
        pooled_projection_dim=HIDDEN,
        axes_dims_rope=[4, 4, 8],
    )
    flux_vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=flux_vae,
        text_encoder=CLIPTextModel(text_config(77)).eval(),
        tokenizer=diffusion.long_tokenizer(77),
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )


def test_flux_pooled_embedding_comes_from_longclip_and_reads_past_77():
    base = flux_base()
    pipe = diffusion.with_long_text_encoders(base, tiny_longclip())
    assert pipe.tokenizer_max_length == 248 and type(pipe.text_encoder_2).__name__ == "T5EncoderModel"
    head = words(100)
    first, second = head + " " + words(20), head + " " + words(20, offset=5)
    pooled = [pipe.encode_prompt(p, prompt_2=head, max_sequence_length=32)[1] for p in (first, second)]
    assert not torch.allclose(*pooled)  # only words after token 100 differ, and they reach the pooled embedding
    with pytest.raises(ValueError, match="T5EncoderModel"):
        diffusion.encode_prompt(pipe, first)
    cut = [base.encode_prompt(p, prompt_2=head, max_sequence_length=32)[1] for p in (first, second)]
    assert torch.equal(*cut)  # the 77-token CLIP never sees them
    generator = torch.Generator("cpu").manual_seed(0)
    image = pipe(
        first,
        num_inference_steps=2,
        width=32,
        height=32,
        max_sequence_length=32,
        generator=generator,
        output_type="pt",
    ).images
    assert image.shape == (1, 3, 32, 32)
