"""Every user mistake: one line ``error: ...`` on stderr, exit code 2, no traceback, and no new
file anywhere (the tmp dir, the run folder) compared with before the command (issue 14).

One table row per mistake; the run folders are trained once per module (a tiny points2d model
and a tiny molecule model)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from diffuse.cli.main import main

from toy import points_domain

FAST = ["--batch-size", "64", "--device", "cpu", "--no-progress", "--eval-samples", "8"]


@pytest.fixture(scope="module", autouse=True)
def _register():
    points_domain()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    res = CliRunner().invoke(main, ["train", "--domain", "points2d", "--steps", "10", "--out", str(root / "pts"),
                                    *FAST])
    assert res.exit_code == 0, res.output
    (root / "tiny.json").write_text('{"model": {"preset": "tiny"}}')
    res = CliRunner().invoke(main, ["train", "--domain", "molecules", "--config", str(root / "tiny.json"),
                                    "--steps", "2", "--batch-size", "8", "--eval-samples", "0", "--no-progress",
                                    "--device", "cpu", "--out", str(root / "mol")])
    assert res.exit_code == 0, res.output
    return root


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _config(tmp: Path, data) -> str:
    path = tmp / "config.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


TRAIN = ["train", "--domain", "points2d", "--out", "{tmp}/newrun", "--no-progress"]
SAMPLE = ["sample", "-c", "{pts}", "--num", "2", "--steps", "3"]
EVAL = ["evaluate", "-c", "{pts}", "--num", "4", "--steps", "3"]
MOL = ["sample", "-c", "{mol}", "--num", "2", "--steps", "3", "--out", "{tmp}/molout"]

# (id, arguments, text the line must contain, optional setup(tmp) -> extra arguments)
CASES = [
    # 1. sampler options: -o eta and --eta, types and ranges from the signature
    ("eta-twice", SAMPLE + ["-o", "eta=0.5", "--eta", "0.2"], "given twice", None),
    ("option-twice", SAMPLE + ["-o", "eta=0.1", "-o", "eta=0.2"], "given twice", None),
    ("eta-range", SAMPLE + ["-o", "eta=1.5"], "eta must be in [0, 1]", None),
    ("eta-not-ddim", SAMPLE + ["--sampler", "pc", "--eta", "0.5"], "has no option 'eta'", None),
    ("clip-abc", SAMPLE + ["-o", "clip_x0=abc"], "clip_x0 must be a finite number", None),
    ("clip-negative", SAMPLE + ["-o", "clip_x0=-1"], "clip_x0 must be > 0", None),
    ("churn-abc", SAMPLE + ["--sampler", "edm_heun", "-o", "s_churn=abc"], "s_churn must be a finite number", None),
    ("churn-negative", SAMPLE + ["--sampler", "edm_heun", "-o", "s_churn=-1"], "s_churn must be >= 0", None),
    ("churn-bool", SAMPLE + ["--sampler", "edm_heun", "-o", "s_churn=true"], "s_churn must be a finite number", None),
    ("tmin-above-tmax", SAMPLE + ["--sampler", "edm_heun", "-o", "s_tmin=5", "-o", "s_tmax=1"], "must not exceed", None),
    ("snr-abc", SAMPLE + ["--sampler", "pc", "-o", "snr=abc"], "snr must be a finite number", None),
    ("corrector-float", SAMPLE + ["--sampler", "pc", "-o", "corrector_steps=1.5"], "must be an integer", None),
    ("predictor", SAMPLE + ["--sampler", "pc", "-o", "predictor=magic"], "predictor must be one of", None),
    ("rtol-negative", SAMPLE + ["--sampler", "rk45", "-o", "rtol=-1"], "rtol must be > 0", None),
    ("atol-zero", SAMPLE + ["--sampler", "rk45", "-o", "atol=0"], "atol must be > 0", None),
    ("rtol-nan", SAMPLE + ["--sampler", "rk45", "-o", "rtol=nan"], "rtol must be a finite number", None),
    ("method", SAMPLE + ["--sampler", "rk45", "-o", "method=magic"], "method must be one of", None),
    ("variance", SAMPLE + ["--sampler", "ddpm", "-o", "variance=big"], "variance must be one of", None),
    ("option-no-equals", SAMPLE + ["-o", "eta"], "expects KEY=VALUE", None),
    ("option-unknown", SAMPLE + ["-o", "nope=1"], "has no option 'nope'", None),
    # 2. devices
    ("device-train", TRAIN + ["--device", "nonsense"], "valid devices here: auto, cpu", None),
    ("device-sample", SAMPLE + ["--device", "nonsense"], "valid devices here: auto, cpu", None),
    ("device-evaluate", EVAL + ["--device", "nonsense"], "valid devices here: auto, cpu", None),
    ("device-index", SAMPLE + ["--device", "cuda:99"], "valid devices here", None),
    # 3. learning rates
    ("lr-inf", TRAIN + ["--lr", "inf"], "finite positive", None),
    ("lr-nan", TRAIN + ["--lr", "nan"], "finite positive", None),
    ("lr-negative", TRAIN + ["--lr", "-1"], "finite positive", None),
    # 4. config files: types and ranges of every section, before any folder exists
    ("cfg-lr-string", TRAIN, "train.lr must be a finite number", lambda t: ["--config", _config(t, {"train": {"lr": "0.001"}})]),
    ("cfg-lr-inf", TRAIN, "train.lr must be a finite number", lambda t: ["--config", _config(t, '{"train": {"lr": Infinity}}')]),
    ("cfg-steps-bool", TRAIN, "train.steps must be an integer", lambda t: ["--config", _config(t, {"train": {"steps": True}})]),
    ("cfg-steps-negative", TRAIN, "train.steps must be a positive integer", lambda t: ["--config", _config(t, {"train": {"steps": -5}})]),
    ("cfg-grad-accum", TRAIN, "train.grad_accum must be a positive integer", lambda t: ["--config", _config(t, {"train": {"grad_accum": 0}})]),
    ("cfg-holdout", TRAIN, "train.holdout_fraction must be in [0, 1)", lambda t: ["--config", _config(t, {"train": {"holdout_fraction": 1.5}})]),
    ("cfg-precision", TRAIN, "train.precision must be one of auto, fp32, bf16", lambda t: ["--config", _config(t, {"train": {"precision": "fp8"}})]),
    ("cfg-eval-sampler", TRAIN, "train.eval_sampler must be one of", lambda t: ["--config", _config(t, {"train": {"eval_sampler": "magic"}})]),
    ("cfg-eval-steps", TRAIN, "train.eval_steps must be a positive integer", lambda t: ["--config", _config(t, {"train": {"eval_steps": 0}})]),
    ("cfg-eval-steps-T", TRAIN, "only T=1000 steps", lambda t: ["--config", _config(t, {"train": {"eval_steps": 5000}})]),
    ("cfg-warmup", TRAIN, "train.warmup_steps must be >= 0", lambda t: ["--config", _config(t, {"train": {"warmup_steps": -1}})]),
    ("cfg-ema-decay", TRAIN, "train.ema_decay must be in [0, 1)", lambda t: ["--config", _config(t, {"train": {"ema_decay": 1}})]),
    ("cfg-final-eval-int", TRAIN, "train.final_eval must be true or false", lambda t: ["--config", _config(t, {"train": {"final_eval": 1}})]),
    ("cfg-device", TRAIN, "unknown device 'gpu'", lambda t: ["--config", _config(t, {"train": {"device": "gpu"}})]),
    ("cfg-unknown-train", TRAIN, "unknown train option(s): lrate", lambda t: ["--config", _config(t, {"train": {"lrate": 1}})]),
    ("cfg-weighting", TRAIN, "diffusion.weighting must be one of", lambda t: ["--config", _config(t, {"diffusion": {"weighting": "magic"}})]),
    ("cfg-parameterization", TRAIN, "diffusion.parameterization must be one of", lambda t: ["--config", _config(t, {"diffusion": {"parameterization": "z"}})]),
    ("cfg-training", TRAIN, "diffusion.training must be one of", lambda t: ["--config", _config(t, {"diffusion": {"training": "magic"}})]),
    ("cfg-gamma", TRAIN, "diffusion.min_snr_gamma must be > 0", lambda t: ["--config", _config(t, {"diffusion": {"min_snr_gamma": 0}})]),
    ("cfg-schedule-steps", TRAIN, "diffusion.schedule.num_steps must be a positive integer", lambda t: ["--config", _config(t, {"diffusion": {"schedule": {"kind": "linear", "num_steps": -5}}})]),
    ("cfg-schedule-type", TRAIN, "diffusion.schedule.beta_end must be a finite number", lambda t: ["--config", _config(t, {"diffusion": {"schedule": {"kind": "linear", "beta_end": "x"}}})]),
    ("cfg-schedule-key", TRAIN, "unknown diffusion.schedule option(s): foo", lambda t: ["--config", _config(t, {"diffusion": {"schedule": {"kind": "cosine", "foo": 1}}})]),
    ("cfg-schedule-kind", TRAIN, "diffusion.schedule.kind must be one of", lambda t: ["--config", _config(t, {"diffusion": {"schedule": {"kind": "magic"}}})]),
    ("cfg-schedule-betas", TRAIN, "beta_start <= beta_end", lambda t: ["--config", _config(t, {"diffusion": {"schedule": {"kind": "linear", "beta_start": 0.5, "beta_end": 0.1}}})]),
    ("cfg-section-list", TRAIN, "section 'train' must be a JSON object", lambda t: ["--config", _config(t, {"train": [1]})]),
    ("cfg-not-object", TRAIN, "must hold a JSON object", lambda t: ["--config", _config(t, [1, 2])]),
    ("cfg-not-json", TRAIN, "is not valid JSON", lambda t: ["--config", _config(t, "{oops")]),
    ("cfg-folder", TRAIN, "is a folder", lambda t: ["--config", str(t)]),
    ("cfg-missing", TRAIN + ["--config", "{tmp}/nope.json"], "does not exist", None),
    ("cfg-image-model", ["train", "--domain", "image", "--out", "{tmp}/newrun"], "model.base_channels must be an integer",
     lambda t: ["--config", _config(t, {"model": {"base_channels": "eight"}})]),
    ("cfg-image-dropout", ["train", "--domain", "image", "--out", "{tmp}/newrun"], "model.dropout must be in [0, 1)",
     lambda t: ["--config", _config(t, {"model": {"dropout": 1.5}})]),
    ("cfg-audio-model", ["train", "--domain", "audio", "--out", "{tmp}/newrun"], "model.heads must be an integer",
     lambda t: ["--config", _config(t, {"model": {"heads": 2.5}})]),
    ("cfg-molecule-model", ["train", "--domain", "molecules", "--out", "{tmp}/newrun"], "model.hidden must be an integer",
     lambda t: ["--config", _config(t, {"model": {"hidden": "eight"}})]),
    # 5. conditions: the CLI refuses non-integers; molecules bound the atom counts and the memory
    ("cond-string", SAMPLE + ["--condition", '"abc"'], "--condition must be a whole number", None),
    ("cond-object", SAMPLE + ["--condition", '{"a": 1}'], "--condition must be a whole number", None),
    ("cond-null", SAMPLE + ["--condition", "[5, null]"], "values must be whole numbers", None),
    ("cond-bool", SAMPLE + ["--condition", "true"], "--condition must be a whole number", None),
    ("cond-fraction", SAMPLE + ["--condition", "1.5"], "--condition must be a whole number", None),
    ("cond-list-fraction", SAMPLE + ["--condition", "[1, 2.5]"], "values must be whole numbers", None),
    ("cond-nested", SAMPLE + ["--condition", "[[1], [2]]"], "values must be whole numbers", None),
    ("cond-not-json", SAMPLE + ["--condition", "{oops"], "must be JSON", None),
    ("mol-float-1e9", MOL + ["--condition", "1e9"], "--condition must be a whole number", None),
    ("mol-huge", MOL + ["--condition", "1000000000"], "at most", None),
    ("mol-zero", MOL + ["--condition", "0"], "at least 1", None),
    ("mol-negative", MOL + ["--condition", "[3, -2]"], "at least 1", None),
    ("mol-memory", ["sample", "-c", "{mol}", "--num", "3000000", "--batch-size", "3000000", "--condition", "{maxatoms}",
                    "--out", "{tmp}/molout"], "GiB", None),
    # 6. evaluate --out checked before sampling
    ("eval-out-folder", EVAL + ["--out", "{tmp}"], "is a folder", None),
    ("eval-out-missing-parent", EVAL + ["--out", "{tmp}/nope/m.json"], "does not exist", None),
    ("eval-out-under-file", EVAL, "is not a folder", lambda t: ["--out", str(_file(t) / "m.json")]),
    ("eval-out-empty", EVAL + ["--out", ""], "'--out': is an empty string", None),
    ("eval-data-empty", EVAL + ["--data", ""], "'--data': is an empty string", None),
    ("eval-data-missing", EVAL + ["--data", "{tmp}/nope.csv"], "does not exist", None),
    # 7. click's usage errors
    ("steps-negative", SAMPLE + ["--steps", "-1"], "Invalid value for '--steps'", None),
    ("batch-zero", SAMPLE + ["--batch-size", "0"], "Invalid value for '--batch-size'", None),
    ("num-zero", SAMPLE + ["--num", "0"], "Invalid value for '--num'", None),
    ("num-abc", SAMPLE + ["--num", "abc"], "'abc' is not a valid integer", None),
    ("unknown-option", SAMPLE + ["--bogus"], "No such option", None),
    ("missing-checkpoint", ["sample", "--num", "2"], "Missing option '--checkpoint'", None),
    ("spacing", SAMPLE + ["--spacing", "magic"], "Invalid value for '--spacing'", None),
    ("train-steps-zero", TRAIN + ["--steps", "0"], "Invalid value for '--steps'", None),
    ("train-seed-abc", TRAIN + ["--seed", "abc"], "is not a valid integer", None),
    ("train-seed-negative", TRAIN + ["--seed", "-1"], "train.seed must be in", None),
    ("train-sample-every", TRAIN + ["--sample-every", "-1"], "Invalid value for '--sample-every'", None),
    ("train-eval-samples", TRAIN + ["--eval-samples", "-1"], "Invalid value for '--eval-samples'", None),
    ("likelihood-num", EVAL + ["--likelihood-num", "0"], "Invalid value for '--likelihood-num'", None),
    ("no-such-command", ["smaple"], "No such command", None),
    ("sample-seed-negative", SAMPLE + ["--seed", "-1"], "seed must be an integer in", None),
    # 8. sample --out never mixes new samples with old ones
    ("sample-out-nonempty", SAMPLE + ["--out", "{pts}"], "is not empty", None),
    ("sample-out-file", SAMPLE, "is a file", lambda t: ["--out", str(_file(t))]),
    ("sample-out-under-file", SAMPLE, "is a file, not a folder", lambda t: ["--out", str(_file(t) / "sub")]),
    # and more mistakes found by going through every option
    ("train-resume-out", ["train", "--resume", "{pts}", "--out", "{tmp}/x"], "cannot be combined with --resume", None),
    ("train-out-file", TRAIN[:3] + ["--no-progress"], "is a file", lambda t: ["--out", str(_file(t))]),
    ("train-data-empty", TRAIN + ["--data", ""], "'--data': is an empty string", None),
    ("sample-checkpoint-empty", ["sample", "-c", ""], "'--checkpoint' / '-c': is an empty string", None),
    ("train-domain-missing", ["train", "--steps", "3"], "--domain is required", None),
    ("train-unknown-domain", ["train", "--domain", "nope"], "unknown domain 'nope'", None),
    ("sample-missing-checkpoint", ["sample", "-c", "{tmp}/nowhere"], "does not exist", None),
    ("sample-unknown-sampler", SAMPLE + ["--sampler", "magic"], "unknown sampler 'magic'", None),
    ("sample-too-many-steps", SAMPLE + ["--sampler", "ddpm", "--steps", "5000"], "T=1000", None),
    ("sample-wrong-domain", SAMPLE + ["--domain", "image"], "not 'image'", None),
]


def _fill(arg: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        arg = arg.replace("{" + key + "}", value)
    return arg


def _file(tmp: Path) -> Path:
    f = tmp / "afile"
    f.write_text("x")
    return f


@pytest.mark.parametrize("args, match, setup", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_user_mistake_is_one_line_exit_2_and_creates_nothing(runs, tmp_path, monkeypatch, args, match, setup):
    monkeypatch.chdir(tmp_path)             # a default run folder (runs/DOMAIN) would land here
    max_atoms = max(h[0] for h in json.loads((runs / "mol" / "config.json").read_text())["data_info"]["num_atoms_hist"])
    fill = {"tmp": str(tmp_path), "pts": str(runs / "pts"), "mol": str(runs / "mol"), "maxatoms": str(2 * max_atoms)}
    argv = [_fill(a, fill) for a in args] + (setup(tmp_path) if setup else [])
    before_tmp, before_runs = _tree(tmp_path), _tree(runs)
    res = CliRunner().invoke(main, argv)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2, (argv, res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert res.stderr.strip() == lines[0]                     # on stderr, nothing on stdout
    assert match in lines[0], lines[0]
    assert _tree(tmp_path) == before_tmp and _tree(runs) == before_runs


def test_option_eta_is_the_same_as_eta_flag(runs, tmp_path):
    """The README's `-o eta=0.5` works and gives exactly the samples of `--eta 0.5`."""
    for name, extra in (("flag", ["--eta", "0.5"]), ("option", ["-o", "eta=0.5"]), ("none", [])):
        res = CliRunner().invoke(main, ["sample", "-c", str(runs / "pts"), "--num", "6", "--steps", "4", "--seed", "3",
                                        "--out", str(tmp_path / name), *extra])
        assert res.exit_code == 0, res.output
    flag, option, none = ((tmp_path / n / "points.csv").read_text() for n in ("flag", "option", "none"))
    assert flag == option and flag != none


