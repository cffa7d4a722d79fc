"""`longclip reproduce --quick`: the whole offline pipeline, end to end."""

import contextlib
import io
import json

import pytest

import longclip
from longclip.cli import main
from longclip.reproduce import SCALES, VARIANTS, available_llm2clip_variants, prepare_data, pretrain

METRICS = ("long_text_to_image_r1", "long_image_to_text_r1", "short_image_to_summary_r1", "dominant_colour_acc")


@pytest.fixture(scope="module")
def quiet_run(tmp_path_factory):
    """``longclip -q reproduce --quick``, with what it wrote to stdout and stderr."""
    output = tmp_path_factory.mktemp("reproduce")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):  # tqdm writes to sys.stderr of the moment
        assert main(["-q", "reproduce", "--quick", "--output", str(output)]) == 0
    return output, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def run(quiet_run):
    return quiet_run[0]


def test_quiet_draws_no_progress_bar(quiet_run):
    _, out, err = quiet_run
    for bar in ("it/s", "s/it", "step/s", "s/step", "%|"):
        assert bar not in err and bar not in out, (bar, err[-500:])


def test_results_cover_every_variant(run):
    results = json.loads((run / "results.json").read_text())
    names = [name for name, _, _ in VARIANTS] + [name for name, _, _ in available_llm2clip_variants(quick=True)]
    assert [row["model"] for row in results["results"]] == names
    for row in results["results"]:
        assert all(0.0 <= row[key] <= 1.0 for key in METRICS)
    scenes = SCALES["quick"].test_groups * SCALES["quick"].group_size
    assert results["test_scenes"] == scenes
    curve = results["effective_length"]["KPS + PCM (Long-CLIP)"]
    assert [p["k"] for p in curve] == list(SCALES["quick"].probe_lengths)
    table = (run / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == len(names) + 1 and f"{scenes} test scenes" in table  # header + one row per model
    for name in names:
        assert (run / f"effective_length_{name}.png").stat().st_size > 10_000


def test_saved_models_load_with_their_contexts(run):
    clip77, _ = longclip.load(run / "clip77")
    assert clip77.context_length == 77
    tuned, _ = longclip.load(run / "longclip" / "model")
    assert tuned.context_length == 248 and tuned.config.keep_positions == 20
    linear, _ = longclip.load(run / "linear" / "model")
    assert linear.config.keep_positions == 0


def test_a_second_run_reuses_the_data_and_the_pretrained_clip(run):
    weights = run / "clip77" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    data = prepare_data(run / "data", SCALES["quick"], seed=0)
    assert pretrain(run / "clip77", data, SCALES["quick"], seed=0, device="cpu") == run / "clip77"
    assert weights.stat().st_mtime_ns == before


def test_each_training_bar_names_the_variant_and_where_it_writes(tmp_path, monkeypatch):
    """``reproduce`` labels every training it starts (visible without -q): the method, the variant, the folder."""
    import longclip.train
    from longclip.reproduce import finetune

    labels = []

    def fake_train(config, options=None, description=None):
        labels.append((description, config.output))
        return {"model": str(tmp_path / "trained")}

    monkeypatch.setattr(longclip.train, "train", fake_train)
    data = {"finetune": tmp_path / "finetune.csv"}
    for name, description, stages in VARIANTS:
        if stages is not None:
            finetune(tmp_path / "clip77", tmp_path / name, data, SCALES["quick"], 0, "cpu", stages, False, description)
    assert len(labels) == sum(len(stages) for _, _, stages in VARIANTS if stages)
    for label, output in labels:
        assert label.endswith(f"-> {output}"), label
    distill = tmp_path / "tulip" / "tulip-distill"  # a variant of two stages writes each to its own folder
    assert labels[-2][0] == f"tulip-distill rotary distill + fine-tune (TULIP) -> {distill}"
    assert labels[-1][0].startswith("tulip-finetune rotary distill + fine-tune (TULIP) -> ")
    assert any(label.startswith("longclip KPS + PCM (Long-CLIP) -> ") for label, _ in labels)
