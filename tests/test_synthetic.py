"""Tests of longclip.data.synthetic: determinism, caption structure and token budgets, twins, rendering, files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import longclip
from longclip.data import first_sentence, read_caption_table
from longclip.data.synthetic import (
    BACKGROUND_RGB,
    BACKGROUNDS,
    COLOUR_RGB,
    COLOURS,
    PATTERN_RGB,
    SHAPES,
    SIZES,
    TEXTURES,
    Scene,
    SceneObject,
    generate_scenes,
    twin_groups,
    write_benchmark,
)
from longclip.tokenizer import get_tokenizer

# Written out here rather than taken from the module, so that the captions are checked against an independent
# reading of the cell names.
POSITIONS_3X3 = {
    "top left corner": (0, 0),
    "top centre": (0, 1),
    "top right corner": (0, 2),
    "middle left": (1, 0),
    "centre": (1, 1),
    "middle right": (1, 2),
    "bottom left corner": (2, 0),
    "bottom centre": (2, 1),
    "bottom right corner": (2, 2),
}
NUMBERS = {word: i for i, word in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight"])}
NUMBERS["nine"] = 9
SUMMARY = re.compile(
    r"A picture of (?P<count>\w+) shapes? on a (?P<background>\w+) background, "
    r"(?P<colour>\w+) being the most common colour\."
)
OBJECT = re.compile(
    r"In the (?P<position>[a-z ]+?) of the picture there is a (?P<size>\w+) (?P<colour>\w+) (?P<shape>\w+), "
    r"and it is filled with a (?P<texture>\w+) (?:colour|pattern)\."
)


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return generate_scenes(80, seed=1)


@pytest.fixture(scope="module")
def groups() -> list[list[Scene]]:
    return twin_groups(8, 4, seed=2)


def parse_long_caption(caption: str) -> tuple[tuple[int, str, str], list[SceneObject]]:
    """(count, background, dominant colour) and the objects, read back from a long caption's text alone."""
    sentences = re.split(r"(?<=\.) ", caption)
    summary = SUMMARY.fullmatch(sentences[0])
    assert summary, sentences[0]
    objects = []
    for sentence in sentences[1:]:
        match = OBJECT.fullmatch(sentence)
        assert match, sentence
        row, col = POSITIONS_3X3[match["position"]]
        objects.append(SceneObject(match["shape"], match["colour"], match["size"], match["texture"], row, col))
    return (NUMBERS[summary["count"]], summary["background"], summary["colour"]), objects


def single(obj: SceneObject, background: str = "grey") -> Scene:
    return Scene(background, (obj,))


def cell_box(size: int, row: int, col: int, grid: int = 3) -> tuple[slice, slice]:
    bounds = [round(i * size / grid) for i in range(grid + 1)]
    return slice(bounds[row], bounds[row + 1]), slice(bounds[col], bounds[col + 1])


# ----------------------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_scenes_captions_and_pixels(scenes: list[Scene]) -> None:
    again = generate_scenes(80, seed=1)
    assert again == scenes
    assert [s.long_caption() for s in again] == [s.long_caption() for s in scenes]
    for a, b in zip(again[:10], scenes[:10], strict=True):
        assert np.array_equal(np.asarray(a.render()), np.asarray(b.render()))


def test_different_seed_gives_different_scenes(scenes: list[Scene]) -> None:
    other = generate_scenes(80, seed=3)
    assert sum(a != b for a, b in zip(other, scenes, strict=True)) >= 75
    assert not np.array_equal(np.asarray(other[0].render()), np.asarray(scenes[0].render()))


def test_twin_groups_are_deterministic(groups: list[list[Scene]]) -> None:
    assert twin_groups(8, 4, seed=2) == groups
    assert twin_groups(8, 4, seed=4) != groups


def test_prefixes_of_a_longer_run_are_the_same_scenes(scenes: list[Scene]) -> None:
    # The stream is consumed scene by scene, so asking for fewer scenes gives the first ones.
    assert generate_scenes(20, seed=1) == scenes[:20]


