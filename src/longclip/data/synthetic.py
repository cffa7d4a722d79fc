"""A deterministic synthetic benchmark that shows, offline and in minutes, what Long-CLIP's longer context buys.

Every sample is a grid scene (3 x 3 cells by default) holding 5-9 coloured shapes on a plain background, rendered at
64 px so that a small ViT (patch 8) can see each object's shape, colour, size and texture. Each scene has two
captions:

* the **short caption** is one summary sentence about global attributes (number of shapes, background, most common
  colour), for example "A picture of seven shapes on a grey background, red being the most common colour.";
* the **long caption** is that same sentence followed by one sentence per object, in reading order (row-major by
  cell), for example "In the top left corner of the picture there is a large red circle, and it is filled with a
  striped pattern."

The wording is fixed so that the token budget holds by construction: the summary is 17 CLIP tokens and an object
sentence 22-24, so long captions of 5-9 objects have 133-229 tokens (start and end included), always within
:data:`LONG_CAPTION_TOKENS` = [100, 240], and the first three objects end after token 77.
:func:`generate_scenes` and :func:`twin_groups` check these budgets up front with the real tokenizer and refuse
settings that could break them.

Why twins. A CLIP with 77 positions reads only the summary and (at most) the first three objects. To show that it
cannot use later details, the test split is made of **twin groups** (:func:`twin_groups`): scenes that share the
background, the number of objects, the most common colour and their first ``shared_prefix`` objects (same cells, same
attributes), and differ only in objects later in reading order. Their long captions are therefore identical for at
least the first 77 token ids (start token + summary + three object sentences; the checks guarantee it, not just the
typical length) and differ only after, so a model that truncates at 77 tokens sees the *same text* for every member of
a group and can do no better than chance at telling them apart, while a model that reads 248 tokens can. The short
captions of a group are identical by construction: the summary opens the long caption, so any difference there would
break the shared prefix.

The splits written by :func:`write_benchmark`:

* ``pretrain``: random scenes to pre-train a small CLIP at 77 tokens (on the short captions, or on long captions
  truncated to 77 tokens);
* ``finetune``: random scenes from a disjoint seed stream, to fine-tune with stretched positions on long captions;
* ``test``: twin groups for within-group retrieval (long text -> image and back), plus per-row attributes
  (``test_attributes.json``) for zero-shot classification of the most common colour and for summary-level checks
  (short captions are shared by many images, so they cannot be scored by exact-match retrieval).

Determinism: every draw comes from :meth:`random.Random.random`, the one method whose sequence Python promises to
keep across versions, seeded through SHA-256 of the seed and a stream name; the same seed gives identical scenes,
captions, pixels and CSV bytes.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import logging
import random
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from longclip.tokenizer import CLIP_CONTEXT_LENGTH, get_tokenizer

__all__ = [
    "BACKGROUNDS",
    "BACKGROUND_RGB",
    "COLOURS",
    "COLOUR_RGB",
    "LONG_CAPTION_TOKENS",
    "PATTERN_RGB",
    "SHAPES",
    "SHORT_CAPTION_TOKENS",
    "SIZES",
    "TEXTURES",
    "Scene",
    "SceneObject",
    "generate_scenes",
    "position_name",
    "twin_groups",
    "write_benchmark",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# ------------------------------------------------------------------------------------------------------ vocabulary

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
SIZES: tuple[str, ...] = ("small", "large")
TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted")
BACKGROUNDS: tuple[str, ...] = ("grey", "beige", "navy", "teal")

COLOUR_RGB: MappingProxyType[str, tuple[int, int, int]] = MappingProxyType(
    {
        "red": (220, 30, 30),
        "green": (40, 170, 40),
        "blue": (40, 80, 230),
        "yellow": (240, 220, 40),
        "purple": (140, 50, 180),
        "orange": (245, 140, 20),
        "white": (250, 250, 250),
        "black": (15, 15, 15),
    }
)
"""Fill colour of each object colour name."""

BACKGROUND_RGB: MappingProxyType[str, tuple[int, int, int]] = MappingProxyType(
    {"grey": (112, 112, 112), "beige": (222, 205, 165), "navy": (24, 34, 92), "teal": (0, 112, 120)}
)
"""Colour of each background name; none is close to an object colour, so object outlines are always visible."""


def _pattern_shade(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """A contrasting shade of the same hue: darker for light colours, lighter for dark ones.

    Stripes and dots in a shade of the object's own colour keep the object's hue recognisable (the most common colour
    stays a visual attribute) while the pattern stays visible.
    """
    r, g, b = rgb
    if 0.299 * r + 0.587 * g + 0.114 * b >= 100:
        return (round(r * 0.55), round(g * 0.55), round(b * 0.55))
    return (round(r + (255 - r) * 0.55), round(g + (255 - g) * 0.55), round(b + (255 - b) * 0.55))


PATTERN_RGB: MappingProxyType[str, tuple[int, int, int]] = MappingProxyType(
    {name: _pattern_shade(rgb) for name, rgb in COLOUR_RGB.items()}
)
"""Colour of the stripes and dots of striped and dotted objects, per object colour."""

LONG_CAPTION_TOKENS = (100, 240)
"""Inclusive range of CLIP token counts (start and end included) of every generated long caption."""
SHORT_CAPTION_TOKENS = (8, 25)
"""Inclusive range of CLIP token counts (start and end included) of every generated short caption."""

_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Row and column names per supported grid size. Larger grids would need longer position phrases, which would break
# the token budget of nine sentences, and their cells would be too small at 64 px anyway.
_ROW_NAMES = {2: ("top", "bottom"), 3: ("top", "middle", "bottom")}
_COLUMN_NAMES = {2: ("left", "right"), 3: ("left", "centre", "right")}
_TEXTURE_PHRASES = {"solid": "a solid colour", "striped": "a striped pattern", "dotted": "a dotted pattern"}

# Rendering: object side as a fraction of the smallest cell side. Small objects cover about a quarter of the area of
# large ones, a difference a 64 px ViT sees at once.
_SIDE_FRACTION = {"small": 0.5, "large": 0.9}
# Stripe/dot period in pixels per 64 px of image side: 4 px at 64 px (2 px colour, 2 px shade), so every 8 px patch
# holds two periods; scaling it with the image keeps the look of a scene the same at any resolution.
_PATTERN_PERIOD_PER_64 = 4

# Probability that an object takes the scene's designated most common colour; the rest are drawn from the other
# colours, and draws where that colour is not strictly the most frequent are rejected.
_DOMINANT_PROBABILITY = 0.4
_MAX_REJECTIONS = 10_000
_SPLITS = ("pretrain", "finetune", "test")
# The scene settings write_benchmark uses (the generators' defaults), recorded in benchmark.json.
_BENCHMARK_SCENES = {"grid": 3, "min_objects": 5, "max_objects": 9, "shared_prefix": 3}


# ---------------------------------------------------------------------------------------------------------- scenes


@dataclass(frozen=True)
class SceneObject:
    """One shape in one grid cell.

    Attributes:
        shape: One of :data:`SHAPES`.
        colour: One of :data:`COLOURS`.
        size: One of :data:`SIZES`.
        texture: One of :data:`TEXTURES`.
        row: Grid row, 0 at the top.
        col: Grid column, 0 at the left.
    """

    shape: str
    colour: str
    size: str
    texture: str
    row: int
    col: int

    def __post_init__(self) -> None:
        for field, value, allowed in (
            ("shape", self.shape, SHAPES),
            ("colour", self.colour, COLOURS),
            ("size", self.size, SIZES),
            ("texture", self.texture, TEXTURES),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {field} {value!r}; expected one of {allowed}")
        for field, value in (("row", self.row), ("col", self.col)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{field} must be a non-negative integer, got {value!r}")

    def sentence(self, grid: int = 3) -> str:
        """The long caption's sentence about this object, e.g. "In the centre of the picture there is a small ..."."""
        return _object_sentence(self, grid)


