"""Benchmark loaders and the evaluation runner, on tiny fake copies of each published layout built in tmp."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_clip
from PIL import Image

from longclip import LongCLIPModel
from longclip.cli import main
from longclip.eval import retrieval_metrics, zero_shot_classify
from longclip.eval.datasets import (
    DATASETS,
    ClassificationSet,
    RetrievalSet,
    imagenet_metadata,
    load_dataset,
)
from longclip.eval.runner import evaluate, format_markdown, write_clip_benchmark, write_report

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
SIDE = 40  # fake photos are resized to SIDE x SIDE: small files, still real pictures


@pytest.fixture(scope="module")
def model() -> LongCLIPModel:
    return LongCLIPModel(tiny_clip())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model) -> Path:
    folder = tmp_path_factory.mktemp("model") / "tiny"
    model.save_pretrained(folder)
    return folder


def save_photo(path: Path, index: int) -> str:
    """Write the ``index``-th scikit-image photo, resized, to ``path`` (format from the suffix)."""
    from skimage import data

    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.asarray(getattr(data, PHOTOS[index % len(PHOTOS)])())
    Image.fromarray(array).convert("RGB").resize((SIDE, SIDE)).save(path)
    return str(path)


def write_json(path: Path, value) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


# --- fake layouts ----------------------------------------------------------------------------------------------------


def make_coco(root: Path) -> Path:
    """Three images with ids out of order; image 10 has 7 captions, interleaved with the others' annotations."""
    images = [{"id": 30, "file_name": "000000000030.jpg"}, {"id": 10, "file_name": "000000000010.jpg"}]
    images.append({"id": 20, "file_name": "000000000020.jpg"})
    annotations = []
    for n in range(7):
        annotations.append({"id": len(annotations), "image_id": 10, "caption": f"ten {n} "})
        if n < 5:
            annotations.append({"id": len(annotations), "image_id": 30, "caption": f"thirty {n}"})
            annotations.append({"id": len(annotations), "image_id": 20, "caption": f"twenty {n}"})
    write_json(root / "annotations" / "captions_val2017.json", {"images": images, "annotations": annotations})
    for n, record in enumerate(images):
        save_photo(root / "val2017" / record["file_name"], n)
    return root


def make_flickr(root: Path) -> Path:
    """Four images: the original token file (all of them) and Karpathy's json (splits train, test, val, test)."""
    names = ["100.jpg", "200.jpg", "300.jpg", "400.jpg"]
    lines = [f"{name}#{k}\t{name[:3]} caption {k}\n" for name in names for k in range(5)]
    (root / "results_20130124.token").parent.mkdir(parents=True, exist_ok=True)
    (root / "results_20130124.token").write_text("".join(lines), encoding="utf-8")
    splits = ["train", "test", "val", "test"]
    records = [
        {
            "filename": name,
            "split": split,
            "imgid": n,
            "sentences": [{"raw": f"{name[:3]} caption {k}", "tokens": []} for k in range(5)],
        }
        for n, (name, split) in enumerate(zip(names, splits, strict=True))
    ]
    write_json(root / "dataset_flickr30k.json", {"images": records, "dataset": "flickr30k"})
    for n, name in enumerate(names):
        save_photo(root / "flickr30k-images" / name, n)
    return root


def make_urban1k(root: Path, corrupt: str | None = None) -> Path:
    """Captions 1, 2, 3, 10 (natural order 1, 2, 3, 10); caption 2 has a second line that is not read."""
    for n, stem in enumerate(("1", "2", "3", "10")):
        text = f"a long caption number {stem} about photo {PHOTOS[n]}"
        if stem == "2":
            text += "\nsecond line, ignored"
        (root / "caption").mkdir(parents=True, exist_ok=True)
        (root / "caption" / f"{stem}.txt").write_text(text + "\n", encoding="utf-8")
        save_photo(root / "image" / f"{stem}.jpg", n)
    if corrupt is not None:
        (root / "image" / f"{corrupt}.jpg").write_bytes(b"this is not a jpeg")
    return root


def sharegpt4v_records(count: int) -> list[dict]:
    return [
        {
            "id": str(n),
            "image": f"coco/train2017/{n % 3}.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe the image."},
                {"from": "gpt", "value": f"Record {n}.\nIt has two lines."},
            ],
        }
        for n in range(count)
    ]