# ------------------------------------------------------------------------------------------------------- captions


def test_short_caption_is_the_first_sentence_of_the_long_caption(scenes: list[Scene]) -> None:
    for scene in scenes:
        long, short = scene.long_caption(), scene.short_caption()
        assert long.startswith(short + " ")
        assert first_sentence(long) == short


def test_long_caption_describes_every_object_in_reading_order(scenes: list[Scene]) -> None:
    for scene in scenes:
        (count, background, colour), objects = parse_long_caption(scene.long_caption())
        assert count == len(scene.objects)
        assert background == scene.background
        assert colour == scene.dominant_colour()
        assert objects == list(scene.objects)
        cells = [obj.row * 3 + obj.col for obj in objects]
        assert cells == sorted(cells) and len(set(cells)) == len(cells)


def test_scenes_use_the_whole_vocabulary_and_object_range() -> None:
    scenes = generate_scenes(300, seed=5)
    objects = [obj for scene in scenes for obj in scene.objects]
    assert {obj.shape for obj in objects} == set(SHAPES)
    assert {obj.colour for obj in objects} == set(COLOURS)
    assert {obj.size for obj in objects} == set(SIZES)
    assert {obj.texture for obj in objects} == set(TEXTURES)
    assert {scene.background for scene in scenes} == set(BACKGROUNDS)
    assert {len(scene.objects) for scene in scenes} == set(range(5, 10))
    assert {scene.dominant_colour() for scene in scenes} == set(COLOURS)


def test_generated_scenes_have_a_strict_most_common_colour(scenes: list[Scene]) -> None:
    for scene in scenes:
        counts = sorted((sum(o.colour == c for o in scene.objects) for c in COLOURS), reverse=True)
        assert counts[0] > counts[1], scene.long_caption()


def test_caption_token_counts_are_within_range(scenes: list[Scene], groups: list[list[Scene]]) -> None:
    all_scenes = scenes + [scene for group in groups for scene in group]
    # The extremes: every count from 5 (shortest) to 9 (a full grid, longest).
    all_scenes += generate_scenes(40, seed=6, min_objects=9, max_objects=9)
    all_scenes += generate_scenes(40, seed=7, min_objects=5, max_objects=5)
    tokenizer = get_tokenizer()
    long = tokenizer.count_tokens([s.long_caption() for s in all_scenes])
    short = tokenizer.count_tokens([s.short_caption() for s in all_scenes])
    assert 100 <= min(long) and max(long) <= 240, (min(long), max(long))
    assert 8 <= min(short) and max(short) <= 25, (min(short), max(short))
    # Every object sentence is 18-28 tokens, as the design promises...
    sentences = [obj.sentence() for scene in all_scenes for obj in scene.objects]
    lengths = [n - 2 for n in tokenizer.count_tokens(sentences)]
    assert 18 <= min(lengths) and max(lengths) <= 28
    # ...and a caption's length is the sum of its sentences' (the generator's budget checks rely on it).
    bodies = iter(lengths)
    for scene, total, summary in zip(all_scenes, long, short, strict=True):
        assert total == summary + sum(next(bodies) for _ in scene.objects)


def test_two_by_two_grid() -> None:
    scenes = generate_scenes(5, seed=0, grid=2, min_objects=4, max_objects=4)
    for scene in scenes:
        assert [(o.row, o.col) for o in scene.objects] == [(0, 0), (0, 1), (1, 0), (1, 1)]
        assert "In the bottom right corner of the picture" in scene.long_caption()
        assert 100 <= get_tokenizer().count_tokens(scene.long_caption())[0] <= 240
        assert scene.render(32).size == (32, 32)
    with pytest.raises(ValueError, match="object counts that fit: \\[4\\]"):
        generate_scenes(1, seed=0, grid=2, min_objects=3, max_objects=4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_objects": 1}, "object counts that fit"),
        ({"min_objects": 3, "max_objects": 4}, "object counts that fit"),
        ({"max_objects": 10}, "cells of a 3x3 grid"),
        ({"min_objects": 6, "max_objects": 5}, "min_objects <= max_objects"),
        ({"grid": 5}, "grid must be one of"),
    ],
)
def test_settings_that_break_the_token_budget_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_scenes(3, seed=0, **kwargs)