@dataclass(frozen=True)
class Scene:
    """A grid of shapes on a plain background.

    Attributes:
        background: One of :data:`BACKGROUNDS`.
        objects: The shapes, in reading order (row-major by cell), at most one per cell.
        grid: Number of rows and of columns (2 or 3).
    """

    background: str
    objects: tuple[SceneObject, ...]
    grid: int = 3

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; expected one of {BACKGROUNDS}")
        _check_grid(self.grid)
        if not isinstance(self.objects, tuple):
            # A list would make the frozen scene unhashable and mutable behind our back.
            object.__setattr__(self, "objects", tuple(self.objects))
        previous = -1
        for index, obj in enumerate(self.objects):
            if not isinstance(obj, SceneObject):
                raise ValueError(f"object {index} is a {type(obj).__name__}, expected SceneObject")
            if obj.row >= self.grid or obj.col >= self.grid:
                raise ValueError(
                    f"object {index} is in cell ({obj.row}, {obj.col}), outside the {self.grid}x{self.grid} grid"
                )
            cell = obj.row * self.grid + obj.col
            if cell <= previous:
                raise ValueError(
                    f"object {index} in cell ({obj.row}, {obj.col}) breaks reading order: objects must be sorted "
                    "row-major by cell, one per cell"
                )
            previous = cell

    def short_caption(self) -> str:
        """The summary sentence: number of shapes, background and most common colour."""
        return _summary_sentence(len(self.objects), self.background, self.dominant_colour())

    def long_caption(self) -> str:
        """The summary sentence, then one sentence per object in reading order."""
        return " ".join([self.short_caption(), *(_object_sentence(obj, self.grid) for obj in self.objects)])

    def dominant_colour(self) -> str:
        """The most frequent object colour; ties go to the colour of the earliest object in reading order.

        Generated scenes never tie (their most common colour is strictly the most frequent); the rule only makes the
        answer well defined for hand-built scenes. A scene without objects raises ``ValueError``.
        """
        if not self.objects:
            raise ValueError("a scene without objects has no dominant colour")
        counts = Counter(obj.colour for obj in self.objects)
        best = max(counts.values())
        return next(obj.colour for obj in self.objects if counts[obj.colour] == best)

    def render(self, size: int = 64) -> Image.Image:
        """Draw the scene.

        Each object is centred in its cell, large ones spanning 90 % of the cell side and small ones 50 %; striped
        objects have horizontal stripes and dotted ones a lattice of square dots, both in :data:`PATTERN_RGB`, with a
        period of ``size / 16`` pixels (4 px at 64 px). Pixels are exact palette colours (no anti-aliasing).

        Args:
            size: Side of the square image in pixels (at least 8 per grid cell).

        Returns:
            An RGB image of ``size`` x ``size`` pixels.
        """
        return Image.fromarray(self.pixels(size), "RGB")

    def pixels(self, size: int = 64) -> np.ndarray:
        """The rendered scene as a ``[size, size, 3]`` uint8 array (what :meth:`render` wraps in an image)."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 8 * self.grid:
            raise ValueError(f"size must be an integer of at least {8 * self.grid} pixels, got {size!r}")
        canvas = np.empty((size, size, 3), dtype=np.uint8)
        canvas[:] = BACKGROUND_RGB[self.background]
        # Integer cell bounds, so that rendering is exact and identical on every platform.
        bounds = [(i * size + self.grid // 2) // self.grid for i in range(self.grid + 1)]
        # One object side per size for the whole image (from the smallest cell), so equal objects look equal in
        # every cell.
        cell = size // self.grid
        period = max(2, round(size * _PATTERN_PERIOD_PER_64 / 64))
        for obj in self.objects:
            side = max(1, round(cell * _SIDE_FRACTION[obj.size]))
            top = bounds[obj.row] + (bounds[obj.row + 1] - bounds[obj.row] - side) // 2
            left = bounds[obj.col] + (bounds[obj.col + 1] - bounds[obj.col] - side) // 2
            fill, pattern = _sprite(obj.shape, obj.texture, side, period)
            region = canvas[top : top + side, left : left + side]
            region[fill] = COLOUR_RGB[obj.colour]
            region[pattern] = PATTERN_RGB[obj.colour]
        return canvas


def position_name(row: int, col: int, grid: int = 3) -> str:
    """Words for a grid cell: "top left corner", "top centre", "middle left", "centre", "bottom right corner", ...

    Args:
        row: Grid row, 0 at the top.
        col: Grid column, 0 at the left.
        grid: Number of rows and of columns (2 or 3).
    """
    _check_grid(grid)
    if not (0 <= row < grid and 0 <= col < grid):
        raise ValueError(f"cell ({row}, {col}) is outside the {grid}x{grid} grid")
    row_name, col_name = _ROW_NAMES[grid][row], _COLUMN_NAMES[grid][col]
    if row_name == "middle" and col_name == "centre":
        return "centre"
    if row in (0, grid - 1) and col in (0, grid - 1):
        return f"{row_name} {col_name} corner"
    return f"{row_name} {col_name}"


def _object_sentence(obj: SceneObject, grid: int) -> str:
    # The wording is a pure function of the object and its cell: twins that share an object share its sentence
    # token for token, which is what makes their captions' common prefix exact.
    return (
        f"In the {position_name(obj.row, obj.col, grid)} of the picture there is a {obj.size} {obj.colour} "
        f"{obj.shape}, and it is filled with {_TEXTURE_PHRASES[obj.texture]}."
    )


def _summary_sentence(count: int, background: str, colour: str) -> str:
    noun = "shape" if count == 1 else "shapes"
    return (
        f"A picture of {_NUMBER_WORDS[count]} {noun} on a {background} background, "
        f"{colour} being the most common colour."
    )


def _check_grid(grid: int) -> None:
    if grid not in _ROW_NAMES:
        raise ValueError(f"grid must be one of {sorted(_ROW_NAMES)}, got {grid!r}")


# -------------------------------------------------------------------------------------------------------- drawing


@functools.lru_cache(maxsize=256)
def _sprite(shape: str, texture: str, side: int, period: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (``[side, side]``) of an object's pixels and of the pattern pixels drawn over them.

    Cached: a benchmark uses a few dozen distinct sprites, so drawing a scene is only array copies.
    """
    # Pixel centres in [-1, 1], so that shapes are symmetric about the box centre.
    coords = (np.arange(side) + 0.5) / side * 2 - 1
    v, u = np.meshgrid(coords, coords, indexing="ij")  # v grows downwards, u rightwards
    if shape == "circle":
        fill = u**2 + v**2 <= 1.0
    elif shape == "square":
        # Slightly inset, so a square's area is close to a circle's and size stays the cue for "small"/"large".
        fill = (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)
    elif shape == "triangle":
        fill = np.abs(u) <= (v + 1) / 2  # apex at the top, base along the bottom
    elif shape == "diamond":
        fill = np.abs(u) + np.abs(v) <= 1.0
    elif shape == "cross":
        fill = (np.abs(u) <= 0.34) | (np.abs(v) <= 0.34)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")

    # Patterns are anchored at the object's own top-left pixel, so equal objects look equal wherever they are.
    y, x = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    half = period // 2
    if texture == "solid":
        pattern = np.zeros_like(fill)
    elif texture == "striped":
        pattern = fill & (y % period >= half)
    elif texture == "dotted":
        pattern = fill & (y % period >= half) & (x % period >= half)
    else:
        raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}")
    fill.setflags(write=False)
    pattern.setflags(write=False)
    return fill, pattern


