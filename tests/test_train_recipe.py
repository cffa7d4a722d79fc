"""The training recipe's defaults against the original Long-CLIP's: held-out rows, short captions."""

import json

import pytest

from longclip.data import SHORT_CAPTION_RULES, first_sentence, original_short_caption, read_pairs
from longclip.train import TrainConfig
from longclip.train.config import holdout_rows


def _config(data, **settings):
    return TrainConfig(model="m", data=data, output="o", **settings)


def test_sharegpt4v_json_holds_out_its_first_1000_records_by_default():
    assert _config("share-captioner_coco_lcs_sam_1246k_1107.json").val_rows == "auto"
    assert holdout_rows(_config("share-captioner_coco_lcs_sam_1246k_1107.json")) == 1000
    assert holdout_rows(_config("pairs.csv")) == 0
    assert holdout_rows(_config("shards-{0..9}.tar")) == 0
    assert holdout_rows(_config("train.JSON", val_rows=0)) == 0
    assert holdout_rows(_config("pairs.csv", val_rows="12")) == 12
    with pytest.raises(ValueError, match="val_rows must be 'auto' or a number of rows, got 'some'"):
        _config("pairs.csv", val_rows="some")
    with pytest.raises(ValueError, match="val_rows must not be negative"):
        _config("pairs.csv", val_rows=-1)


def test_the_original_short_caption_rule_and_the_sentence_splitter():
    caption = "Mr. Smith walks a dog, e.g. a beagle. It is 3.5 m long! The end."
    # The original: text.split(". ")[0], everything before the first period-space, the period dropped.
    assert original_short_caption(caption) == "Mr"
    assert original_short_caption("A red car. Parked.") == "A red car"
    assert original_short_caption("Wow! A car. Red.") == "Wow! A car"
    assert original_short_caption("No period at all") == "No period at all"
    assert first_sentence(caption) == "Mr. Smith walks a dog, e.g. a beagle."
    assert SHORT_CAPTION_RULES == {"sentence": first_sentence, "original": original_short_caption}


def test_readers_use_the_chosen_short_caption_rule(tmp_path):
    records = [{"image": "a.jpg", "conversations": [{"from": "human", "value": "<image>"},
                                                     {"from": "gpt", "value": "Dr. Who stands. A box."}]}]  # fmt: skip
    (tmp_path / "data.json").write_text(json.dumps(records))
    table = "image,caption,short_caption\na.jpg,Dr. Who stands. A box.,\nb.jpg,x. y,given\n"
    (tmp_path / "data.csv").write_text(table)
    assert [p.short_caption for p in read_pairs(tmp_path / "data.json")] == ["Dr. Who stands."]
    assert [p.short_caption for p in read_pairs(tmp_path / "data.json", short_caption=original_short_caption)] == [
        "Dr"
    ]
    table = read_pairs(tmp_path / "data.csv", short_caption=original_short_caption)
    assert [p.short_caption for p in table] == ["Dr", "given"]  # a short caption the source gives is kept
    with pytest.raises(ValueError, match="short_caption must be 'sentence' or 'original'"):
        _config("pairs.csv", short_caption="first")