def test_default_sample_folder_is_never_reused(runs, tmp_path):
    """`sample` without --out: samples/sample, then samples/sample-2, ... named in the output;
    an empty folder is reused."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs / "pts", run)
    seen = []
    for _ in range(3):
        res = CliRunner().invoke(main, ["sample", "-c", str(run), "--num", "3", "--steps", "3"])
        assert res.exit_code == 0, res.output
        seen.append(res.output.split(" to ")[-1].strip())
    base = run / "samples"
    assert seen == [str(base / "sample"), str(base / "sample-2"), str(base / "sample-3")]
    assert all(len((Path(s) / "points.csv").read_text().splitlines()) == 3 for s in seen)
    shutil.rmtree(base / "sample-2")
    (base / "sample-2").mkdir()
    res = CliRunner().invoke(main, ["sample", "-c", str(run), "--num", "3", "--steps", "3"])
    assert res.exit_code == 0 and res.output.strip().endswith(str(base / "sample-2")), res.output


def test_write_text_leaves_no_temporary_file(tmp_path):
    """A failed atomic write (the target is a folder) raises and leaves nothing behind."""
    from diffuse.api import write_text

    (tmp_path / "m.json").mkdir()
    with pytest.raises(OSError):
        write_text(tmp_path / "m.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]
    write_text(tmp_path / "ok.json", "{}")
    assert (tmp_path / "ok.json").read_text() == "{}" and sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "ok.json"]


def test_help_and_usage_still_work():
    res = CliRunner().invoke(main, ["sample", "--help"])
    assert res.exit_code == 0 and "Usage:" in res.output and "--checkpoint" in res.output
    res = CliRunner().invoke(main, [])
    assert "Usage:" in res.output and "Commands:" in res.output


def test_molecule_structure_check_bounds_and_memory():
    """Domain.check_structure for molecules: integer counts, the 2x-largest bound, and a memory
    estimate of n^2 pairs per molecule x batch against the machine's available memory."""
    from diffuse.domains.molecules.domain import BYTES_PER_PAIR, MoleculeDomain, available_memory

    dom = MoleculeDomain().bind({"num_atoms_hist": [[5, 2], [9, 3]], "max_atoms": 9})
    dom.check_structure(None)
    dom.check_structure(torch.tensor([1, 18, 9]), batch_size=2)
    dom.check_structure(torch.tensor([4.0, 5.0]))
    for bad, match in ((torch.tensor([19]), "at most 18"), (torch.tensor([True]), "integers"),
                       (torch.tensor([1.5]), "whole numbers"), ([0], "at least 1"), (2.5, "whole numbers"),
                       ({"num_atoms": [3, 40]}, "at most 18")):
        with pytest.raises(ValueError, match=match):
            dom.check_structure(bad)
    avail = available_memory()
    assert avail is not None and avail > 0
    big = MoleculeDomain().bind({"num_atoms_hist": [[10 ** 6, 1]], "max_atoms": 10 ** 6})
    n = int((avail / BYTES_PER_PAIR) ** 0.5) + 1           # one molecule whose pairs alone exceed memory
    assert n <= 2 * 10 ** 6
    with pytest.raises(ValueError, match="GiB"):
        big.check_structure(torch.tensor([n]), batch_size=1)
    big.check_structure(torch.tensor([1000]), batch_size=1)   # 1e6 pairs: fits anywhere