# ----------------------------------------------------------------------------------------------------- randomness


class _Draws:
    """Random draws built only on :meth:`random.Random.random`, whose sequence Python keeps across versions.

    ``randrange``, ``choice`` and ``sample`` carry no such promise, so they are re-implemented here on top of it.
    """

    def __init__(self, seed: int, stream: str) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        digest = hashlib.sha256(f"longclip.synthetic/{stream}/{seed}".encode()).digest()
        self._random = random.Random(int.from_bytes(digest[:8], "big"))

    def below(self, n: int) -> int:
        return min(int(self._random.random() * n), n - 1)

    def integer(self, low: int, high: int) -> int:
        """Uniform on ``[low, high]``, both included."""
        return low + self.below(high - low + 1)

    def choice(self, options: Sequence[T]) -> T:
        return options[self.below(len(options))]

    def chance(self, probability: float) -> bool:
        return self._random.random() < probability

    def sample(self, options: Sequence[T], k: int) -> list[T]:
        """``k`` distinct elements (partial Fisher-Yates shuffle)."""
        pool = list(options)
        for i in range(k):
            j = i + self.below(len(pool) - i)
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]


def _derived_seed(seed: int, name: str) -> int:
    """A seed for one split, so that splits use independent streams of the same benchmark seed."""
    return int.from_bytes(hashlib.sha256(f"longclip.synthetic.split/{name}/{seed}".encode()).digest()[:8], "big")