# --- whole runs: failures, resume, output folder ------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 flat-colour pictures with captions, and a 77-token CLIP."""
    import csv

    from conftest import tiny_clip
    from PIL import Image

    from longclip.models import LongCLIPModel

    root = tmp_path_factory.mktemp("pairs")
    rows = []
    for i in range(8):
        Image.new("RGB", (32, 32), (30 * i, 255 - 30 * i, (70 * i) % 256)).save(root / f"{i}.png")
        rows.append({"image": f"{i}.png", "caption": f"A picture number {i}. It is one flat colour, shade {i * 30}."})
    with open(root / "pairs.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    LongCLIPModel(tiny_clip(context=77)).save_pretrained(root / "clip77")
    return root


def _run(folder, output, **settings):
    from longclip.train import get_task, train

    defaults = dict(model=str(folder / "clip77"), data=str(folder / "pairs.csv"), output=str(output), batch_size=2,
                    epochs=1, lr=1e-4, warmup_steps=1, num_workers=0, log_every=1, save_every=1000, device="cpu",
                    progress=False)  # fmt: skip
    return train(TrainConfig(**{**defaults, **settings}), get_task("longclip").options_class(pca_components=2))


def test_out_of_range_settings_are_refused():
    for name in ("epochs", "save_every", "log_every"):
        for value in (0, -1):
            with pytest.raises(ValueError, match=f"{name} must be at least 1, got {value}"):
                _config("pairs.csv", **{name: value})
    with pytest.raises(ValueError, match="resume and overwrite contradict"):
        _config("pairs.csv", resume="auto", overwrite=True)


def test_too_many_bad_images_stop_the_run_at_once_and_are_listed(data, tmp_path):
    from longclip.train import TrainingError
    from longclip.train.distributed import DistributedContext
    from longclip.train.trainer import epoch_batches

    first = epoch_batches(8, 2, DistributedContext(), seed=0, epoch=0)[0]  # the rows of the first batch
    lines = (data / "pairs.csv").read_text().splitlines()
    bad_row = first[0] + 1  # after the header
    lines[bad_row] = "missing.png," + lines[bad_row].split(",", 1)[1]
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
    expected = r"1 of 8 images \(12.5%\) could not be read.*counting this epoch to its end"
    with pytest.raises(TrainingError, match=expected):
        _run(data, tmp_path / "run", data=str(tmp_path / "bad.csv"), image_root=str(data), epochs=3,
             max_bad_fraction=0.05)  # fmt: skip
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # stopped at step 1, before logging it
    assert (tmp_path / "run" / "bad_images.txt").read_text().split() == [str(data / "missing.png")]


def test_an_output_folder_holding_a_run_is_refused_or_cleared(data, tmp_path):
    _run(data, tmp_path / "run")
    with pytest.raises(ValueError, match=r"already holds a run \(config.json, metrics.jsonl, checkpoints, model\)"):
        _run(data, tmp_path / "run")
    (tmp_path / "run" / "mine.txt").write_text("not the run's")
    summary = _run(data, tmp_path / "run", overwrite=True, epochs=2)
    assert summary["step"] == 8 and (tmp_path / "run" / "mine.txt").is_file()


def test_a_failed_start_leaves_no_output(data, tmp_path):
    with pytest.raises(FileNotFoundError):
        _run(data, tmp_path / "run", data=str(tmp_path / "absent.csv"))
    assert not (tmp_path / "run").exists()


def test_a_start_that_fails_on_its_first_batch_leaves_no_half_made_run(data, tmp_path):
    from longclip.train import TrainingError

    # A wrong --image-root is only found when the first batch is read, after config.json was written.
    with pytest.raises(TrainingError, match="--image-root"):
        _run(data, tmp_path / "run", image_root=str(tmp_path / "nowhere"))
    assert not (tmp_path / "run").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's")
    with pytest.raises(TrainingError):
        _run(data, tmp_path / "mine", image_root=str(tmp_path / "nowhere"))
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]  # a folder it did not make is kept
    # The same folder then takes the corrected run, without --overwrite.
    assert _run(data, tmp_path / "run")["finished"]

    # A stop for unreadable images keeps bad_images.txt (the report of why), not config.json; the next start
    # replaces the report instead of calling the folder a run.
    from longclip.train.distributed import DistributedContext
    from longclip.train.trainer import epoch_batches

    first = epoch_batches(8, 2, DistributedContext(), seed=0, epoch=0)[0]  # the rows of the first batch
    lines = (data / "pairs.csv").read_text().splitlines()
    lines[first[0] + 1] = "missing.png," + lines[first[0] + 1].split(",", 1)[1]
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(TrainingError, match="could not be read"):
        _run(data, tmp_path / "again", data=str(tmp_path / "bad.csv"), image_root=str(data), max_bad_fraction=0.05)
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["bad_images.txt"]
    assert _run(data, tmp_path / "again")["finished"]
    assert not (tmp_path / "again" / "bad_images.txt").exists()


def test_a_training_checkpoint_folder_loads_with_load_info_and_eval(data, tmp_path, capsys):
    import shutil

    import longclip
    from longclip.cli import main

    _run(data, tmp_path / "run", epochs=1, save_every=2)
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000002"  # the folder itself, not its model/
    model, preprocess = longclip.load(checkpoint)
    assert model.context_length == 248 and callable(preprocess)
    assert main(["info", str(checkpoint)]) == 0
    assert "context 248 tokens" in capsys.readouterr().out
    urban = tmp_path / "urban"
    for folder in ("image", "caption"):
        (urban / folder).mkdir(parents=True)
    for i in range(3):
        shutil.copy(data / f"{i}.png", urban / "image" / f"{i}.jpg")  # PIL reads by content, not by suffix
        (urban / "caption" / f"{i}.txt").write_text(f"A picture number {i}.\n")
    argv = ["eval", "--model", str(checkpoint), "--dataset", f"urban1k={urban}", "--device", "cpu"]
    assert main([*argv, "--output", str(tmp_path / "results.json")]) == 0
    assert json.loads((tmp_path / "results.json").read_text())[0]["num_images"] == 3


def test_resume_falls_back_past_a_corrupt_checkpoint_and_logs_no_row_twice(data, tmp_path, caplog):
    from longclip.train.checkpointing import list_checkpoints

    _run(data, tmp_path / "run", epochs=2, save_every=2, stop_after_steps=5)
    found = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in found][-2:] == ["step-00000004", "step-00000005"]
    (found[-1] / "model.safetensors").write_bytes(b"corrupt")  # the newest is damaged
    (tmp_path / "run" / "checkpoints" / "step-00000009.tmp-12345").mkdir()  # a save killed midway, long ago
    with caplog.at_level("WARNING"):
        summary = _run(data, tmp_path / "run", epochs=2, save_every=2, resume="auto", lr=2e-4)
    assert summary["finished"] and summary["step"] == 8
    assert "step-00000005 cannot be read" in caplog.text
    assert "settings differ from this one's: lr 0.0001 -> 0.0002" in caplog.text
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # step 5 ran twice, is logged once
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp-*"))


