"""The click CLI: happy paths on the toy domain, and one clear line + exit 2 for bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from diffuse.cli.main import main

from toy import EXAMPLES, points_domain

FAST = ["--batch-size", "64", "--device", "cpu", "--no-progress", "--eval-samples", "32"]


@pytest.fixture(scope="module", autouse=True)
def _register():
    points_domain()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    res = CliRunner().invoke(main, ["train", "--domain", "points2d", "--steps", "20", "--out", str(out), *FAST])
    assert res.exit_code == 0, res.output
    return out


def _fails(args, match, tmp_path=None):
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, (res.exit_code, res.output)
    lines = [l for l in res.output.strip().splitlines() if l.strip()]
    assert "Traceback" not in res.output
    assert match in res.output, res.output
    return lines


def test_help_for_every_command():
    for cmd in ([], ["train"], ["sample"], ["evaluate"], ["domains"]):
        res = CliRunner().invoke(main, [*cmd, "--help"])
        assert res.exit_code == 0 and "Usage:" in res.output


def test_train_sample_evaluate(run_dir, tmp_path):
    assert (run_dir / "config.json").is_file() and (run_dir / "checkpoint" / "ema.safetensors").is_file()
    out = tmp_path / "samples"
    res = CliRunner().invoke(main, ["sample", "-c", str(run_dir), "--num", "8", "--steps", "10", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert len((out / "points.csv").read_text().splitlines()) == 8
    res = CliRunner().invoke(main, ["evaluate", "-c", str(run_dir), "--num", "32", "--steps", "10", "--baseline",
                                    "--out", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    assert "energy_distance" in res.output and "untrained" in res.output
    import json
    record = json.loads((tmp_path / "m.json").read_text())
    assert set(record["metrics"]) == set(record["untrained"]) == {"energy_distance"}


def test_resume_continues(run_dir, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    # a finished cosine run cannot be extended (its schedule depends on the total): one clear line
    _fails(["train", "--resume", str(copy), "--steps", "25", "--no-progress"], "cosine learning-rate schedule")
    _fails(["train", "--resume", str(copy), "--no-progress"], "already finished (20 of 20 steps)")
    cfg = tmp_path / "constant.json"
    cfg.write_text(json.dumps({"train": {"lr_schedule": "constant"}}))
    res = CliRunner().invoke(main, ["train", "--domain", "points2d", "--steps", "10", "--out", str(tmp_path / "c"),
                                    "--config", str(cfg), *FAST])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "c"), "--steps", "15", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "trained 15 steps" in res.output


def test_bad_inputs_exit_2_with_one_line(run_dir, tmp_path):
    _fails(["train", "--domain", "points2d", "--data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "r1")],
           "does not exist")
    assert not (tmp_path / "r1").exists()
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _fails(["train", "--domain", "points2d", "--data", str(empty), "--out", str(tmp_path / "r2")], "holds no points")
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2\n3,oops\n")
    _fails(["train", "--domain", "points2d", "--data", str(bad), "--out", str(tmp_path / "r3")], "line 2")
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()
    _fails(["train", "--domain", "nope"], "unknown domain 'nope'")
    _fails(["train", "--domain", "points2d", "--steps", "0"], "must be positive")
    _fails(["train", "--domain", "points2d", "--steps", "-3"], "must be positive")
    _fails(["sample", "-c", str(run_dir), "--steps", "0"], "must be positive")
    _fails(["sample", "-c", str(run_dir), "--sampler", "magic"], "unknown sampler 'magic'")
    _fails(["sample", "-c", str(tmp_path / "nowhere")], "does not exist")
    _fails(["sample", "-c", str(run_dir), "--domain", "image"], "is a checkpoint of domain 'points2d', not 'image'")
    _fails(["train", "--domain", "image", "--resume", str(run_dir)], "it is a run of domain 'points2d', not 'image'")
    _fails(["sample", "-c", str(run_dir), "--eta", "2"], "eta must be in [0, 1]")
    _fails(["sample", "-c", str(run_dir), "--steps", "5000", "--sampler", "ddpm"], "T=1000")
    _fails(["train", "--domain", "points2d", "--out", str(run_dir)], "already holds a run")


def test_corrupt_checkpoints(run_dir, tmp_path):
    import shutil
    for name, damage in [("model.safetensors", lambda b: b[: len(b) // 2]), ("ema.safetensors", lambda b: b"x" * 64)]:
        copy = tmp_path / name
        shutil.copytree(run_dir, copy)
        f = copy / "checkpoint" / name
        f.write_bytes(damage(f.read_bytes()))
        out = tmp_path / f"out-{name}"
        _fails(["sample", "-c", str(copy), "--raw-weights" if name.startswith("model") else "--num", *([] if name.startswith("model") else ["2"]), "--out", str(out)],
               "corrupt or truncated")
        assert not out.exists()
    cfg = tmp_path / "badcfg"
    shutil.copytree(run_dir, cfg)
    (cfg / "config.json").write_text("{not json")
    _fails(["evaluate", "-c", str(cfg)], "config.json is corrupt")


def test_plugin_domain_through_entry_point(tmp_path):
    """A third-party package registering through `diffuse.domains` shows up in the CLI."""
    site = tmp_path / "site"
    dist = site / "points2d_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: points2d-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[diffuse.domains]\npoints2d = points2d:PointsDomain\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(EXAMPLES), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "diffuse.cli.main"]
    res = subprocess.run([*cmd, "domains"], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "points2d" in res.stdout and "ring of 8 Gaussians" in res.stdout
    out = tmp_path / "run"
    res = subprocess.run([*cmd, "train", "--domain", "points2d", "--steps", "5", "--out", str(out), *FAST],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert (out / "samples" / "final" / "points.csv").is_file()


def test_continuous_training_every_sampler_and_likelihood(tmp_path):
    """Issue 5 through the CLI: EDM training, every registered sampler, options, --likelihood."""
    from diffuse.core.sampling.registry import SAMPLERS

    out = tmp_path / "edm"
    res = CliRunner().invoke(main, ["train", "--domain", "points2d", "--steps", "30", "--training", "edm",
                                    "--schedule", "sigma", "--out", str(out), *FAST])
    assert res.exit_code == 0, res.output
    import json
    assert json.loads((out / "config.json").read_text())["diffusion"]["training"] == "edm"
    for name in sorted(SAMPLERS):
        if name == "ddpm":
            continue  # needs a discrete schedule's T; covered by the ddpm run above
        args = ["sample", "-c", str(out), "--num", "4", "--steps", "6", "--sampler", name,
                "--out", str(tmp_path / name)]
        if name == "edm_heun":
            args += ["-o", "s_churn=5"]
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, (name, res.output)
        assert len((tmp_path / name / "points.csv").read_text().splitlines()) == 4
    res = CliRunner().invoke(main, ["sample", "-c", str(out), "--num", "4", "--sampler", "rk45", "--out",
                                    str(tmp_path / "rk")])
    assert "nfe=" in res.output
    _fails(["sample", "-c", str(out), "--sampler", "pc", "-o", "nope=1"], "has no option 'nope'")
    res = CliRunner().invoke(main, ["evaluate", "-c", str(out), "--num", "16", "--steps", "6", "--likelihood",
                                    "--likelihood-num", "8", "--out", str(tmp_path / "ll.json")])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "ll.json").read_text())["metrics"]
    assert metrics["likelihood_items"] == 8 and math.isfinite(metrics["bits_per_dim"])


def test_image_domain_bad_data_through_the_cli(tmp_path):
    """Corrupt, empty and missing image data: one line naming the problem, exit 2, no run folder."""
    from PIL import Image

    good = tmp_path / "imgs"
    good.mkdir()
    Image.new("L", (28, 28), 128).save(good / "ok.png")
    (good / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    lines = _fails(["train", "--domain", "image", "--data", str(good), "--out", str(tmp_path / "r1")], "broken.png")
    assert len(lines) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(["train", "--domain", "image", "--data", str(empty), "--out", str(tmp_path / "r2")], str(empty))
    _fails(["train", "--domain", "image", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r3")],
           "does not exist")
    assert not any((tmp_path / r).exists() for r in ("r1", "r2", "r3"))


def test_molecules_sample_prints_validity_table_and_takes_atom_counts(tmp_path):
    """`diffuse sample` on a molecule checkpoint: the validity table, SDF + XYZ, --condition atom counts."""
    cfg = tmp_path / "tiny.json"
    cfg.write_text('{"model": {"preset": "tiny"}}')
    run = tmp_path / "mol"
    res = CliRunner().invoke(main, ["train", "--domain", "molecules", "--config", str(cfg), "--steps", "5",
                                    "--batch-size", "8", "--eval-samples", "4", "--no-progress", "--device", "cpu",
                                    "--out", str(run)])
    assert res.exit_code == 0, res.output
    out = tmp_path / "samples"
    res = CliRunner().invoke(main, ["sample", "-c", str(run), "--domain", "molecules", "--num", "3", "--steps", "5",
                                    "--condition", "[5, 9, 12]", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "atom_stability" in res.output and "validity" in res.output
    from rdkit import Chem

    mols = [m for m in Chem.SDMolSupplier(str(out / "molecules.sdf"), sanitize=False, removeHs=False)]
    assert [m.GetNumAtoms() for m in mols] == [5, 9, 12]
    assert len(list((out / "xyz").glob("*.xyz"))) == 3
    _fails(["sample", "-c", str(run), "--num", "3", "--condition", "[5, 9]"], "one per sample")
    _fails(["sample", "-c", str(run), "--num", "3", "--condition", "{oops"], "must be JSON")
    # no --sampler: the domain's default (molecules: DDPM, 500 steps), recorded as run; given: as given
    res = CliRunner().invoke(main, ["evaluate", "-c", str(run), "--num", "2", "--out", str(tmp_path / "e1.json")])
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "e1.json").read_text())
    assert (rec["sampler"], rec["steps"]) == ("ddpm", 500)
    res = CliRunner().invoke(main, ["evaluate", "-c", str(run), "--num", "2", "--sampler", "ddim",
                                    "--out", str(tmp_path / "e2.json")])
    assert res.exit_code == 0, res.output
    rec = json.loads((tmp_path / "e2.json").read_text())
    assert (rec["sampler"], rec["steps"]) == ("ddim", None)
    _fails(["sample", "-c", str(run), "--num", "2", "--eta", "0.5"], "sampler 'ddpm' has no option 'eta'")


@pytest.mark.parametrize("domain, model, files", [
    ("image", {"base_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "attn_levels": [1], "groups": 4,
               "head_dim": 8}, ["grid.png", "sample_0000.png"]),
    ("audio", {"channels": [8, 16], "factors": [4], "attn_levels": []}, ["sample_000.wav", "spectrograms.png"]),
])
def test_dense_domains_end_to_end_through_the_cli(tmp_path, domain, model, files):
    """train -> sample -> evaluate on the bundled data with a tiny model, as a user would."""
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"model": model}))
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--domain", domain, "--config", str(cfg), "--steps", "3",
                                    "--batch-size", "8", "--eval-samples", "4", "--no-progress", "--device", "cpu",
                                    "--out", str(run)])
    assert res.exit_code == 0, res.output
    assert "metrics:" in res.output
    out = tmp_path / "samples"
    res = CliRunner().invoke(main, ["sample", "-c", str(run), "--num", "4", "--steps", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    for name in files:
        assert (out / name).is_file(), name
    res = CliRunner().invoke(main, ["evaluate", "-c", str(run), "--num", "8", "--steps", "4",
                                    "--out", str(tmp_path / "m.json")])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert metrics and all(math.isfinite(v) for v in metrics.values() if isinstance(v, float))