def test_a_run_written_in_a_newer_config_format_is_refused(runs, tmp_path):
    """A run folder whose config.json has a newer ``version`` than this code reads (a later diffuse
    may give a saved option a meaning this one does not know) is one error line, exit 2, for every
    command that reads it, and a CheckpointError from the API; a bad version is refused as corrupt."""
    import shutil

    from diffuse.api import CheckpointError, load
    from diffuse.core.config import CONFIG_VERSION

    run = tmp_path / "newer"
    shutil.copytree(runs / "pts", run)
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["version"] == CONFIG_VERSION
    load(run)                                                   # the copy itself loads
    cfg["version"] = CONFIG_VERSION + 1
    (run / "config.json").write_text(json.dumps(cfg))
    before = _tree(tmp_path)
    for argv in (["sample", "-c", str(run), "--num", "2", "--steps", "3"],
                 ["evaluate", "-c", str(run), "--num", "4", "--steps", "3"],
                 ["train", "--resume", str(run), "--steps", "20", "--no-progress"]):
        res = CliRunner().invoke(main, argv)
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert res.exit_code == 2 and len(lines) == 1, (argv, res.output)
        assert lines[0].startswith("error: ") and "written by a newer diffuse" in lines[0], lines[0]
        assert f"config version {CONFIG_VERSION + 1}" in lines[0]
    assert _tree(tmp_path) == before
    with pytest.raises(CheckpointError, match="newer diffuse"):
        load(run)
    for bad in (0, "2", True):
        cfg["version"] = bad
        (run / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(CheckpointError, match="version must be a positive integer"):
            load(run)