def _colours(draws: _Draws, count: int, dominant: str, fixed: Sequence[str] = ()) -> list[str]:
    """Colours for ``count`` objects, starting with ``fixed``, in which ``dominant`` is strictly the most frequent.

    A colour more frequent than every other keeps "X being the most common colour" true and visible, so it can serve
    as the label of zero-shot classification.
    """
    others = tuple(colour for colour in COLOURS if colour != dominant)
    for _ in range(_MAX_REJECTIONS):
        colours = [*fixed]
        colours += [
            dominant if draws.chance(_DOMINANT_PROBABILITY) else draws.choice(others)
            for _ in range(count - len(fixed))
        ]
        counts = Counter(colours)
        if all(counts[dominant] > n for colour, n in counts.items() if colour != dominant):
            return colours
    raise RuntimeError(f"could not make {dominant} the most common colour after {fixed}; this is a bug")


def _random_objects(draws: _Draws, grid: int, cells: Sequence[int], colours: Sequence[str]) -> list[SceneObject]:
    return [
        SceneObject(
            shape=draws.choice(SHAPES),
            colour=colour,
            size=draws.choice(SIZES),
            texture=draws.choice(TEXTURES),
            row=cell // grid,
            col=cell % grid,
        )
        for cell, colour in zip(cells, colours, strict=True)
    ]