def make_sharegpt4v(root: Path, count: int) -> Path:
    write_json(root / "share-captioner_coco_lcs_sam_1246k_1107.json", sharegpt4v_records(count))
    for n in range(3):
        save_photo(root / "coco" / "train2017" / f"{n}.jpg", n)
    return root


def make_dci(root: Path) -> Path:
    """The DCI release under root/densely_captioned_images: sa_3 has an empty extra_caption."""
    base = root / "densely_captioned_images"
    captions = {"sa_1.json": ("Short one.", "Extra one."), "sa_2.json": ("Short two.", "Extra two.")}
    captions["sa_3.json"] = ("Short three.", "")
    for n, (name, (short, extra)) in enumerate(captions.items()):
        record = {"image": name.replace(".json", ".jpg"), "short_caption": short, "extra_caption": extra}
        record.update(mask_data={}, mask_keys=[])
        write_json(base / "annotations" / name, record)
        save_photo(base / "photos" / record["image"], n)
    write_json(base / "splits.json", {"train": ["sa_2.json"], "valid": ["sa_3.json"], "test": ["sa_1.json"]})
    return root


def make_docci(root: Path) -> Path:
    records = [
        {"example_id": "train_00000", "split": "train", "image_file": "train_00000.jpg", "description": "Train."},
        {"example_id": "test_00000", "split": "test", "image_file": "test_00000.jpg", "description": "Test zero."},
        {"example_id": "qual_dev_0", "split": "qual_dev", "image_file": "qual_dev_0.jpg", "description": "Dev."},
        {"example_id": "test_00001", "split": "test", "image_file": "test_00001.jpg", "description": "Test one."},
    ]
    root.mkdir(parents=True, exist_ok=True)
    (root / "docci_descriptions.jsonlines").write_text("".join(json.dumps(r) + "\n" for r in records))
    for n, record in enumerate(records):
        save_photo(root / "images" / record["image_file"], n)
    return root


def cifar_rows(count: int) -> np.ndarray:
    """Rows whose pixels are known: red = y * 32 + x (mod 256), green = 255 - red, blue = the row number."""
    red = (np.arange(32 * 32) % 256).astype(np.uint8)
    rows = [np.concatenate([red, 255 - red, np.full(32 * 32, n, np.uint8)]) for n in range(count)]
    return np.stack(rows)


def make_cifar(root: Path, hundred: bool = False, legacy: bool = False) -> Path:
    """The python-pickle release; ``legacy`` writes bytes keys and numpy 1.x's global name, as old pickles have."""
    folder, test, meta = (
        ("cifar-100-python", "test", "meta") if hundred else ("cifar-10-batches-py", "test_batch", "batches.meta")
    )
    labels_key, names_key = ("fine_labels", "fine_label_names") if hundred else ("labels", "label_names")
    names = ["maple_tree", "aquarium_fish", "apple"] if hundred else ["airplane", "automobile", "bird"]
    batch = {"data": cifar_rows(4), labels_key: [2, 0, 1, 2], "batch_label": "testing batch 1 of 1"}
    metadata = {names_key: names}
    (root / folder).mkdir(parents=True, exist_ok=True)
    for name, value in ((test, batch), (meta, metadata)):
        if legacy:
            value = {key.encode(): item for key, item in value.items()}
            blob = pickle.dumps(value, protocol=3)  # protocol 3 names globals in text: rewrite to numpy 1.x's
            blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        else:
            blob = pickle.dumps(value, protocol=4)
        (root / folder / name).write_bytes(blob)
    return root