def test_a_training_checkpoint_loads_with_longclip_load_and_files_are_ordinary(data, tmp_path, caplog):
    import os
    import stat

    import torch
    from safetensors.torch import load_file

    import longclip

    with caplog.at_level("WARNING"):
        _run(data, tmp_path / "run", epochs=2, save_every=3, warmup_steps=50)
    assert "the warm-up (50 steps) is not shorter than the run (8 steps)" in caplog.text
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000006"
    midway, _ = longclip.load(checkpoint / "model")
    assert midway.context_length == 248 and midway.keep_positions == 20
    state = load_file(checkpoint / "model.safetensors")
    table = midway.clip.text_model.embeddings.position_embedding.weight
    prefix = "clip.text_model.embeddings.position_embedding."
    torch.testing.assert_close(table, torch.cat([state[prefix + "frozen"], state[prefix + "trained"]]))

    umask = os.umask(0)
    os.umask(umask)
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_a_bad_webdataset_shard_is_skipped_and_counted(data, tmp_path):
    import io
    import tarfile

    pytest.importorskip("webdataset")
    rows = (data / "pairs.csv").read_text().splitlines()[1:]
    for shard in range(2):
        with tarfile.open(tmp_path / f"shard-{shard}.tar", "w") as tar:
            for i, row in enumerate(rows[shard * 4 : shard * 4 + 4]):
                image, caption = row.split(",", 1)
                for suffix, payload in (("png", (data / image).read_bytes()), ("txt", caption.encode())):
                    info = tarfile.TarInfo(f"{shard}{i:05d}.{suffix}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    (tmp_path / "shard-2.tar").write_bytes(b"this is not a tar file" * 40)
    summary = _run(data, tmp_path / "run", data=str(tmp_path / "shard-{0..2}.tar"), samples_per_epoch=8)
    assert summary["finished"] and summary["bad_shards"] >= 1 and summary["bad_images"] == 0


def test_quiet_silences_the_progress_bar_and_a_label_names_the_run(data, tmp_path, capsys):
    from longclip.cli import main
    from longclip.train import get_task, train

    args = ["-q", "train", "--model", str(data / "clip77"), "--data", str(data / "pairs.csv"), "--output",
            str(tmp_path / "quiet"), "--epochs", "1", "--batch-size", "4", "--num-workers", "0"]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "step/s" not in captured.err and "s/step" not in captured.err and "it/s" not in captured.err

    config = TrainConfig(model=str(data / "clip77"), data=str(data / "pairs.csv"), output=str(tmp_path / "loud"),
                         epochs=1, batch_size=4, num_workers=0, device="cpu", method="clip")  # fmt: skip
    train(config, get_task("clip").options_class(), description="fine-tuning variant X -> somewhere")
    assert "fine-tuning variant X -> somewhere" in capsys.readouterr().err


# --- the command line: errors, final status ------------------------------------------------------------------------


def _train_argv(tmp_path):
    return ["train", "--model", "m", "--data", "pairs.csv", "--output", str(tmp_path / "run")]


def test_a_training_error_ends_in_one_error_line(tmp_path, monkeypatch, capsys):
    import longclip.train
    from longclip.cli import main
    from longclip.train import TrainingError

    def failing(config, options=None):
        raise TrainingError("3 of 8 images (37.5%) could not be read\nsee bad_images.txt")

    monkeypatch.setattr(longclip.train, "train", failing)
    assert issubclass(TrainingError, RuntimeError)
    assert main(_train_argv(tmp_path)) == 1
    err = capsys.readouterr().err
    assert err.startswith("longclip: error: training stopped: 3 of 8 images (37.5%) could not be read")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(TrainingError):  # --debug shows the traceback instead
        main(["--debug", *_train_argv(tmp_path)])


def test_only_rank_0_prints_the_final_status_with_validation(tmp_path, monkeypatch, capsys):
    import longclip.train
    from longclip.cli import main

    summary = {"step": 3, "total_steps": 3, "finished": True, "model": "run/model",
               "validation": {"long/image_to_text_recall@1": 0.5}}  # fmt: skip
    monkeypatch.setattr(longclip.train, "train", lambda config, options=None: summary)
    monkeypatch.setenv("RANK", "1")
    assert main(_train_argv(tmp_path)) == 0
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    assert main(_train_argv(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "validation: long/image_to_text_recall@1 50.0%" in out and "trained 3 steps" in out
