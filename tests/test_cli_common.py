"""The CLI's shared pieces: one set of image suffixes, flag validation, the one-line error boundary."""

from __future__ import annotations

import argparse
import collections
import csv
import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from longclip.cli import build_parser, main
from longclip.cli.common import expand_images, library_progress, resolve_device, status
from longclip.errors import CheckpointError
from longclip.eval.datasets import load_dataset
from longclip.feature_files import load_features, save_features
from longclip.images import IMAGE_EXTENSIONS, ImageLoadError


def _image(path: Path) -> None:
    Image.fromarray(np.full((8, 8, 3), 120, dtype=np.uint8)).save(path)


def test_one_set_of_image_suffixes_for_embed_eval_and_shards(tmp_path):
    import longclip.cli.common
    import longclip.data.webdataset as shards
    import longclip.eval.datasets

    assert longclip.cli.common.IMAGE_EXTENSIONS is IMAGE_EXTENSIONS
    assert longclip.eval.datasets.IMAGE_EXTENSIONS is IMAGE_EXTENSIONS
    assert set(shards._IMAGE_KEYS) == {suffix[1:] for suffix in IMAGE_EXTENSIONS}
    # .gif was missing from eval's own set, .ppm from the CLI's: both are now images everywhere.
    for name in ("a.gif", "b.ppm", "c.jpg"):
        _image(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    assert [Path(p).name for p in expand_images([str(tmp_path)])] == ["a.gif", "b.ppm", "c.jpg"]
    for cls in ("cats", "dogs"):
        (tmp_path / "classes" / cls).mkdir(parents=True)
    _image(tmp_path / "classes" / "cats" / "x.gif")
    _image(tmp_path / "classes" / "dogs" / "y.ppm")
    dataset = load_dataset("folder", tmp_path / "classes")
    assert [Path(p).name for p in dataset.images] == ["x.gif", "y.ppm"]


# --- --device: one rule, checked when parsing ------------------------------------------------------------------------

DEVICE_COMMANDS = {
    "classify": ["classify", "x.jpg", "--model", "m", "--label", "a"],
    "embed": ["embed", "--texts", "a", "--model", "m", "-o", "o.npy"],
    "eval": ["eval", "--model", "m", "-d", "urban1k=x"],
    "train": ["train", "--model", "m", "--data", "d.csv", "--output", "out"],
    "reproduce": ["reproduce"],
    "index": ["index", "photos", "--model", "m", "--out", "i.index"],
    "generate": ["generate", "a cat", "--model", "sd", "--text-encoder", "te", "--out", "x.png"],
}


@pytest.mark.parametrize("command", sorted(DEVICE_COMMANDS))
def test_device_defaults_to_auto_in_every_command(command):
    argv = DEVICE_COMMANDS[command]
    assert build_parser().parse_args(argv).device == "auto"
    assert build_parser().parse_args([*argv, "--device", "CUDA:1"]).device == "cuda:1"


@pytest.mark.parametrize("command", sorted(DEVICE_COMMANDS))
def test_unknown_device_is_a_one_line_usage_error(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*DEVICE_COMMANDS[command], "--device", "banana"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "'banana'" in error and "auto, cpu, cuda, cuda:N" in error and "Traceback" not in error


def test_auto_device_is_cuda_only_when_available(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device(None) == "cpu" and resolve_device("cuda:1") == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("auto") == "cuda"
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("auto") == "cuda:3"  # each torchrun rank its own GPU


@pytest.mark.parametrize("flag", ["--save-every", "--log-every"])
def test_zero_steps_between_saves_or_logs_is_a_usage_error(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*DEVICE_COMMANDS["train"], flag, "0"])
    assert exit_info.value.code == 2
    assert "expected a positive integer, got '0'" in capsys.readouterr().err


# --- the error boundary ----------------------------------------------------------------------------------------------


def _json_error() -> Exception:
    try:
        json.loads("{oops")
    except json.JSONDecodeError as e:
        return e


def _pickle_error() -> Exception:
    import torch

    buffer = io.BytesIO()
    torch.save({"model": collections.OrderedDict(a=1), "odd": argparse.Namespace(x=1)}, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except pickle.UnpicklingError as e:
        return e
    raise AssertionError("weights-only load accepted a Namespace")


def _safetensors_error(tmp_path: Path) -> Exception:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    try:
        load_file(bad)
    except SafetensorError as e:
        return e
    raise AssertionError("safetensors read garbage")


def _tar_error(tmp_path: Path) -> Exception:
    bad = tmp_path / "shard.tar"
    bad.write_bytes(b"not a tar file" * 50)
    try:
        tarfile.open(bad)
    except tarfile.ReadError as e:
        return e
    raise AssertionError("tarfile read garbage")


def _training_error() -> Exception:
    from longclip.train.trainer import TrainingError

    return TrainingError("16 pairs do not fill one global batch of 32")


ERRORS = {
    "training": (lambda tmp: _training_error(), "training stopped: 16 pairs do not fill one global batch"),
    "checkpoint": (lambda tmp: CheckpointError("x.pt: not a CLIP checkpoint"), "x.pt: not a CLIP checkpoint"),
    "image": (lambda tmp: ImageLoadError("a.jpg", "truncated"), "a.jpg"),
    "safetensors": (_safetensors_error, "cannot read a safetensors file"),
    "pickle": (lambda tmp: _pickle_error(), "never runs code stored in a file"),
    "tar": (_tar_error, "cannot read a tar shard"),
    "csv": (lambda tmp: csv.Error("field larger than field limit (131072)"), "malformed CSV: field larger"),
    "recursion": (lambda tmp: RecursionError("maximum recursion depth exceeded"), "nested too deeply"),
    "memory": (lambda tmp: MemoryError(), "out of memory; try a smaller --batch-size"),
    "permission": (lambda tmp: PermissionError(13, "Permission denied", "/data/x.csv"), "permission denied: /data"),
    "missing": (lambda tmp: FileNotFoundError(2, "No such file or directory", "/data/y.csv"), "No such file or"),
    "json": (lambda tmp: _json_error(), "invalid JSON: Expecting property name"),
}


@pytest.mark.parametrize("kind", sorted(ERRORS))
def test_user_errors_end_in_one_line(kind, tmp_path, monkeypatch, capsys):
    import longclip.cli.info

    make, expected = ERRORS[kind]
    error = make(tmp_path)

    def fail(args):
        raise error

    monkeypatch.setattr(longclip.cli.info, "run", fail)
    assert main(["info", "x"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("longclip: error: ") and expected in err[0], err
    assert "weights_only" not in err[0]
    if kind == "permission":
        assert "No such file" not in err[0]
    with pytest.raises(type(error)):
        main(["--debug", "info", "x"])


def test_a_bug_is_not_dressed_as_a_user_error(monkeypatch):
    import longclip.cli.info

    def fail(args):
        raise KeyError("internal")

    monkeypatch.setattr(longclip.cli.info, "run", fail)
    with pytest.raises(KeyError):
        main(["info", "x"])


# --- status lines under torchrun -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("env", "printed"), [({}, True), ({"RANK": "0"}, True), ({"RANK": "1"}, False)])
def test_only_rank_zero_prints_the_status(env, printed, monkeypatch, capsys):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    status(argparse.Namespace(quiet=False), "wrote it")
    assert (capsys.readouterr().out == "wrote it\n") is printed


# --- embed output ----------------------------------------------------------------------------------------------------


def test_embed_into_an_existing_directory_is_refused(tmp_path, capsys):
    folder = tmp_path / "features"
    folder.mkdir()
    assert main(["embed", "--texts", "a", "--model", str(tmp_path / "none"), "-o", str(folder)]) == 1
    err = capsys.readouterr().err
    assert "is a directory" in err and str(folder / "feats.npy") in err
    assert not (tmp_path / "features.npy").exists()


def test_feature_files_round_trip_and_refuse_a_half_replaced_pair(tmp_path, monkeypatch):
    old, new = np.zeros((2, 3), np.float32), np.ones((4, 3), np.float32)
    path = tmp_path / "f.npy"
    save_features(path, old, {"items": ["a", "b"]})
    features, metadata = load_features(path)
    assert np.array_equal(features, old) and metadata["items"] == ["a", "b"] and metadata["shape"] == [2, 3]

    # Killed after the .npy was renamed into place and before the .json was.
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        save_features(path, new, {"items": ["a", "b", "c", "d"]})
    monkeypatch.undo()
    assert np.array_equal(np.load(path), new)  # new features beside the old description...
    with pytest.raises(ValueError, match="not the file .* describes"):
        load_features(path)  # ...which the loader refuses
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json", "f.npy"]  # no temporaries left
    save_features(path, new, {"items": ["a", "b", "c", "d"]})
    assert load_features(path)[1]["items"] == ["a", "b", "c", "d"]


# --- -q and the training summary -------------------------------------------------------------------------------------


def test_quiet_turns_the_library_bars_off_and_puts_them_back():
    from longclip.data import synthetic
    from longclip.models import base
    from longclip.train import trainer

    original = [module.tqdm for module in (trainer, synthetic, base)]
    with library_progress(False):
        for module in (trainer, synthetic, base):
            assert module.tqdm(total=3).disable and module.tqdm(total=3, disable=False).disable
    assert [module.tqdm for module in (trainer, synthetic, base)] == original
    with library_progress(True):
        assert trainer.tqdm is original[0]


def test_quiet_train_draws_no_bar(tmp_path, capsys):
    from conftest import tiny_clip

    from longclip import LongCLIPModel

    LongCLIPModel(tiny_clip()).save_pretrained(tmp_path / "model")
    _image(tmp_path / "a.png")
    (tmp_path / "pairs.csv").write_text("image,caption\n" + "a.png,a grey square\n" * 4)
    argv = ["train", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "pairs.csv"), "--batch-size", "2"]
    argv += ["--epochs", "1", "--device", "cpu", "--num-workers", "0", "--pca-components", "1"]
    assert main([*argv, "--output", str(tmp_path / "loud")]) == 0
    assert "2/2" in capsys.readouterr().err  # the bar, on stderr, when not quiet
    assert main(["-q", *argv, "--output", str(tmp_path / "quiet")]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "step" not in captured.err


def test_train_prints_validation_recall_at_one(tmp_path, monkeypatch, capsys):
    import longclip.train

    summary = {"step": 4, "total_steps": 4, "finished": True, "model": "out/model"}
    summary |= {"val/long_image_retrieval_recall@1": 0.25, "val/long_image_retrieval_recall@5": 0.5}
    seen = {}

    def fake_train(config, options):
        seen["device"] = config.device
        return summary

    monkeypatch.setattr(longclip.train, "train", fake_train)
    assert main(DEVICE_COMMANDS["train"]) == 0
    out = capsys.readouterr().out
    assert "trained 4 steps" in out and "validation: long_image_retrieval_recall@1 25.0%" in out
    assert "recall@5" not in out and seen["device"] is None  # auto: the trainer's CUDA-when-available rule
    assert main(["-q", *DEVICE_COMMANDS["train"]]) == 0
    assert capsys.readouterr().out == ""


def test_too_few_training_rows_is_a_one_line_error(tmp_path, capsys):
    from conftest import tiny_clip

    from longclip import LongCLIPModel

    LongCLIPModel(tiny_clip()).save_pretrained(tmp_path / "model")
    _image(tmp_path / "a.png")
    (tmp_path / "pairs.csv").write_text("image,caption\na.png,a grey square\na.png,a grey square again\n")
    argv = ["train", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "pairs.csv")]
    argv += ["--output", str(tmp_path / "run"), "--batch-size", "4", "--device", "cpu"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("longclip: error: training stopped: "), err