def test_bad_counts_and_seeds_are_refused() -> None:
    with pytest.raises(ValueError, match="n must be"):
        generate_scenes(-1, seed=0)
    with pytest.raises(ValueError, match="seed must be an integer"):
        generate_scenes(1, seed="0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="group_size"):
        twin_groups(1, 1, seed=0)


# ---------------------------------------------------------------------------------------------------------- twins


def test_twins_share_at_least_77_token_ids(groups: list[list[Scene]]) -> None:
    for group in groups:
        ids = longclip.tokenize([scene.long_caption() for scene in group], context_length=248, truncate=True)
        assert (ids[:, :77] == ids[0, :77]).all()
        # ...and the texts do differ later on, within the 248-token context.
        assert len({tuple(row.tolist()) for row in ids}) == len(group)


def test_twins_differ_only_after_the_shared_objects(groups: list[list[Scene]]) -> None:
    for group in groups:
        first = group[0]
        assert len(group) == 4
        assert len({scene.long_caption() for scene in group}) == len(group)
        assert len({scene.short_caption() for scene in group}) == 1  # identical by construction
        for scene in group:
            assert scene.background == first.background
            assert len(scene.objects) == len(first.objects)
            assert scene.dominant_colour() == first.dominant_colour()
            assert scene.objects[:3] == first.objects[:3]
        pixels = [np.asarray(scene.render()).tobytes() for scene in group]
        assert len(set(pixels)) == len(group)


def test_twins_stay_distinct_when_only_the_last_object_varies() -> None:
    # Eight shared objects leave one cell and ~30-240 variants of its object: without care, a group of ten would
    # almost surely hold two equal scenes.
    for group in twin_groups(10, 10, seed=3, shared_prefix=8, min_objects=9):
        assert len({scene.long_caption() for scene in group}) == 10
        assert len({scene.objects[:8] for scene in group}) == 1


def test_shared_prefix_too_short_for_77_tokens_is_refused() -> None:
    with pytest.raises(ValueError, match="guarantees only"):
        twin_groups(2, 3, seed=0, shared_prefix=1)
    # Sharing more objects guarantees a longer prefix.
    deeper = twin_groups(3, 3, seed=0, shared_prefix=4, min_objects=6)
    for group in deeper:
        ids = longclip.tokenize([scene.long_caption() for scene in group], truncate=True)
        assert (ids[:, :100] == ids[0, :100]).all()


# ------------------------------------------------------------------------------------------------------ rendering


def test_large_red_solid_square_matches_the_palette() -> None:
    image = single(SceneObject("square", "red", "large", "solid", 1, 1)).render(64)
    assert image.mode == "RGB" and image.size == (64, 64)
    pixels = np.asarray(image)
    assert tuple(pixels[32, 32]) == COLOUR_RGB["red"]
    assert tuple(pixels[0, 0]) == BACKGROUND_RGB["grey"]
    assert tuple(pixels[63, 63]) == BACKGROUND_RGB["grey"]
    # Only the middle cell is painted, and it is mostly filled.
    red = (pixels == COLOUR_RGB["red"]).all(axis=-1)
    rows, cols = cell_box(64, 1, 1)
    assert red[rows, cols].mean() > 0.5
    assert red.sum() == red[rows, cols].sum()


@pytest.mark.parametrize("shape", SHAPES)
def test_small_objects_cover_far_less_area_than_large_ones(shape: str) -> None:
    def area(size: str) -> int:
        pixels = np.asarray(single(SceneObject(shape, "yellow", size, "solid", 0, 2)).render(64))
        return int((pixels != BACKGROUND_RGB["grey"]).any(axis=-1).sum())

    assert area("large") > 2.5 * area("small") > 0


def test_shapes_are_drawn_differently() -> None:
    masks = {
        shape: (np.asarray(single(SceneObject(shape, "blue", size, "solid", 0, 0)).render(64)) != 112).any(-1)
        for shape in SHAPES
        for size in SIZES
    }
    assert len({mask.tobytes() for mask in masks.values()}) == len(masks)


def test_striped_texture_alternates_rows() -> None:
    pixels = np.asarray(single(SceneObject("square", "green", "large", "striped", 1, 1)).render(64))
    column = [tuple(p) for p in pixels[26:38, 32]]
    green, shade = COLOUR_RGB["green"], PATTERN_RGB["green"]
    assert set(column) == {green, shade}
    # Period 4 px at 64 px: two rows of colour, then two of shade, down the column...
    assert all(column[i] == column[i + 4] for i in range(len(column) - 4))
    assert all(column[i] != column[i + 2] for i in range(len(column) - 2))
    # ...while each row is one colour across the square.
    row = pixels[30, 25:40]
    assert (row == row[0]).all()


def test_dotted_texture_varies_along_rows_and_columns() -> None:
    pixels = np.asarray(single(SceneObject("square", "white", "large", "dotted", 0, 0)).render(64))
    patch = pixels[4:16, 4:16]
    shade = (patch == PATTERN_RGB["white"]).all(-1)
    assert 0.15 < shade.mean() < 0.35  # dots cover a quarter of the object
    # Dots lie where a dotted row crosses a dotted column, each repeating every 4 px: unlike stripes, the pattern
    # changes along rows as well as down columns.
    rows, cols = shade.any(axis=1), shade.any(axis=0)
    assert np.array_equal(shade, np.outer(rows, cols))
    for line in (rows, cols):
        assert line.mean() == 0.5
        assert all(line[i] == line[i + 4] and line[i] != line[i + 2] for i in range(len(line) - 4))


def test_render_scales_with_size() -> None:
    scene = generate_scenes(1, seed=0)[0]
    big = scene.render(128)
    assert big.size == (128, 128)
    with pytest.raises(ValueError, match="size must be"):
        scene.render(8)


# ---------------------------------------------------------------------------------------------------- scene rules


def test_dominant_colour_ties_go_to_the_earliest_object() -> None:
    colours = ["blue", "red", "blue", "red", "green"]
    objects = tuple(SceneObject("circle", c, "small", "solid", i // 3, i % 3) for i, c in enumerate(colours))
    assert Scene("navy", objects).dominant_colour() == "blue"  # 2 blue, 2 red: blue comes first
    assert Scene("navy", objects[1:]).dominant_colour() == "red"
    assert Scene("navy", objects[2:]).dominant_colour() == "blue"
    with pytest.raises(ValueError, match="no dominant colour"):
        Scene("navy", ()).dominant_colour()


def test_invalid_scenes_are_refused() -> None:
    a = SceneObject("circle", "red", "small", "solid", 0, 1)
    b = SceneObject("circle", "red", "small", "solid", 0, 0)
    with pytest.raises(ValueError, match="reading order"):
        Scene("grey", (a, b))
    with pytest.raises(ValueError, match="reading order"):
        Scene("grey", (a, a))
    with pytest.raises(ValueError, match="outside the 3x3 grid"):
        Scene("grey", (SceneObject("circle", "red", "small", "solid", 3, 0),))
    with pytest.raises(ValueError, match="unknown colour 'pink'"):
        SceneObject("circle", "pink", "small", "solid", 0, 0)
    with pytest.raises(ValueError, match="unknown background"):
        Scene("pink", (a,))


# ------------------------------------------------------------------------------------------------------ benchmark

TINY = dict(pretrain=20, finetune=10, test_groups=3, group_size=3)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_benchmark(tmp_path_factory.mktemp("bench"), seed=11, **TINY)


def test_benchmark_tables_load_with_read_caption_table(written: dict[str, Path]) -> None:
    assert set(written) == {"pretrain", "finetune", "test", "attributes", "meta"}
    root = written["meta"].parent
    expected = {"pretrain": 20, "finetune": 10, "test": 9}
    for split, rows in expected.items():
        pairs = read_caption_table(written[split])
        assert len(pairs) == rows
        for index, pair in enumerate(pairs):
            assert Path(pair.image) == root / split / "images" / f"{index:06d}.png"
            with Image.open(pair.image) as image:
                assert image.mode == "RGB" and image.size == (64, 64)
            assert pair.caption.startswith(pair.short_caption + " ")
    with written["test"].open(encoding="utf-8") as handle:
        assert handle.readline() == "image,caption,short_caption\n"


def test_attributes_are_aligned_with_test_rows(written: dict[str, Path]) -> None:
    attributes = json.loads(written["attributes"].read_text())
    pairs = read_caption_table(written["test"])
    root = written["meta"].parent
    assert len(attributes) == len(pairs) == 9
    for index, (record, pair) in enumerate(zip(attributes, pairs, strict=True)):
        assert root / record["image"] == Path(pair.image)
        assert (record["group"], record["member"]) == divmod(index, 3)
        (count, background, colour), objects = parse_long_caption(pair.caption)
        assert record["num_objects"] == count == len(objects)
        assert record["background"] == background
        assert record["dominant_colour"] == colour
    # Twins of one group share the first 77 token ids.
    for group in range(3):
        ids = longclip.tokenize([p.caption for p in pairs[3 * group : 3 * group + 3]], truncate=True)
        assert (ids[:, :77] == ids[0, :77]).all()


def test_benchmark_meta_records_settings_and_token_statistics(written: dict[str, Path]) -> None:
    meta = json.loads(written["meta"].read_text())
    assert meta["seed"] == 11
    assert meta["rows"] == {"pretrain": 20, "finetune": 10, "test": 9}
    assert len(set(meta["split_seeds"].values())) == 3
    for split in ("pretrain", "finetune", "test"):
        stats = meta["caption_tokens"][split]
        assert 100 <= stats["long"]["min"] <= stats["long"]["max"] <= 240
        assert 8 <= stats["short"]["min"] <= stats["short"]["max"] <= 25
    assert meta["twin_shared_prefix_tokens"]["min"] >= 77
    assert meta["test_long_captions_seen_in_training"] == 0


def test_benchmark_is_deterministic(written: dict[str, Path], tmp_path: Path) -> None:
    again = write_benchmark(tmp_path / "again", seed=11, **TINY)
    for key in written:
        assert again[key].read_bytes() == written[key].read_bytes(), key
    root_a, root_b = written["meta"].parent, tmp_path / "again"
    for pair_a, pair_b in zip(read_caption_table(written["test"]), read_caption_table(again["test"]), strict=True):
        with Image.open(pair_a.image) as a, Image.open(pair_b.image) as b:
            assert np.array_equal(np.asarray(a), np.asarray(b))
    assert Path(pair_a.image).relative_to(root_a) == Path(pair_b.image).relative_to(root_b)

    other = write_benchmark(tmp_path / "other", seed=12, **TINY)
    assert other["pretrain"].read_bytes() != written["pretrain"].read_bytes()


def test_splits_use_different_scenes(written: dict[str, Path]) -> None:
    captions = {split: {p.caption for p in read_caption_table(written[split])} for split in ("pretrain", "finetune")}
    assert not captions["pretrain"] & captions["finetune"]


def test_rendered_files_match_scene_render(written: dict[str, Path]) -> None:
    # The PNG round trip is lossless: a saved image equals a fresh render of the scene it was drawn from.
    scene = twin_groups(3, 3, seed=_test_seed(written))[0][0]
    first = read_caption_table(written["test"])[0]
    assert first.caption == scene.long_caption()
    with Image.open(first.image) as saved:
        assert np.array_equal(np.asarray(saved), np.asarray(scene.render(64)))


def _test_seed(written: dict[str, Path]) -> int:
    return json.loads(written["meta"].read_text())["split_seeds"]["test"]
