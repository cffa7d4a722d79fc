import numpy as np
import pytest
import torch
from conftest import tiny_clip
from safetensors.torch import load_file

from longclip import fold_positional_tables, stretch_positional_embedding
from longclip.positions import (
    PartlyFrozenEmbedding,
    freeze_position_rows,
    keep_positions_from_mask,
    merge_position_rows,
    stretch_clip,
    stretched_length,
    unfold_positional_tables,
)


@pytest.fixture(scope="module")
def released(reference_dir):
    return load_file(reference_dir / "longclip_b_text_positional_embedding.safetensors")


def test_stretching_clip_b16_table_gives_the_released_table(released):
    frozen = released["positional_embedding"]
    # The release keeps rows 0-19 and puts original row 20 + i at 20 + 4 i: CLIP-B/16's 77 rows are recoverable.
    original = frozen[list(range(20)) + list(range(20, 248, 4))]
    assert original.shape == (77, 512)
    stretched = stretch_positional_embedding(original, keep_positions=20, ratio=4, mode="kps")
    assert stretched.shape == (248, 512)
    torch.testing.assert_close(stretched, frozen, atol=1e-4, rtol=0)


def test_fold_equals_the_released_mask_formula(released):
    pe, res = released["positional_embedding"], released["positional_embedding_res"]
    expected = pe * released["mask1"] + res * released["mask2"]
    assert torch.equal(
        fold_positional_tables(pe, res, keep_positions=keep_positions_from_mask(released["mask1"])), expected
    )
    assert keep_positions_from_mask(released["mask1"]) == 20


def _kps_loop(table: torch.Tensor, keep: int, ratio: int) -> torch.Tensor:
    """The stretching written out row by row, as the paper describes it."""
    n = table.shape[0]
    rows = [table[i] for i in range(keep)]
    for i in range(keep, n - 1):
        rows += [table[i] * (1 - j / ratio) + table[i + 1] * (j / ratio) for j in range(ratio)]
    rows += [table[n - 1] + (table[n - 1] - table[n - 2]) * j / ratio for j in range(ratio)]
    return torch.stack(rows)


@pytest.mark.parametrize("keep,ratio", [(20, 4), (0, 2), (5, 3), (75, 4)])
def test_kps_equals_row_by_row_definition(keep, ratio):
    table = torch.randn(77, 8, dtype=torch.float64)
    out = stretch_positional_embedding(table, keep_positions=keep, ratio=ratio)
    assert out.shape[0] == stretched_length(77, keep, ratio) == keep + ratio * (77 - keep)
    torch.testing.assert_close(out, _kps_loop(table, keep, ratio))


def test_linear_interpolates_whole_table():
    table = torch.randn(77, 3, dtype=torch.float64)
    out = stretch_positional_embedding(table, mode="linear")
    assert out.shape == (248, 3)
    grid = np.linspace(0, 76, 248)
    for d in range(3):
        np.testing.assert_allclose(out[:, d].numpy(), np.interp(grid, np.arange(77), table[:, d].numpy()), atol=1e-12)


def test_dtype_is_preserved():
    table = torch.randn(77, 4).half()
    assert stretch_positional_embedding(table).dtype == torch.float16


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(mode="cubic"), "mode must be"),
        (dict(keep_positions=76), "keep_positions must be between 0 and 75"),
        (dict(ratio=0), "ratio must be a positive integer"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        stretch_positional_embedding(torch.randn(77, 4), **kwargs)
    with pytest.raises(ValueError, match=r"expected a \[length, dim\] position table"):
        stretch_positional_embedding(torch.randn(77))


def test_malformed_mask_is_refused():
    mask = torch.zeros(248, 1)
    mask[3] = 1
    with pytest.raises(ValueError, match="mask1 must be ones on its first rows"):
        keep_positions_from_mask(mask)


def test_unfolded_tables_fold_back_whatever_keep_positions_a_reader_assumes():
    table = torch.randn(248, 4)
    frozen, trained = unfold_positional_tables(table)
    for keep_positions in (0, 12, 20):
        assert torch.equal(fold_positional_tables(frozen, trained, keep_positions), table)


def test_frozen_position_rows_get_no_gradient_and_merge_back():
    clip = tiny_clip(context=248)
    table = clip.text_model.embeddings.position_embedding.weight.detach().clone()
    freeze_position_rows(clip, 20)
    frozen = clip.text_model.embeddings.position_embedding
    assert isinstance(frozen, PartlyFrozenEmbedding) and [n for n, _ in frozen.named_parameters()] == ["trained"]
    clip.get_text_features(input_ids=torch.tensor([[49406, 320, 49407]])).pooler_output.sum().backward()
    assert frozen.trained.grad is not None and torch.equal(frozen.weight.detach(), table)
    merge_position_rows(clip)
    merged = clip.text_model.embeddings.position_embedding
    assert type(merged) is torch.nn.Embedding and torch.equal(merged.weight.detach(), table)


def test_the_old_keep_keyword_still_works_with_a_warning():
    with pytest.warns(DeprecationWarning, match="`keep` is now called `keep_positions`"):
        clip = stretch_clip(tiny_clip(context=77), keep=12)
    assert clip.config.keep_positions == 12 and clip.config.text_config.max_position_embeddings == 12 + 4 * 65
