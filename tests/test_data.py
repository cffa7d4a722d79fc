"""Tests of longclip.data: caption rules, ShareGPT4V/table readers, the dataset, the collator and webdataset shards."""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from longclip.data import (
    CaptionCollator,
    CaptionedImage,
    PairDataset,
    first_sentence,
    read_caption_table,
    read_pairs,
    read_sharegpt4v,
    split_holdout,
    webdataset_pairs,
)
from longclip.images import ImageTransform
from longclip.tokenizer import EOT_ID, PAD_ID, LongCLIPTokenizer

IMAGE_SIZE = 32
LONG = (
    "A grey cat sits on a wooden table beside a cup of coffee. The cup is white and 3.5 cm tall, e.g. an espresso "
    "cup. Behind them, a window shows a garden with trees, flowers and a small pond."
)


# ---------------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def transform() -> ImageTransform:
    return ImageTransform.for_size(IMAGE_SIZE)


@pytest.fixture(scope="module")
def tokenizer() -> LongCLIPTokenizer:
    return LongCLIPTokenizer()


@pytest.fixture(scope="module")
def small_photos(photos: dict[str, Image.Image]) -> dict[str, Image.Image]:
    """The scikit-image photos shrunk to about 40 px, so decoding and preprocessing them is instant."""
    return {name: photo.resize((40, 40 * photo.height // photo.width)) for name, photo in photos.items()}


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def image_dir(tmp_path: Path, small_photos: dict[str, Image.Image]) -> Path:
    """``tmp/images/{astronaut,chelsea,coffee}.jpg``, plus a corrupt ``broken.jpg``."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name, photo in small_photos.items():
        photo.save(folder / f"{name}.jpg")
    (folder / "broken.jpg").write_bytes(jpeg_bytes(small_photos["coffee"])[:60])  # a truncated download
    return folder


def sharegpt4v_record(index: int, image: str, caption: str) -> dict:
    return {
        "id": f"record-{index}",
        "image": image,
        "conversations": [
            {"from": "human", "value": "<image>\nDescribe this image in detail."},
            {"from": "gpt", "value": caption},
        ],
    }


# ------------------------------------------------------------------------------------------------------ first_sentence


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mr. Smith and Dr. Jones stand at St. Mark's. They smile.", "Mr. Smith and Dr. Jones stand at St. Mark's."),
        (
            "Cats, dogs, etc. are shown, i.e. pets, e.g. a cat. Then more.",
            "Cats, dogs, etc. are shown, i.e. pets, e.g. a cat.",
        ),
        ("A sign says NO. 5 IS HERE (see Fig. 2). Next.", "A sign says NO. 5 IS HERE (see Fig. 2)."),
        ("The pole is 3.14 m tall and 1.5m wide. Next.", "The pole is 3.14 m tall and 1.5m wide."),
        ("A book by J. R. Tolkien lies open. Next.", "A book by J. R. Tolkien lies open."),
        ("Is it raining? Yes, heavily.", "Is it raining?"),
        ("What a view! The sea is calm.", "What a view!"),
        ("Really?! Yes.", "Really?!"),
        ("a photo of a cat on a mat", "a photo of a cat on a mat"),
        ("One sentence ends at the last character.", "One sentence ends at the last character."),
        ('He said "stop." Then he left.', 'He said "stop."'),
        ("It waited... then it rained. Later.", "It waited... then it rained."),
        ("It waited... Then it rained.", "It waited..."),
        ("  \n Leading   space\tand\nnewlines. Second.", "Leading space and newlines."),
        ("", ""),
        ("   ", ""),
    ],
)
def test_first_sentence(text: str, expected: str) -> None:
    assert first_sentence(text) == expected


# --------------------------------------------------------------------------------------------------------- ShareGPT4V


def test_read_sharegpt4v(tmp_path: Path, image_dir: Path, transform: ImageTransform) -> None:
    records = [
        sharegpt4v_record(0, "images/astronaut.jpg", "  An astronaut poses in a white suit. A flag is behind her.\n"),
        sharegpt4v_record(1, "images/chelsea.jpg", LONG),
        sharegpt4v_record(2, "images/coffee.jpg", "A cup of coffee on a saucer"),
    ]
    json_path = tmp_path / "share-captioner.json"
    json_path.write_text(json.dumps(records))

    pairs = read_sharegpt4v(json_path, tmp_path)

    assert pairs[0] == CaptionedImage(
        image=str(tmp_path / "images" / "astronaut.jpg"),
        caption="An astronaut poses in a white suit. A flag is behind her.",
        short_caption="An astronaut poses in a white suit.",
    )
    assert pairs[1].short_caption == "A grey cat sits on a wooden table beside a cup of coffee."
    assert pairs[2].short_caption == "A cup of coffee on a saucer"
    assert all(Path(pair.image).is_file() for pair in pairs)
    # read_pairs defaults the image root to the json's folder.
    assert read_pairs(json_path) == pairs

    item = PairDataset(pairs, transform)[1]
    assert item["index"] == 1 and item["caption"] == LONG
    assert item["pixels"].shape == (3, IMAGE_SIZE, IMAGE_SIZE) and item["pixels"].dtype == torch.float32


@pytest.mark.parametrize(
    ("bad_record", "message"),
    [
        ({"id": 1, "image": "x.jpg", "conversations": [{"from": "human", "value": "<image>"}]}, "conversations"),
        ({"id": 1, "conversations": [{"value": "q"}, {"value": "A caption."}]}, '"image"'),
        (
            {"id": 1, "image": "x.jpg", "conversations": [{"value": "q"}, {"from": "gpt"}]},
            r'conversations\[1\]\["value"\]',
        ),
        ({"id": 1, "image": "x.jpg", "conversations": [{"value": "q"}, {"value": "  "}]}, "empty"),
        ("not a record", "expected a json object"),
    ],
)
def test_read_sharegpt4v_malformed_record(tmp_path: Path, bad_record: object, message: str) -> None:
    records = [sharegpt4v_record(0, "a.jpg", "Fine."), bad_record, sharegpt4v_record(2, "b.jpg", "Fine.")]
    json_path = tmp_path / "bad.json"
    json_path.write_text(json.dumps(records))
    with pytest.raises(ValueError, match="record 1 ") as info:
        read_sharegpt4v(json_path, tmp_path)
    assert str(json_path) in str(info.value)
    with pytest.raises(ValueError, match=message):
        read_sharegpt4v(json_path, tmp_path)


def test_read_sharegpt4v_needs_a_list(tmp_path: Path) -> None:
    json_path = tmp_path / "dict.json"
    json_path.write_text(json.dumps({"image": "a.jpg"}))
    with pytest.raises(ValueError, match="json list"):
        read_sharegpt4v(json_path, tmp_path)


# ------------------------------------------------------------------------------------------------------------- tables


def test_read_csv_with_quoted_fields_and_short_captions(tmp_path: Path) -> None:
    rows = [
        ["id", "image", "caption", "short_caption"],
        ["0", "a.jpg", 'A red car, parked "outside".\nIt is raining, hard.', "A red car"],
        ["1", "/abs/b.jpg", "Two dogs, one black. They run.", ""],
    ]
    path = tmp_path / "captions.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    assert '"A red car, parked ""outside"".' in path.read_text()  # the file really is quoted

    pairs = read_caption_table(path)

    assert pairs == [
        CaptionedImage(str(tmp_path / "a.jpg"), 'A red car, parked "outside".\nIt is raining, hard.', "A red car"),
        CaptionedImage("/abs/b.jpg", "Two dogs, one black. They run.", "Two dogs, one black."),
    ]
    # An explicit image root replaces the table's folder for relative paths only.
    rooted = read_caption_table(path, image_root=tmp_path / "root")
    assert [pair.image for pair in rooted] == [str(tmp_path / "root" / "a.jpg"), "/abs/b.jpg"]
    assert read_pairs(path) == pairs


@pytest.mark.parametrize("suffix", [".tsv", ".tab", ".txt"])
def test_read_tsv(tmp_path: Path, suffix: str) -> None:
    # No short_caption column; column order differs from the csv test; ".txt" makes the reader sniff the tabs.
    path = tmp_path / f"captions{suffix}"
    path.write_text("caption\timage\nA boat, on a lake. Mountains behind.\tboats/1.png\nA kite.\tkite.png\n")
    if suffix == ".txt":
        pairs = read_caption_table(path)
    else:
        pairs = read_pairs(path)
    assert pairs == [
        CaptionedImage(
            str(tmp_path / "boats" / "1.png"), "A boat, on a lake. Mountains behind.", "A boat, on a lake."
        ),
        CaptionedImage(str(tmp_path / "kite.png"), "A kite.", "A kite."),
    ]


def test_read_table_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "no_caption.csv"
    path.write_text("image,text\na.jpg,A cat.\n")
    with pytest.raises(ValueError, match="caption") as info:
        read_caption_table(path)
    message = str(info.value)
    assert str(path) in message and "'image', 'text'" in message


def test_read_table_empty_caption_names_line(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("image,caption\na.jpg,A cat.\nb.jpg,\n")
    with pytest.raises(ValueError, match="line 3.*empty 'caption'"):
        read_caption_table(path)


def test_read_table_hard_negative_column(tmp_path: Path, image_dir: Path, transform: ImageTransform) -> None:
    path = tmp_path / "negatives.csv"
    path.write_text(
        "image,caption,hard_negative\n"
        'astronaut.jpg,A red car. It is parked.,"A blue car, moving."\n'
        "chelsea.jpg,A cat.,  A dog. \n"
    )
    pairs = read_caption_table(path, image_root=image_dir)
    assert [pair.hard_negative for pair in pairs] == ["A blue car, moving.", "A dog."]
    assert pairs[0] == CaptionedImage(
        str(image_dir / "astronaut.jpg"), "A red car. It is parked.", "A red car.", "A blue car, moving."
    )
    # The dataset carries it as a third text; the collators of the other methods ignore it.
    item = PairDataset(pairs, transform)[1]
    assert item["hard_negative"] == "A dog."
    batch = CaptionCollator(LongCLIPTokenizer())([item])
    assert set(batch) == {"pixels", "long_ids", "long_mask", "short_ids", "short_mask", "indices", "num_bad",
                          "bad_shards"}  # fmt: skip
    # Tables without the column are read as before: no hard negative, and no key in the items.
    plain = tmp_path / "plain.csv"
    plain.write_text("image,caption\nchelsea.jpg,A cat.\n")
    (pair,) = read_caption_table(plain, image_root=image_dir)
    assert pair.hard_negative is None and "hard_negative" not in PairDataset([pair], transform)[0]


def test_read_table_empty_hard_negative_names_line(tmp_path: Path) -> None:
    # With the column, every row needs one: a table that mixes rows with and without is refused, naming the row.
    path = tmp_path / "mixed.tsv"
    path.write_text("image\tcaption\thard_negative\na.jpg\tA cat.\tA dog.\nb.jpg\tA boat.\t \n")
    with pytest.raises(ValueError, match=r"mixed\.tsv, line 3: empty 'hard_negative' cell.*every row needs one"):
        read_caption_table(path)


def test_read_pairs_unsupported_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.json, \.csv, \.tsv, \.tab.*webdataset_pairs"):
        read_pairs(tmp_path / "shards-000.tar")


def test_split_holdout() -> None:
    pairs = [CaptionedImage(f"{i}.jpg", f"Caption {i}.", f"Caption {i}.") for i in range(5)]
    validation, training = split_holdout(pairs, 2)
    assert validation == pairs[:2] and training == pairs[2:]
    assert split_holdout(pairs, 0) == ([], pairs)
    assert split_holdout(pairs, 5) == (pairs, [])
    with pytest.raises(ValueError, match="6 pairs from only 5"):
        split_holdout(pairs, 6)
    with pytest.raises(ValueError, match="non-negative"):
        split_holdout(pairs, -1)


# ------------------------------------------------------------------------------------------- dataset and collator


@pytest.fixture
def pairs_with_bad_images(image_dir: Path) -> list[CaptionedImage]:
    return [
        CaptionedImage(str(image_dir / "astronaut.jpg"), LONG, first_sentence(LONG)),
        CaptionedImage(str(image_dir / "missing.jpg"), "A missing image.", "A missing image."),
        CaptionedImage(str(image_dir / "chelsea.jpg"), "A cat. Short.", "A cat."),
        CaptionedImage(str(image_dir / "broken.jpg"), "A broken image.", "A broken image."),
    ]


def test_pair_dataset_returns_none_for_bad_images(
    pairs_with_bad_images: list[CaptionedImage], transform: ImageTransform, caplog: pytest.LogCaptureFixture
) -> None:
    dataset = PairDataset(pairs_with_bad_images, transform)
    assert len(dataset) == 4
    with caplog.at_level(logging.DEBUG, logger="longclip.data"):
        items = [dataset[i] for i in range(len(dataset))]
    assert items[1] is None and items[3] is None
    assert items[2]["index"] == 2 and items[2]["short_caption"] == "A cat."
    assert "missing.jpg" in caplog.text and "broken.jpg" in caplog.text


def test_collator_shapes_trimming_and_bad_count(
    pairs_with_bad_images: list[CaptionedImage], transform: ImageTransform, tokenizer: LongCLIPTokenizer
) -> None:
    loader = torch.utils.data.DataLoader(
        PairDataset(pairs_with_bad_images, transform), batch_size=4, collate_fn=CaptionCollator(tokenizer)
    )
    batch = next(iter(loader))

    assert batch["num_bad"] == 2
    assert batch["indices"].tolist() == [0, 2]
    assert batch["pixels"].shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    long_ids, short_ids = batch["long_ids"], batch["short_ids"]
    assert long_ids.dtype == short_ids.dtype == torch.long
    long_width = len(tokenizer.encode(LONG)[0])
    assert long_ids.shape == (2, long_width)
    assert short_ids.shape[0] == 2 and short_ids.shape[1] < long_width
    for ids in (long_ids, short_ids):
        # The widest row ends exactly at the last column; nothing but padding was cut.
        assert (ids[:, -1] == EOT_ID).any()
        full = tokenizer([LONG, "A cat. Short."] if ids is long_ids else [first_sentence(LONG), "A cat."])
        assert torch.equal(ids, full[:, : ids.shape[1]]) and (full[:, ids.shape[1] :] == PAD_ID).all()


def test_collator_truncates_at_context_length() -> None:
    collate = CaptionCollator(LongCLIPTokenizer(context_length=16))
    item = {"index": 7, "pixels": torch.zeros(3, 4, 4), "caption": LONG, "short_caption": "A cat."}
    batch = collate([item, None])
    assert batch["long_ids"].shape == (1, 16) and batch["long_ids"][0, -1] == EOT_ID
    assert batch["short_ids"].shape == (1, 5)  # start, "a", "cat", ".", end
    assert batch["num_bad"] == 1 and batch["indices"].tolist() == [7]


def test_collator_all_bad(tokenizer: LongCLIPTokenizer) -> None:
    batch = CaptionCollator(tokenizer)([None, None, None])
    expected = {"pixels", "long_ids", "long_mask", "short_ids", "short_mask", "indices", "num_bad", "bad_shards"}
    assert set(batch) == expected
    assert batch["num_bad"] == 3
    assert batch["pixels"].numel() == 0 and batch["indices"].shape == (0,)
    assert batch["long_ids"].shape == batch["short_ids"].shape == batch["long_mask"].shape == (0, 0)


# --------------------------------------------------------------------------------------------------------- webdataset

NUM_SHARDS, PER_SHARD = 4, 3
CORRUPT_KEY = "s01-000"  # in shard 1
SHORT_KEY = "s02-001"  # in shard 2; has a short.txt


def write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def shard_caption(key: str) -> str:
    return f"Sample {key} shows a photo. It has more detail."


@pytest.fixture
def shards(tmp_path: Path, small_photos: dict[str, Image.Image]) -> Path:
    """``tmp/shards/shard-000.tar`` ... ``shard-003.tar``, 3 samples each: jpg/png images and txt captions."""
    folder = tmp_path / "shards"
    folder.mkdir()
    photos = list(small_photos.values())
    for shard in range(NUM_SHARDS):
        members = {}
        for i in range(PER_SHARD):
            key = f"s{shard:02d}-{i:03d}"
            image = jpeg_bytes(photos[i])
            if key == CORRUPT_KEY:
                image = b"\xff\xd8\xff\xe0 this is not really a jpeg"
            members[f"{key}.jpg"] = image
            members[f"{key}.txt"] = shard_caption(key).encode()
            if key == SHORT_KEY:
                members[f"{key}.short.txt"] = b"A given short caption"
        write_tar(folder / f"shard-{shard:03d}.tar", members)
    return folder


def brace_url(folder: Path) -> str:
    return str(folder / f"shard-{{000..{NUM_SHARDS - 1:03d}}}.tar")


def test_webdataset_ranks_read_disjoint_shards(shards: Path, transform: ImageTransform) -> None:
    pytest.importorskip("webdataset")
    streams = [list(webdataset_pairs(brace_url(shards), transform, rank=r, world_size=2)) for r in range(2)]

    good = [[item for item in stream if item is not None] for stream in streams]
    captions = [{item["caption"] for item in items} for items in good]
    assert not captions[0] & captions[1]
    all_captions = {shard_caption(f"s{s:02d}-{i:03d}") for s in range(NUM_SHARDS) for i in range(PER_SHARD)}
    # Every sample is seen once: 11 good ones, plus the corrupt one as None on the rank that owns shard 1.
    assert captions[0] | captions[1] == all_captions - {shard_caption(CORRUPT_KEY)}
    assert [len(stream) for stream in streams] == [6, 6]
    assert streams[0].count(None) == 0 and streams[1].count(None) == 1
    assert streams[1][0] is None  # the corrupt sample is the first of shard 1
    # Shard i goes to rank i % 2.
    assert all(item["caption"].split()[1][:3] in ("s00", "s02") for item in good[0])
    # Indices count this rank's samples, bad ones included.
    assert [item["index"] for item in good[1]] == [1, 2, 3, 4, 5]

    items = {item["caption"]: item for items in good for item in items}
    assert items[shard_caption(SHORT_KEY)]["short_caption"] == "A given short caption"
    assert items[shard_caption("s00-001")]["short_caption"] == "Sample s00-001 shows a photo."
    assert items[shard_caption("s00-001")]["pixels"].shape == (3, IMAGE_SIZE, IMAGE_SIZE)


def test_webdataset_too_few_shards(shards: Path, transform: ImageTransform) -> None:
    pytest.importorskip("webdataset")
    with pytest.raises(ValueError, match="only 4 shard.*5 ranks"):
        webdataset_pairs(brace_url(shards), transform, rank=0, world_size=5)
    dataset = webdataset_pairs(brace_url(shards), transform, rank=1, world_size=2)
    assert dataset.shards_for(1, 2) == [str(shards / "shard-003.tar")]
    with pytest.raises(ValueError, match="2 rank.*3 DataLoader worker"):
        dataset.shards_for(0, 3)
    with pytest.raises(ValueError, match="rank must be"):
        webdataset_pairs(brace_url(shards), transform, rank=2, world_size=2)


def keep_item(item: object) -> object:
    """A picklable no-op collate function (worker processes may be spawned rather than forked)."""
    return item


def test_webdataset_dataloader_workers_split_shards(shards: Path, transform: ImageTransform) -> None:
    pytest.importorskip("webdataset")
    dataset = webdataset_pairs(sorted(shards.glob("*.tar")), transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2, collate_fn=keep_item)
    items = list(loader)
    good = [item for item in items if item is not None]
    assert len(items) == 12 and len(good) == 11
    assert len({item["caption"] for item in good}) == 11
    # Worker w numbers its k-th sample k * 2 + w, so indices stay unique across the workers of a rank.
    indices = {item["index"] for item in good}
    assert len(indices) == 11 and indices <= set(range(12))


def test_webdataset_shuffle_is_seeded(shards: Path, transform: ImageTransform) -> None:
    pytest.importorskip("webdataset")

    def captions(**kwargs: int) -> list[str]:
        stream = webdataset_pairs(brace_url(shards), transform, **kwargs)
        return [item["caption"] if item else "<bad>" for item in stream]

    ordered = captions()
    shuffled = captions(shuffle_buffer=5, seed=1)
    assert sorted(shuffled) == sorted(ordered) and shuffled != ordered
    assert captions(shuffle_buffer=5, seed=1) == shuffled
    assert captions(shuffle_buffer=5, seed=2) != shuffled


def test_webdataset_sample_without_caption_is_none(
    tmp_path: Path, small_photos: dict[str, Image.Image], transform: ImageTransform
) -> None:
    pytest.importorskip("webdataset")
    shard = tmp_path / "one.tar"
    image = jpeg_bytes(small_photos["coffee"])
    write_tar(shard, {"a.png": image, "b.jpg": image, "b.txt": b"A cup."})  # a PNG name on JPEG bytes still decodes
    items = list(webdataset_pairs(str(shard), transform))
    assert items[0] is None and items[1]["caption"] == "A cup." and items[1]["index"] == 1


def test_webdataset_hard_negative_from_neg_txt(
    tmp_path: Path, small_photos: dict[str, Image.Image], transform: ImageTransform
) -> None:
    pytest.importorskip("webdataset")
    shard = tmp_path / "negatives.tar"
    image = jpeg_bytes(small_photos["coffee"])
    write_tar(shard, {"a.jpg": image, "a.txt": b"A cup.", "a.neg.txt": b" A glass. \n", "b.jpg": image,
                      "b.txt": b"A mug."})  # fmt: skip
    first, second = webdataset_pairs(str(shard), transform)
    assert first["hard_negative"] == "A glass." and first["short_caption"] == "A cup."
    assert "hard_negative" not in second  # a sample without neg.txt is kept, with no hard negative


def test_webdataset_missing_library_message(monkeypatch: pytest.MonkeyPatch, transform: ImageTransform) -> None:
    monkeypatch.setitem(sys.modules, "webdataset", None)  # makes "import webdataset" raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'longclip\[webdataset\]'"):
        webdataset_pairs("shards-{000..003}.tar", transform)