def _random_scene(draws: _Draws, grid: int, count: int) -> Scene:
    background = draws.choice(BACKGROUNDS)
    cells = sorted(draws.sample(range(grid * grid), count))
    colours = _colours(draws, count, draws.choice(COLOURS))
    return Scene(background, tuple(_random_objects(draws, grid, cells, colours)), grid)


# --------------------------------------------------------------------------------------------------- token budget


@functools.lru_cache(maxsize=8)
def _budget_tables(grid: int) -> tuple[list[tuple[int, int]], dict[int, tuple[int, int]]]:
    """Token lengths (without start and end) of every possible sentence: per cell and per object count, (min, max).

    CLIP's tokenizer splits words at spaces before BPE, so a caption's length is exactly 2 (start and end) plus the
    sum of its sentences' lengths; these tables thus give exact bounds for every caption a setting can produce.
    """
    tokenizer = get_tokenizer()
    per_cell = []
    for cell in range(grid * grid):
        sentences = [
            _object_sentence(SceneObject(shape, colour, size, texture, cell // grid, cell % grid), grid)
            for shape in SHAPES
            for colour in COLOURS
            for size in SIZES
            for texture in TEXTURES
        ]
        lengths = [n - 2 for n in tokenizer.count_tokens(sentences)]
        per_cell.append((min(lengths), max(lengths)))
    per_count = {}
    for count in range(1, grid * grid + 1):
        summaries = [_summary_sentence(count, b, c) for b in BACKGROUNDS for c in COLOURS]
        lengths = [n - 2 for n in tokenizer.count_tokens(summaries)]
        per_count[count] = (min(lengths), max(lengths))
    return per_cell, per_count


def _long_caption_range(grid: int, count: int) -> tuple[int, int]:
    """Fewest and most tokens (start and end included) of a long caption of a scene with ``count`` objects."""
    per_cell, per_count = _budget_tables(grid)
    low = sorted(lo for lo, _ in per_cell)[:count]
    high = sorted((hi for _, hi in per_cell), reverse=True)[:count]
    return 2 + per_count[count][0] + sum(low), 2 + per_count[count][1] + sum(high)


def _check_settings(grid: int, min_objects: int, max_objects: int) -> None:
    """Refuse object counts whose long or short captions could fall outside the token ranges."""
    _check_grid(grid)
    for name, value in (("min_objects", min_objects), ("max_objects", max_objects)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if not 1 <= min_objects <= max_objects <= grid * grid:
        raise ValueError(
            f"need 1 <= min_objects <= max_objects <= {grid * grid} (cells of a {grid}x{grid} grid), "
            f"got min_objects={min_objects}, max_objects={max_objects}"
        )
    ranges = {count: _long_caption_range(grid, count) for count in range(1, grid * grid + 1)}
    feasible = [
        c for c, (low, high) in ranges.items() if LONG_CAPTION_TOKENS[0] <= low and high <= LONG_CAPTION_TOKENS[1]
    ]
    for count in (min_objects, max_objects):  # caption length grows with the count, so the ends decide
        low, high = ranges[count]
        if count not in feasible:
            raise ValueError(
                f"scenes of {count} objects on a {grid}x{grid} grid have long captions of {low}-{high} tokens, "
                f"outside {list(LONG_CAPTION_TOKENS)}; object counts that fit: {feasible}"
            )
    _, per_count = _budget_tables(grid)
    for count in range(min_objects, max_objects + 1):
        low, high = (n + 2 for n in per_count[count])
        if low < SHORT_CAPTION_TOKENS[0] or high > SHORT_CAPTION_TOKENS[1]:
            raise ValueError(
                f"short captions of {count} objects have {low}-{high} tokens, outside {SHORT_CAPTION_TOKENS}"
            )


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}, got {value!r}")


# ------------------------------------------------------------------------------------------------------ generators


def generate_scenes(n: int, seed: int, *, grid: int = 3, min_objects: int = 5, max_objects: int = 9) -> list[Scene]:
    """Random scenes: background, object count, cells and attributes drawn uniformly; one colour is the most common.

    Args:
        n: Number of scenes.
        seed: Any integer; the same seed gives the same scenes on every platform and Python version.
        grid: Number of rows and of columns (2 or 3).
        min_objects: Fewest objects per scene.
        max_objects: Most objects per scene (at most ``grid * grid``).

    Returns:
        ``n`` scenes. Every long caption has 100-240 CLIP tokens and every short caption 8-25.

    Raises:
        ValueError: A bad argument, or object counts whose captions could leave those token ranges (the message
            lists the counts that fit).
    """
    _check_count("n", n, 0)
    _check_settings(grid, min_objects, max_objects)
    draws = _Draws(seed, "scenes")
    return [_random_scene(draws, grid, draws.integer(min_objects, max_objects)) for _ in range(n)]


def twin_groups(
    n_groups: int,
    group_size: int,
    seed: int,
    *,
    shared_prefix: int = 3,
    grid: int = 3,
    min_objects: int = 5,
    max_objects: int = 9,
    min_shared_tokens: int = CLIP_CONTEXT_LENGTH,
) -> list[list[Scene]]:
    """Groups of scenes whose long captions agree on at least their first ``min_shared_tokens`` token ids.

    The members of a group share the background, the number of objects, the most common colour (so their short
    captions are identical) and their first ``shared_prefix`` objects in reading order (same cells, same
    attributes). The objects after those are drawn afresh for each member, in cells after the last shared one, so
    the members differ only in objects their long captions describe after the shared prefix. All long captions (and
    hence images) within a group are distinct.

    Args:
        n_groups: Number of groups.
        group_size: Scenes per group (at least 2).
        seed: Any integer; the same seed gives the same groups.
        shared_prefix: Number of leading objects every member of a group shares.
        grid: Number of rows and of columns (2 or 3).
        min_objects: Fewest objects per scene (raised to ``shared_prefix + 1`` if lower, so twins can differ).
        max_objects: Most objects per scene.
        min_shared_tokens: Required length of the common token prefix (start token included); 77 by default, the
            context of the original CLIP, so that a 77-token model sees identical text for all members.

    Returns:
        ``n_groups`` lists of ``group_size`` scenes.

    Raises:
        ValueError: A bad argument, settings whose captions could leave the token ranges, or a ``shared_prefix`` too
            short to guarantee ``min_shared_tokens`` shared tokens (the message says how many it guarantees).
    """
    _check_count("n_groups", n_groups, 0)
    _check_count("group_size", group_size, 2)
    _check_count("shared_prefix", shared_prefix, 0)
    _check_count("min_objects", min_objects, 1)
    _check_count("max_objects", max_objects, 1)
    low_count = max(min_objects, shared_prefix + 1)
    if low_count > max_objects:
        raise ValueError(
            f"shared_prefix={shared_prefix} leaves no object to vary with max_objects={max_objects}; "
            f"need max_objects > shared_prefix"
        )
    _check_settings(grid, low_count, max_objects)
    guaranteed = _guaranteed_shared_tokens(grid, shared_prefix, low_count, max_objects)
    if guaranteed < min_shared_tokens:
        raise ValueError(
            f"shared_prefix={shared_prefix} guarantees only {guaranteed} shared tokens (start token, summary and "
            f"{shared_prefix} object sentences), fewer than min_shared_tokens={min_shared_tokens}; share more objects"
        )

    draws = _Draws(seed, "twins")
    groups = []
    for _ in range(n_groups):
        group = None
        while group is None:  # a template whose tail admits too few variants is simply redrawn
            template = _random_scene(draws, grid, draws.integer(low_count, max_objects))
            group = _twins_of(draws, template, group_size, shared_prefix)
        groups.append(group)
    return groups


def _guaranteed_shared_tokens(grid: int, shared_prefix: int, low_count: int, high_count: int) -> int:
    """Fewest tokens any group's captions share: start token + shortest summary + shortest prefix sentences."""
    per_cell, per_count = _budget_tables(grid)
    summary = min(per_count[count][0] for count in range(low_count, high_count + 1))
    return 1 + summary + sum(sorted(lo for lo, _ in per_cell)[:shared_prefix])


def _twins_of(draws: _Draws, template: Scene, group_size: int, shared_prefix: int) -> list[Scene] | None:
    """The template plus ``group_size - 1`` variants of its tail, or None if too few distinct variants turn up."""
    grid, count = template.grid, len(template.objects)
    prefix = template.objects[:shared_prefix]
    dominant = template.dominant_colour()
    first_free = prefix[-1].row * grid + prefix[-1].col + 1 if prefix else 0
    free_cells = range(first_free, grid * grid)
    group, seen = [template], {template.long_caption()}
    for _ in range(100 * group_size):
        if len(group) == group_size:
            return group
        cells = sorted(draws.sample(free_cells, count - shared_prefix))
        colours = _colours(draws, count, dominant, fixed=[obj.colour for obj in prefix])[shared_prefix:]
        twin = Scene(template.background, prefix + tuple(_random_objects(draws, grid, cells, colours)), grid)
        caption = twin.long_caption()
        if caption not in seen:
            seen.add(caption)
            group.append(twin)
    return group if len(group) == group_size else None


# ------------------------------------------------------------------------------------------------------- benchmark


def write_benchmark(
    root: str | Path,
    *,
    seed: int = 0,
    pretrain: int = 4000,
    finetune: int = 2000,
    test_groups: int = 100,
    group_size: int = 5,
    image_size: int = 64,
) -> dict[str, Path]:
    """Write the three splits as PNG images and caption tables, with test attributes and a settings file.

    Layout under ``root``: ``{split}/images/NNNNNN.png`` and ``{split}.csv`` (columns ``image``, ``caption``,
    ``short_caption``; image paths relative to ``root``, so :func:`longclip.data.read_caption_table` reads them
    as they are) for ``pretrain`` and ``finetune`` (random scenes from independent seed streams) and ``test``
    (``test_groups`` twin groups of ``group_size`` scenes, group after group); ``test_attributes.json``, one record
    per test row (``image``, ``group``, ``member``, ``dominant_colour``, ``num_objects``, ``background``); and
    ``benchmark.json`` with the settings, the row counts and caption token statistics. Existing files are
    overwritten; the output depends only on the arguments, so the same call gives byte-identical tables and
    identical pixels.

    Args:
        root: Output folder (created if needed).
        seed: Benchmark seed; each split draws from its own stream derived from it.
        pretrain: Number of pre-training scenes.
        finetune: Number of fine-tuning scenes.
        test_groups: Number of twin groups in the test split.
        group_size: Scenes per twin group.
        image_size: Side of the images in pixels.

    Returns:
        Paths ``{"pretrain": csv, "finetune": csv, "test": csv, "attributes": json, "meta": json}``.
    """
    root = Path(root)
    settings = _BENCHMARK_SCENES
    _check_count("image_size", image_size, 8 * settings["grid"])
    counts = {key: settings[key] for key in ("grid", "min_objects", "max_objects")}
    seeds = {split: _derived_seed(seed, split) for split in _SPLITS}
    groups = twin_groups(test_groups, group_size, seeds["test"], shared_prefix=settings["shared_prefix"], **counts)
    scenes = {
        "pretrain": generate_scenes(pretrain, seeds["pretrain"], **counts),
        "finetune": generate_scenes(finetune, seeds["finetune"], **counts),
        "test": [scene for group in groups for scene in group],
    }

    paths: dict[str, Path] = {}
    rows: dict[str, list[tuple[str, str, str]]] = {}
    for split in _SPLITS:
        image_dir = root / split / "images"
        image_dir.mkdir(parents=True, exist_ok=True)
        rows[split] = []
        for index, scene in enumerate(_progress(scenes[split], f"rendering {split}")):
            relative = f"{split}/images/{index:06d}.png"
            # compress_level 1: 64 px PNGs are tiny anyway, and zlib's higher levels cost most of the writing time.
            scene.render(image_size).save(root / relative, format="PNG", optimize=False, compress_level=1)
            rows[split].append((relative, scene.long_caption(), scene.short_caption()))
        paths[split] = root / f"{split}.csv"
        _write_table(paths[split], rows[split])
        _warn_about_stale_images(image_dir, len(scenes[split]))

    attributes = [
        {
            "image": rows["test"][g * group_size + m][0],
            "group": g,
            "member": m,
            "dominant_colour": scene.dominant_colour(),
            "num_objects": len(scene.objects),
            "background": scene.background,
        }
        for g, group in enumerate(groups)
        for m, scene in enumerate(group)
    ]
    paths["attributes"] = root / "test_attributes.json"
    _write_json(paths["attributes"], attributes)

    meta = {
        "generator": "longclip.data.synthetic",
        "format_version": 1,
        "seed": seed,
        "split_seeds": seeds,
        "image_size": image_size,
        **settings,
        "test_groups": test_groups,
        "group_size": group_size,
        "rows": {split: len(scenes[split]) for split in _SPLITS},
        "vocabulary": {
            "colours": list(COLOURS),
            "shapes": list(SHAPES),
            "sizes": list(SIZES),
            "textures": list(TEXTURES),
            "backgrounds": list(BACKGROUNDS),
        },
        "palette": {
            "objects": {name: list(rgb) for name, rgb in COLOUR_RGB.items()},
            "patterns": {name: list(rgb) for name, rgb in PATTERN_RGB.items()},
            "backgrounds": {name: list(rgb) for name, rgb in BACKGROUND_RGB.items()},
        },
        "caption_tokens": {split: _token_statistics(rows[split]) for split in _SPLITS},
        "twin_shared_prefix_tokens": _describe(_shared_prefix_lengths(groups)),
        "test_long_captions_seen_in_training": len(
            {row[1] for row in rows["test"]} & {row[1] for split in ("pretrain", "finetune") for row in rows[split]}
        ),
    }
    # Written last: its presence marks a complete benchmark.
    paths["meta"] = root / "benchmark.json"
    _write_json(paths["meta"], meta)
    logger.info("wrote synthetic benchmark to %s: %s", root, meta["rows"])
    return {key: paths[key] for key in ("pretrain", "finetune", "test", "attributes", "meta")}


def _progress(items: list[T], description: str) -> Iterable[T]:
    # tqdm with disable=None shows a bar only on a terminal, so logs and tests stay clean.
    return tqdm(items, desc=description, unit="image", disable=None, leave=False)


def _write_table(path: Path, rows: list[tuple[str, str, str]]) -> None:
    # Fixed "\n" line ends, so the bytes are the same on every platform.
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("image", "caption", "short_caption"))
        writer.writerows(rows)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _warn_about_stale_images(image_dir: Path, count: int) -> None:
    stale = [p for p in image_dir.glob("*.png") if not (p.stem.isdigit() and int(p.stem) < count)]
    if stale:
        logger.warning(
            "%s holds %d images from an earlier, larger run; the tables do not use them", image_dir, len(stale)
        )


def _token_statistics(rows: list[tuple[str, str, str]]) -> dict[str, Any]:
    long, short = _count_tokens([row[1] for row in rows]), _count_tokens([row[2] for row in rows])
    return {
        "long": _describe(long),
        "short": _describe(short),
        "long_over_77": sum(n > CLIP_CONTEXT_LENGTH for n in long),
    }


def _count_tokens(texts: list[str]) -> list[int]:
    # Each text is tokenized once: short captions repeat a lot (a few hundred distinct ones), and the tokenizer's
    # text cleaning is the slowest step of writing a benchmark.
    unique = sorted(set(texts))
    counts = dict(zip(unique, get_tokenizer().count_tokens(unique), strict=True))
    return [counts[text] for text in texts]


def _shared_prefix_lengths(groups: list[list[Scene]]) -> list[int]:
    """Per group, the number of leading token ids that all members' long captions share."""
    tokenizer = get_tokenizer()
    lengths = []
    for group in groups:
        ids = tokenizer.encode([scene.long_caption() for scene in group])
        shared = 0
        while all(len(row) > shared and row[shared] == ids[0][shared] for row in ids):
            shared += 1
        lengths.append(shared)
    return lengths


def _describe(values: Sequence[int]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "min": min(values),
        "median": statistics.median(values),
        "mean": round(statistics.fmean(values), 2),
        "max": max(values),
    }