class Evil:
    """A pickle payload that would run a shell command when loaded by plain ``pickle.load``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --- the table -------------------------------------------------------------------------------------------------------


def test_every_dataset_is_registered_with_a_kind_and_a_layout():
    retrieval = {"coco", "flickr30k", "flickr30k-1k", "urban1k", "sharegpt4v-1k", "sharegpt4v-10k"}
    retrieval |= {"dci", "long-dci", "docci"}
    classification = {"imagenet", "cifar10", "cifar100", "folder"}
    assert set(DATASETS) == retrieval | classification
    for name, spec in DATASETS.items():
        assert spec.kind == ("retrieval" if name in retrieval else "classification")
        assert callable(spec.loader) and len(spec.layout) > 20


def test_unknown_dataset_names_the_registered_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown data set 'mscoco'.*coco.*urban1k"):
        load_dataset("mscoco", tmp_path)


# --- retrieval loaders -----------------------------------------------------------------------------------------------


def test_coco_sorts_images_by_id_and_keeps_the_first_five_captions(tmp_path):
    data = load_dataset("coco", make_coco(tmp_path))
    assert isinstance(data, RetrievalSet) and data.name == "coco"
    assert [Path(p).name for p in data.images] == ["000000000010.jpg", "000000000020.jpg", "000000000030.jpg"]
    assert data.texts[:5] == [f"ten {n}" for n in range(5)]  # 7 captions in the file; the first 5, stripped
    assert data.texts[5:10] == [f"twenty {n}" for n in range(5)]
    assert data.text_to_image == [0] * 5 + [1] * 5 + [2] * 5
    assert "first 5 captions" in data.protocol


def test_flickr30k_full_set_and_karpathy_1k_split_differ(tmp_path):
    root = make_flickr(tmp_path)
    full = load_dataset("flickr30k", root)
    assert [Path(p).name for p in full.images] == ["100.jpg", "200.jpg", "300.jpg", "400.jpg"]
    assert len(full.texts) == 20 and full.text_to_image[5:10] == [1] * 5
    assert full.texts[6] == "200 caption 1"
    assert "full set" in full.protocol

    test_split = load_dataset("flickr30k-1k", root)
    assert [Path(p).name for p in test_split.images] == ["200.jpg", "400.jpg"]  # only the "test" records
    assert test_split.texts[5:] == [f"400 caption {k}" for k in range(5)]
    assert test_split.text_to_image == [0] * 5 + [1] * 5
    assert "Karpathy test split" in test_split.protocol and test_split.protocol != full.protocol


def test_flickr30k_reads_kaggle_and_clip_benchmark_caption_files(tmp_path):
    root = make_flickr(tmp_path)
    (root / "results_20130124.token").unlink()
    (root / "dataset_flickr30k.json").unlink()
    rows = [f"{name}| {k}| {name[:3]} caption {k}\n" for name in ("100.jpg", "200.jpg") for k in range(5)]
    (root / "results.csv").write_text("image_name| comment_number| comment\n" + "".join(rows))
    (root / "flickr30k_test_karpathy.txt").write_text("image,caption\n300.jpg,a caption, with a comma\n")
    full = load_dataset("flickr30k", root)
    assert len(full.images) == 2 and full.texts[0] == "100 caption 0"
    test_split = load_dataset("flickr30k-1k", root)
    assert test_split.texts == ["a caption, with a comma"] and Path(test_split.images[0]).name == "300.jpg"


def test_urban1k_pairs_caption_and_image_files_in_natural_order(tmp_path):
    data = load_dataset("urban1k", make_urban1k(tmp_path))
    assert [Path(p).name for p in data.images] == ["1.jpg", "2.jpg", "3.jpg", "10.jpg"]
    assert data.texts[1] == "a long caption number 2 about photo chelsea"  # first line only, as Long-CLIP reads it
    assert data.text_to_image == [0, 1, 2, 3]


def test_sharegpt4v_takes_the_first_n_records(tmp_path):
    root = make_sharegpt4v(tmp_path, 10_000)
    small, large = load_dataset("sharegpt4v-1k", root), load_dataset("sharegpt4v-10k", root)
    assert len(small.texts) == len(small.images) == 1_000 and len(large.texts) == 10_000
    assert small.texts[0] == "Record 0. It has two lines." and small.texts[-1].startswith("Record 999.")
    assert large.texts[-1].startswith("Record 9999.") and large.texts[:1_000] == small.texts
    assert small.images[4] == str(root / "coco" / "train2017" / "1.jpg")


def test_sharegpt4v_with_too_few_records_is_an_error(tmp_path):
    root = make_sharegpt4v(tmp_path, 999)
    with pytest.raises(ValueError) as error:
        load_dataset("sharegpt4v-1k", root)
    message = str(error.value)
    assert "'sharegpt4v-1k'" in message and str(root) in message and "999 records" in message
    assert "Expected layout: share-captioner_coco_lcs_sam_1246k_1107.json" in message


def test_dci_uses_every_split_with_short_and_extra_caption(tmp_path):
    root = make_dci(tmp_path)
    data = load_dataset("dci", root)  # root is the parent of densely_captioned_images/
    assert [Path(p).name for p in data.images] == ["sa_2.jpg", "sa_3.jpg", "sa_1.jpg"]  # splits.json order
    assert data.texts == ["Short two.\nExtra two.", "Short three.", "Short one.\nExtra one."]
    assert Path(data.images[0]).parent.name == "photos"


def test_long_dci_uses_sorted_annotations_and_skips_empty_extra_captions(tmp_path):
    root = make_dci(tmp_path) / "densely_captioned_images"  # the folder itself works too
    data = load_dataset("long-dci", root)
    assert [Path(p).name for p in data.images] == ["sa_1.jpg", "sa_2.jpg"]
    assert data.texts == ["Extra one.", "Extra two."]
    assert "2 of 3" in data.protocol


def test_docci_keeps_only_the_test_split(tmp_path):
    data = load_dataset("docci", make_docci(tmp_path))
    assert [Path(p).name for p in data.images] == ["test_00000.jpg", "test_00001.jpg"]
    assert data.texts == ["Test zero.", "Test one."] and data.text_to_image == [0, 1]


# --- classification loaders ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["str-keys", "bytes-keys-numpy1-names"])
def test_cifar10_rows_decode_to_the_right_pixels(tmp_path, legacy):
    data = load_dataset("cifar10", make_cifar(tmp_path, legacy=legacy))
    assert isinstance(data, ClassificationSet)
    assert data.class_names == ["airplane", "automobile", "bird"] and data.labels == [2, 0, 1, 2]
    assert len(data.images) == 4
    for n, image in enumerate(data.images):
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert tuple(image[0, 0]) == (0, 255, n)
        assert tuple(image[0, 5]) == (5, 250, n)  # row-major within a plane: x moves along a row
        assert tuple(image[2, 1]) == (65, 190, n)  # y = 2, x = 1: red = 2 * 32 + 1
    assert np.array_equal(np.asarray(Image.fromarray(data.images[1])), data.images[1])


def test_cifar100_reads_fine_labels_and_keeps_underscores_as_the_original(tmp_path):
    # The original evaluation takes torchvision's CIFAR100.classes, which keep the files' underscores.
    root = make_cifar(tmp_path, hundred=True) / "cifar-100-python"  # the folder itself works too
    data = load_dataset("cifar100", root)
    assert data.class_names == ["maple_tree", "aquarium_fish", "apple"] and data.labels == [2, 0, 1, 2]
    cleaned = load_dataset("cifar100", root, clean_class_names=True)
    assert cleaned.class_names == ["maple tree", "aquarium fish", "apple"] and cleaned.labels == data.labels


def test_cifar10_class_names_are_the_files(tmp_path):
    data = load_dataset("cifar10", make_cifar(tmp_path))
    assert data.class_names == ["airplane", "automobile", "bird"]
    assert load_dataset("cifar10", tmp_path, clean_class_names=True).class_names == data.class_names


def test_a_malicious_cifar_pickle_is_refused_and_never_runs(tmp_path):
    root = make_cifar(tmp_path)
    marker = tmp_path / "pwned"
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": Evil(marker)}))
    with pytest.raises(ValueError, match=r"refusing to load the global (posix|nt|os)\.system") as error:
        load_dataset("cifar10", root)
    assert "'cifar10'" in str(error.value) and "Expected layout" in str(error.value)
    assert not marker.exists()


def test_imagenet_uses_sorted_wnids_and_openai_class_names(tmp_path):
    val = tmp_path / "val"
    wnids = [f"n{n:08d}" for n in range(1000)]
    pixel = Image.new("RGB", (4, 4), "red")
    for wnid in reversed(wnids):
        (val / wnid).mkdir(parents=True)
        pixel.save(val / wnid / f"ILSVRC2012_val_{wnid}.JPEG", format="JPEG")
    (val / "n00000002" / "ILSVRC2012_val_extra.JPEG").write_bytes(
        (val / "n00000002" / "ILSVRC2012_val_n00000002.JPEG").read_bytes()
    )
    data = load_dataset("imagenet", tmp_path)
    names, templates = imagenet_metadata()
    assert data.class_names == names and names[:3] == ["tench", "goldfish", "great white shark"]
    assert len(data.images) == 1001 and data.labels[:4] == [0, 1, 2, 2]
    assert Path(data.images[3]).name == "ILSVRC2012_val_n00000002.JPEG"
    assert len(templates) == 80 and all("{}" in t for t in templates)

    (val / "n00000999" / "ILSVRC2012_val_n00000999.JPEG").unlink()
    (val / "n00000999").rmdir()
    with pytest.raises(ValueError, match="999 class folders, expected 1000"):
        load_dataset("imagenet", tmp_path)


def test_folder_reads_class_subfolders(tmp_path):
    save_photo(tmp_path / "tabby_cat" / "a.png", 1)
    save_photo(tmp_path / "golden_retriever" / "b.jpg", 0)
    save_photo(tmp_path / "golden_retriever" / "nested" / "c.jpg", 2)
    (tmp_path / "golden_retriever" / "notes.txt").write_text("not an image")
    data = load_dataset("folder", tmp_path)
    assert data.class_names == ["golden retriever", "tabby cat"] and data.labels == [0, 0, 1]
    assert [Path(p).name for p in data.images] == ["b.jpg", "c.jpg", "a.png"]


# --- what a reader leaves out is reported -------------------------------------------------------------------------


@pytest.fixture
def warnings_of_readers(caplog):
    """The warnings the data set readers log, as one string (caplog at WARNING on longclip.eval.datasets)."""
    with caplog.at_level("WARNING", logger="longclip.eval.datasets"):
        yield caplog


def test_coco_reports_image_files_not_in_the_annotations_and_images_without_captions(tmp_path, warnings_of_readers):
    root = make_coco(tmp_path)
    stray = save_photo(root / "val2017" / "000000000099.jpg", 0)
    annotations = json.loads((root / "annotations" / "captions_val2017.json").read_text())
    annotations["images"].append({"id": 40, "file_name": "000000000040.jpg"})  # listed, but no caption
    write_json(root / "annotations" / "captions_val2017.json", annotations)
    save_photo(root / "val2017" / "000000000040.jpg", 1)
    data = load_dataset("coco", root)
    assert data.dropped == [stray] and stray not in data.images
    log = warnings_of_readers.text
    assert f"1 image file(s) in {root / 'val2017'} are not in captions_val2017.json and are not evaluated" in log
    assert f"(first: {stray})" in log
    # An image listed without a caption stays a candidate (as CocoCaptions keeps it), with a warning naming it.
    assert str(root / "val2017" / "000000000040.jpg") in data.images
    assert "1 image(s) listed in captions_val2017.json have no caption" in log and "000000000040.jpg" in log


def test_flickr30k_full_set_reports_image_files_without_captions(tmp_path, warnings_of_readers):
    root = make_flickr(tmp_path)
    stray = save_photo(root / "flickr30k-images" / "999.jpg", 0)
    data = load_dataset("flickr30k", root)
    assert data.dropped == [stray] and len(data.images) == 4
    log = warnings_of_readers.text
    assert "1 image file(s)" in log and "have no caption in results_20130124.token" in log and stray in log


def test_flickr30k_1k_reports_test_records_without_sentences_but_not_the_other_splits(tmp_path, warnings_of_readers):
    root = make_flickr(tmp_path)
    document = json.loads((root / "dataset_flickr30k.json").read_text())
    document["images"][3]["sentences"] = []  # 400.jpg, a "test" record
    write_json(root / "dataset_flickr30k.json", document)
    data = load_dataset("flickr30k-1k", root)
    assert [Path(p).name for p in data.images] == ["200.jpg"]
    assert data.dropped == [str(root / "flickr30k-images" / "400.jpg")]
    log = warnings_of_readers.text
    assert '1 "test" record(s) of dataset_flickr30k.json have no sentence and are not evaluated' in log
    assert "400.jpg" in log
    assert "100.jpg" not in log and "300.jpg" not in log  # other splits are the protocol's cut, not a drop


def test_long_dci_reports_the_annotations_it_skips(tmp_path, warnings_of_readers):
    root = make_dci(tmp_path)
    data = load_dataset("long-dci", root)
    photo = str(root / "densely_captioned_images" / "photos" / "sa_3.jpg")
    assert data.dropped == [photo]
    assert "1 annotation(s) have an empty extra_caption" in warnings_of_readers.text
    assert f"(first: {photo})" in warnings_of_readers.text


def test_class_folders_report_files_that_are_not_images_or_lie_outside_the_classes(tmp_path, warnings_of_readers):
    save_photo(tmp_path / "cat" / "a.png", 1)
    save_photo(tmp_path / "dog" / "b.jpg", 0)
    (tmp_path / "dog" / "c.heic").write_bytes(b"an image in a format we do not read")
    (tmp_path / "dog" / ".DS_Store").write_bytes(b"")  # hidden files are not counted
    save_photo(tmp_path / "loose.jpg", 2)
    data = load_dataset("folder", tmp_path)
    assert data.labels == [0, 1]
    assert data.dropped == [str(tmp_path / "dog" / "c.heic"), str(tmp_path / "loose.jpg")]
    log = warnings_of_readers.text
    assert "1 file(s) in the class folders of" in log and "are not images" in log and "c.heic" in log
    assert f"1 file(s) in {tmp_path} lie outside every class folder and are not evaluated" in log


@pytest.mark.parametrize(
    "name, make",
    [
        ("coco", make_coco),
        ("flickr30k", make_flickr),
        ("flickr30k-1k", make_flickr),
        ("urban1k", make_urban1k),
        ("dci", make_dci),
        ("docci", make_docci),
        ("cifar10", make_cifar),
    ],
)
def test_complete_copies_drop_nothing_and_warn_nothing(tmp_path, warnings_of_readers, name, make):
    data = load_dataset(name, make(tmp_path))
    assert data.dropped == [] and warnings_of_readers.text == ""


def test_evaluate_counts_what_the_reader_dropped(tmp_path, model):
    urban = make_urban1k(tmp_path / "urban")
    save_photo(urban / "image" / "99.jpg", 0)
    retrieval = evaluate(model, "urban1k", urban)
    assert (retrieval["num_images"], retrieval["num_skipped"], retrieval["num_dropped"]) == (4, 0, 1)
    folder = tmp_path / "folder"
    save_photo(folder / "cat" / "a.png", 1)
    save_photo(folder / "dog" / "b.jpg", 0)
    (folder / "dog" / "notes.txt").write_text("not an image")
    classification = evaluate(model, "folder", folder, templates=["a {}."])
    assert classification["num_dropped"] == 1 and classification["num_images"] == 2
    clean = evaluate(model, "docci", make_docci(tmp_path / "docci"))
    assert clean["num_dropped"] == 0
    notes = format_markdown([retrieval, classification, clean]).splitlines()
    assert any(
        line.startswith("- urban1k: Urban-1k") and "(1 file(s) left out by the data set reader" in line
        for line in notes
    )
    assert any(line.startswith("- folder: ") and "(1 file(s) left out" in line for line in notes)
    assert not any(line.startswith("- docci: ") and "left out" in line for line in notes)


# --- missing and malformed layouts -----------------------------------------------------------------------------------


def test_a_missing_file_names_the_dataset_root_and_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_dataset("coco", tmp_path)
    message = str(error.value)
    assert "'coco'" in message and str(tmp_path) in message
    assert "no file annotations/captions_val2017.json" in message
    assert "Expected layout: annotations/captions_val2017.json and val2017/" in message


def test_a_missing_root_and_a_missing_image_folder_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        load_dataset("urban1k", tmp_path / "nowhere")
    (tmp_path / "caption").mkdir()
    (tmp_path / "caption" / "1.txt").write_text("a caption")
    with pytest.raises(FileNotFoundError, match=r"no folder image/.*Expected layout: image/N.jpg and caption/N.txt"):
        load_dataset("urban1k", tmp_path)


def test_malformed_files_are_value_errors_that_say_what_is_wrong(tmp_path):
    root = make_coco(tmp_path / "coco")
    (root / "annotations" / "captions_val2017.json").write_text("{not json")
    with pytest.raises(ValueError, match="captions_val2017.json is not valid JSON"):
        load_dataset("coco", root)
    docci = make_docci(tmp_path / "docci")
    (docci / "docci_descriptions.jsonlines").write_text('{"split": "test", "image_file": "x.jpg"}\n')
    with pytest.raises(ValueError, match="has no str field 'description'"):
        load_dataset("docci", docci)
    cifar = make_cifar(tmp_path / "cifar")
    (cifar / "cifar-10-batches-py" / "batches.meta").write_bytes(pickle.dumps({"label_names": "airplane"}))
    with pytest.raises(ValueError, match="batches.meta has no list 'label_names'"):
        load_dataset("cifar10", cifar)


def test_a_set_whose_images_are_all_missing_is_an_error(tmp_path):
    root = make_urban1k(tmp_path)
    for path in (root / "image").iterdir():
        path.unlink()
    with pytest.raises(FileNotFoundError, match="none of the 4 images it lists exists"):
        load_dataset("urban1k", root)


# --- evaluation ------------------------------------------------------------------------------------------------------


def test_evaluate_retrieval_equals_the_metrics_on_the_models_embeddings(tmp_path, model):
    root = make_coco(tmp_path)
    result = evaluate(model, "coco", root, batch_size=2, ks=(1, 2), model_name="tiny")
    data = load_dataset("coco", root)
    expected = retrieval_metrics(
        model.embed_images(data.images), model.embed_texts(data.texts), data.text_to_image, ks=(1, 2)
    )
    assert {key: result[key] for key in expected} == expected
    assert list(result)[:8] == [
        "dataset",
        "task",
        "protocol",
        "model",
        "long_texts",
        "num_images",
        "num_texts",
        "num_skipped",
    ]
    assert (result["dataset"], result["task"], result["model"]) == ("coco", "zeroshot_retrieval", "tiny")
    assert (result["num_images"], result["num_texts"], result["num_skipped"]) == (3, 15, 0)


def test_a_corrupt_image_is_reported_and_its_text_dropped_not_fatal(tmp_path, model):
    root = make_urban1k(tmp_path, corrupt="2")
    result = evaluate(model, "urban1k", root)
    assert (result["num_images"], result["num_texts"], result["num_skipped"]) == (3, 3, 1)
    data = load_dataset("urban1k", root)
    good = [0, 2, 3]
    expected = retrieval_metrics(
        model.embed_images([data.images[i] for i in good]),
        model.embed_texts([data.texts[i] for i in good]),
        [0, 1, 2],
    )
    assert {key: result[key] for key in expected} == expected


def test_evaluate_classification_runs_zero_shot_classification(tmp_path, model):
    root = make_cifar(tmp_path)
    templates = ["a photo of a {}.", "a blurry photo of a {}."]
    result = evaluate(model, "cifar10", root, templates=templates)
    data = load_dataset("cifar10", root)
    expected = zero_shot_classify(model, data.images, data.labels, data.class_names, templates)
    assert {key: result[key] for key in expected} == expected
    assert result["task"] == "zeroshot_classification" and set(expected) >= {"acc1", "acc5", "mean_per_class_recall"}
    assert (result["num_classes"], result["num_texts"], result["num_skipped"]) == (3, 6, 0)


def test_write_report_writes_json_and_a_markdown_table(tmp_path, model):
    retrieval = evaluate(model, "urban1k", make_urban1k(tmp_path / "urban"), model_name="tiny")
    classification = evaluate(model, "cifar10", make_cifar(tmp_path / "cifar"), templates=["a {}."], model_name="tiny")
    write_report([retrieval, classification], tmp_path / "out" / "results.json", tmp_path / "out" / "results.md")
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["dataset"] for r in written] == ["urban1k", "cifar10"]
    assert list(written[0]) == list(retrieval) and written[1]["acc1"] == classification["acc1"]

    table = (tmp_path / "out" / "results.md").read_text()
    assert table == format_markdown([retrieval, classification])
    lines = table.splitlines()
    assert lines[0].startswith("| dataset | images | texts | skipped | T→I R@1 | T→I R@5 | T→I R@10 | I→T R@1")
    assert lines[0].endswith("| acc@1 | acc@5 | mean per-class recall |")
    urban_row = next(line for line in lines if line.startswith("| urban1k "))
    assert f"| {100 * retrieval['image_retrieval_recall@1']:.1f} |" in urban_row
    cifar_row = next(line for line in lines if line.startswith("| cifar10 "))
    assert cifar_row.endswith(f"| {100 * classification['mean_per_class_recall']:.1f} |")
    assert any(line.startswith("- urban1k: Urban-1k") for line in lines)


# --- the command -----------------------------------------------------------------------------------------------------


def test_cli_eval_writes_json_and_markdown(tmp_path, model_dir, capsys):
    urban, cifar = make_urban1k(tmp_path / "urban"), make_cifar(tmp_path / "cifar")
    out_json, out_md = tmp_path / "results.json", tmp_path / "results.md"
    argv = ["eval", "--model", str(model_dir), "--dataset", "urban1k", "--root", str(urban)]
    argv += ["--dataset", f"cifar10={cifar}", "--output", str(out_json), "--markdown", str(out_md)]
    assert main(argv) == 0
    results = json.loads(out_json.read_text())
    assert [r["dataset"] for r in results] == ["urban1k", "cifar10"]
    assert results[0]["model"] == str(model_dir) and "image_retrieval_recall@10" in results[0]
    assert results[1]["num_texts"] == 3 * 80  # OpenAI's 80 templates by default
    out = capsys.readouterr().out
    assert "| urban1k |" in out and "| cifar10 |" in out and f"wrote {out_json}" in out
    assert out_md.read_text().startswith("| dataset |")


def test_cli_eval_list_and_errors(tmp_path, model_dir, capsys):
    assert main(["eval", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in DATASETS) and "val/<wnid>/*.JPEG" in listed

    assert main(["eval", "--model", str(model_dir), "--dataset", "urban1k"]) == 1
    assert "no folder for data set 'urban1k'" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                "--model",
                str(model_dir),
                "-d",
                "urban1k",
                "-d",
                "docci",
                "--root",
                "a",
                "--root",
                "b",
                "--root",
                "c",
            ]
        )
        == 1
    )
    assert "2 data sets without =DIR but 3 --root values" in capsys.readouterr().err
    assert main(["eval", "--model", str(model_dir), "--dataset", f"docci={tmp_path}"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("longclip: error: data set 'docci'") and "Expected layout" in error and "\n" not in error


def test_cli_eval_shares_one_root_between_datasets(tmp_path, model_dir):
    root = make_cifar(make_cifar(tmp_path), hundred=True)  # torchvision's root: both CIFAR folders side by side
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "-q",
                "eval",
                "-m",
                str(model_dir),
                "-d",
                "cifar10",
                "-d",
                "cifar100",
                "--root",
                str(root),
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert [r["dataset"] for r in json.loads(out.read_text())] == ["cifar10", "cifar100"]


def test_results_are_plain_json_numbers(tmp_path, model):
    result = evaluate(model, "docci", make_docci(tmp_path))
    assert all(isinstance(value, str | int | float | type(None)) for value in result.values())
    assert torch.isfinite(torch.tensor([result["image_retrieval_recall@1"]])).all()


def test_clip_benchmark_layout_one_file_per_dataset_and_task(tmp_path):
    retrieval = {
        "dataset": "urban1k", "task": "zeroshot_retrieval", "protocol": "Urban-1k", "model": "m.pt",
        "num_images": 3, "num_texts": 3, "num_skipped": 0,
        "text_retrieval_recall@1": 0.5, "image_retrieval_recall@1": 0.25,
    }  # fmt: skip
    classification = {
        "dataset": "cifar10", "task": "zeroshot_classification", "model": "m.pt", "num_classes": 10,
        "acc1": 0.75, "acc5": 1.0, "mean_per_class_recall": 0.7,
    }  # fmt: skip
    paths = write_clip_benchmark([retrieval, classification], tmp_path / "cb")
    assert [p.name for p in paths] == ["urban1k_zeroshot_retrieval.json", "cifar10_zeroshot_classification.json"]
    first, second = (json.loads(p.read_text()) for p in paths)
    assert set(first) == {"dataset", "model", "pretrained", "task", "metrics", "language"}
    assert first["dataset"] == "urban1k" and first["task"] == "zeroshot_retrieval" and first["model"] == "m.pt"
    assert first["metrics"] == {"image_retrieval_recall@1": 0.25, "text_retrieval_recall@1": 0.5}
    assert second["metrics"] == {"acc1": 0.75, "acc5": 1.0, "mean_per_class_recall": 0.7}
    with pytest.raises(ValueError, match="same data set and task"):
        write_clip_benchmark([retrieval, retrieval], tmp_path / "twice")
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        write_clip_benchmark([retrieval], tmp_path / "file")


def test_cli_eval_writes_clip_benchmark_files(tmp_path, model_dir, capsys):
    urban = make_urban1k(tmp_path / "urban")
    argv = ["eval", "--model", str(model_dir), "-d", f"urban1k={urban}", "-o", str(tmp_path / "r.json")]
    assert main([*argv, "--clip-benchmark", str(tmp_path / "cb")]) == 0
    ours = json.loads((tmp_path / "r.json").read_text())[0]
    theirs = json.loads((tmp_path / "cb" / "urban1k_zeroshot_retrieval.json").read_text())
    assert theirs["model"] == str(model_dir) and theirs["task"] == "zeroshot_retrieval"
    assert theirs["metrics"] == {key: ours[key] for key in ours if "recall@" in key}
    assert str(tmp_path / "cb" / "urban1k_zeroshot_retrieval.json") in capsys.readouterr().out
