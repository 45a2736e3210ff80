"""Audio conditions: labels of the bundled one-shots and text prompts made from them, end to end
through the CLI (train --condition label|text, sample --label snare / --prompt "a snare"), and
bad input as one error line with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from diffuse.core.errors import DataError
from diffuse.domains.audio.data import CLASS_PHRASES, audio_phrases, load_audio_folder, load_bundled
from diffuse.domains.audio.domain import AudioDomain

TINY = {"channels": [8, 16], "factors": [4], "num_res_blocks": 1, "dilations": [1], "attn_levels": [-1],
        "heads": 2}


def test_bundled_labels_and_captions_are_conditions():
    dom = AudioDomain()
    assert dom.condition_data_options(["label", "text"]) == {"labels": True, "text": True}
    with pytest.raises(ValueError, match="cannot condition on colour"):
        dom.condition_data_options(["colour"])
    ds = load_bundled({"text": True})
    info = ds.info()
    assert info["classes"] == ["cymbal", "kick", "snare", "tabla", "tom"] and info["text"] and not info["label_condition"]
    kinds = dom.bind(info).condition_kinds()
    assert list(kinds) == ["text"]                     # text only: no label embedding either
    assert dom.bind(info).build_backbone(TINY).label_emb is None
    g = torch.Generator().manual_seed(0)
    b = ds.batch(torch.arange(len(ds)), g)
    labels = torch.as_tensor([info["classes"].index(n.split("__")[0]) for n in ds.names])
    for lab, text in zip(labels.tolist(), b.cond.describe()["text"]):
        assert text in CLASS_PHRASES[info["classes"][lab]]
    assert torch.equal(b.cond["text"], ds.batch(torch.arange(len(ds)), torch.Generator().manual_seed(0)).cond["text"])
    both = load_bundled({"labels": True, "text": True})
    kinds = dom.bind(both.info()).condition_kinds()
    assert sorted(kinds) == ["label", "text"]
    assert kinds["label"].parse(["snare", "bass drum", "hihat", 3], 4).tolist() == [2, 1, 0, 3]
    assert both.batch(torch.arange(3)).cond["label"].tolist() == labels[:3].tolist()


def test_folder_classes_get_generic_captions_in_the_vocabulary(tmp_path: Path):
    for cls in ("hi_hat", "cowbell"):
        (tmp_path / cls).mkdir()
        sf.write(str(tmp_path / cls / "a.wav"), 0.5 * np.sin(np.arange(4000) / 5.0), 16000)
    ds = load_audio_folder(tmp_path, {"text": True, "clip_seconds": 0.2})
    kind = AudioDomain().bind(ds.info()).condition_kinds()["text"]
    assert audio_phrases(["hi_hat"])[0] == ["hi hat", "a hi hat", "a sound of a hi hat", "a hi hat sound"]
    assert kind.extra_words == ["cowbell"] and not kind.tokenizer.unknown("a cowbell sound")
    b = ds.batch(torch.arange(2), torch.Generator().manual_seed(0))
    assert b.cond.describe()["text"][0] in audio_phrases(["cowbell"])[0]      # files sort: cowbell first
    with pytest.raises(DataError, match="sub-folder"):
        load_audio_folder(tmp_path / "cowbell" / "a.wav", {"text": True})


@pytest.fixture(scope="module")
def audio_runs(tmp_path_factory):
    from click.testing import CliRunner

    from diffuse.cli.main import main

    root = tmp_path_factory.mktemp("audio_cond")
    cfg = root / "tiny.json"
    cfg.write_text(json.dumps({"model": {**TINY, "text_encoder": {"dim": 16, "layers": 1}},
                               "data_options": {"clip_seconds": 0.1},
                               "train": {"final_eval": False, "holdout_fraction": 0.0}}))
    runs = {}
    for name in ("label", "text"):
        runs[name] = root / name
        res = CliRunner().invoke(main, ["train", "--domain", "audio", "--config", str(cfg), "--steps", "2",
                                        "--batch-size", "4", "--no-progress", "--device", "cpu",
                                        "--condition", name, "--out", str(runs[name])])
        assert res.exit_code == 0, res.output
    return runs


@pytest.mark.parametrize("run, args, described", [
    ("label", ["--label", "snare", "--label", "kick", "--guidance-scale", "2"], ["snare", "kick"]),
    ("text", ["--prompt", "a snare", "--prompt", "an 808 bass drum hit", "--guidance-scale", "2"],
     ["a snare", "an 808 bass drum hit"]),
])
def test_audio_samples_by_label_and_by_prompt(audio_runs, tmp_path, run, args, described):
    from click.testing import CliRunner

    import diffuse.api as api
    from diffuse.cli.main import main

    out = tmp_path / "s"
    res = CliRunner().invoke(main, ["sample", "-c", str(audio_runs[run]), "--num", "2", "--steps", "2",
                                    "--out", str(out), *args])
    assert res.exit_code == 0, res.output
    assert (out / "sample_001.wav").is_file()
    model = api.load(audio_runs[run], device="cpu")
    cond = {"label": ["snare", "kick"]} if run == "label" else {"text": ["a snare", "an 808 bass drum hit"]}
    s = model.sample(2, steps=2, cond=cond)
    assert s.cond.describe()[run] == described and torch.isfinite(s.x).all()


@pytest.mark.parametrize("run, args, match", [
    ("label", ["--label", "cowbell"], "unknown label 'cowbell'"),
    ("label", ["--prompt", "a snare"], "does not understand the condition(s) text"),
    ("text", ["--label", "snare"], "does not understand the condition(s) label"),
    ("text", ["--prompt", "   "], "empty prompt"),
])
def test_bad_audio_condition_input_is_one_error_line_and_writes_nothing(audio_runs, tmp_path, run, args, match):
    from click.testing import CliRunner

    from diffuse.cli.main import main

    out = tmp_path / "never"
    res = CliRunner().invoke(main, ["sample", "-c", str(audio_runs[run]), "--num", "2", "--steps", "2",
                                    "--out", str(out), *args])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], res.output
    assert not out.exists()
