"""Noise-aware classifiers and classifier guidance: E(3) invariance of the molecule classifier and
equivariance of guided molecule sampling, the schedule-free input, a learned classifier steering an
exact unconditional model (a labelled Gaussian mixture) into the requested class, image / audio
classifiers end to end through the CLI, and one-line errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import diffuse.api as api
from diffuse.cli.main import main
from diffuse.core import Batch, DenseSpace, LinearBetaSchedule
from diffuse.core.config import RunConfig
from diffuse.core.models.classifier import Classifier, ClassifierObjective, NoisyClassifier, Target
from diffuse.core.training.trainer import Trainer
from diffuse.core.data.condition import Condition, LabelKind
from diffuse.core.config import TrainConfig
from diffuse.core.data.domain import DomainDataset
from diffuse.core.process.gaussian import GaussianMixture
from diffuse.core.sampling.guidance import classifier_guidance
from diffuse.core.sampling.ancestral import ddim
from diffuse.core.sampling.common import prior_sample
from diffuse.core.sampling.grids import time_grid
from diffuse.core.process.schedules import make_schedule

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


def _rotation(seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=F64, generator=torch.Generator().manual_seed(seed)))
    return q  # orthogonal; det -1 included (reflections)


# ------------------------------------------------------------------ molecules: E(3)
@pytest.fixture(scope="module")
def molecules():
    dom = api.get_domain("molecules")
    data = dom.load_data(None, dom.default_data())
    info = data.info()
    batch = data.batch(torch.arange(6))
    return dom.bind(info), info, batch


def _mol_classifier(dom, target):
    torch.manual_seed(0)
    return NoisyClassifier(dom.build_classifier({"hidden": 16, "layers": 2}, target), target).double()


def test_molecule_classifier_is_e3_invariant(molecules):
    dom, info, batch = molecules
    clf = _mol_classifier(dom, Target("label", num_classes=3))
    x, space = batch.x.double(), batch.space
    x_t = space.project(x + 0.5 * space.noise(x, torch.Generator().manual_seed(1)))
    alpha, sigma = torch.full((6,), 0.9, dtype=F64), torch.full((6,), math.sqrt(1 - 0.81), dtype=F64)
    base = clf(x_t, alpha, sigma, space)
    for seed in (0, 1, 2):
        rot = _rotation(seed)
        moved = x_t.clone()
        moved[:, :3] = x_t[:, :3] @ rot.T + torch.tensor([1.0, -2.0, 3.0], dtype=F64)
        torch.testing.assert_close(clf(moved, alpha, sigma, space), base, rtol=1e-10, atol=1e-10)
    # not trivially constant: moving one atom changes the logits
    bent = x_t.clone()
    bent[0, :3] += 0.7
    assert (clf(bent, alpha, sigma, space) - base).abs().max() > 1e-6


def test_gyration_property_is_the_closed_form(molecules):
    dom, info, batch = molecules
    got = dom.classifier_property("gyration", batch)
    pos = batch.x[:, :3].double()
    for g in range(6):
        p = pos[batch.space.batch == g]
        want = torch.sqrt(((p - p.mean(0)) ** 2).sum(1).mean())
        assert abs(float(got[g]) - float(want)) < 1e-5
    with pytest.raises(ValueError, match="no property 'mass'"):
        dom.classifier_property("mass", batch)


def test_classifier_guided_molecule_sampling_is_equivariant(molecules):
    """DDIM with an EGNN denoiser and the gradient of an invariant property classifier: rotating
    (and reflecting) the starting noise rotates the samples; the guidance term is not zero."""
    dom, info, batch = molecules
    model = api.build("molecules", info, model={"preset": "tiny"}, device="cpu", seed=0)
    den = model.denoiser.double()
    tgt = Target("property", "gyration", mean=2.0, std=0.5)
    clf = Classifier(dom, None, _mol_classifier(dom, tgt), torch.device("cpu"))
    sched = den.schedule
    template = dom.template(6, structure=[5, 7, 9, 4, 6, 8])
    space = template.space
    x = space.project(space.noise(template.x.double(), torch.Generator().manual_seed(3)))
    grid = time_grid(sched, 12, "trailing")[2:]   # an untrained model blows up through 1/alpha at t = 1

    def run(x0, scale):
        wrapper = clf.guidance(torch.full((6,), 3.0, dtype=F64), scale, sched)
        denoise = wrapper.wrap(den.bind(space), batch=Batch(x0, space), denoiser=den)
        return ddim(denoise, x0, grid, schedule=sched, space=space)

    out = run(x, 4.0)
    assert (out - run(x, 0.0)).abs().max() > 1e-4   # guidance does something
    for seed in (4, 5):
        rot = _rotation(seed)
        xr = x.clone()
        xr[:, :3] = x[:, :3] @ rot.T
        got = run(xr, 4.0)
        torch.testing.assert_close(got[:, :3], out[:, :3] @ rot.T, rtol=1e-7, atol=1e-7)
        torch.testing.assert_close(got[:, 3:], out[:, 3:], rtol=1e-7, atol=1e-7)


# ------------------------------------------------------------------ schedule-free input
def test_classifier_input_depends_only_on_the_noise_level():
    """x_t of a VP schedule and of a VE schedule at the same sigma/alpha are the same noisy
    sample up to the factor alpha: the classifier gives the same output for both."""
    net_seen = {}

    class Probe(nn.Module):
        def forward(self, x, noise_level, space=None):
            net_seen["x"], net_seen["level"] = x, noise_level
            return x.reshape(x.shape[0], -1)[:, :2]

    clf = NoisyClassifier(Probe(), Target("label", num_classes=2))
    x0 = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    vp, ve = LinearBetaSchedule(), make_schedule({"kind": "sigma"})
    t_vp = torch.full((4,), 0.4, dtype=F64)
    a, s = vp.alpha_sigma(t_vp)
    out_vp = clf(a[:, None] * x0 + s[:, None] * eps, a, s, DenseSpace())
    ratio = s / a
    t_ve = ve.t_from_sigma_ratio(ratio)
    a2, s2 = ve.alpha_sigma(t_ve)
    torch.testing.assert_close(s2 / a2, ratio)
    level_vp = net_seen["level"]
    out_ve = clf(a2[:, None] * x0 + s2[:, None] * eps, a2, s2, DenseSpace())
    torch.testing.assert_close(out_ve, out_vp, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(net_seen["level"], level_vp)
    torch.testing.assert_close(level_vp, (100 * torch.log(ratio)).float())


# ------------------------------------------------------------------ a learned classifier steers an exact model
class _Points(DomainDataset):
    def __init__(self, x, y, kind):
        self.x, self.y, self.kind = x, y, kind

    def __len__(self):
        return len(self.x)

    def info(self):
        return {}

    def batch(self, indices, generator=None):
        idx = torch.as_tensor(indices)
        return Batch(self.x[idx], DenseSpace(), Condition({"label": self.y[idx]}, {"label": self.kind}))


class _MLP(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, k))

    def forward(self, x, noise_level, space=None):
        return self.net(torch.cat([x, noise_level[:, None].to(x.dtype) / 100], 1))


def test_trained_classifier_guides_an_unconditional_model_into_the_requested_class(tmp_path):
    """Two separable Gaussians; the model is the exact unconditional (mixture) denoiser. A tiny
    noise-aware classifier trained 300 steps reaches the requested class for most samples with
    guidance, while unguided samples split between the classes."""
    torch.manual_seed(0)
    gm = GaussianMixture(torch.tensor([0.5, 0.5], dtype=F64), torch.tensor([[-2.0, 0.0], [2.0, 0.0]], dtype=F64),
                         0.25 * torch.eye(2, dtype=F64).expand(2, 2, 2).clone())
    x, y = gm.sample(4000, torch.Generator().manual_seed(0), return_labels=True)
    kind = LabelKind(2)
    sched = LinearBetaSchedule()
    tgt = Target("label", num_classes=2)
    module = NoisyClassifier(_MLP(2), tgt)
    cfg = TrainConfig(steps=300, batch_size=128, lr=3e-3, warmup_steps=20, seed=0)
    objective = ClassifierObjective(None, sched, sched.sample_t)
    (tmp_path / "clf").mkdir()
    Trainer(tmp_path / "clf", RunConfig(domain="points", train=cfg), None, objective, module,
            _Points(x.float(), y, kind), progress=False).fit()
    module.double()
    clf = Classifier(None, None, module, torch.device("cpu"))
    n = 400
    x_T = prior_sample(sched, DenseSpace(), torch.zeros(n, 2, dtype=F64), generator=torch.Generator().manual_seed(1))
    grid = time_grid(sched, 50)

    def share_of(klass, scale):
        wrapper = clf.guidance(torch.full((n,), klass), scale, sched)
        denoise = wrapper.wrap(gm.denoiser(sched), batch=Batch(x_T, DenseSpace()), denoiser=None)
        out = ddim(denoise, x_T, grid, schedule=sched, space=DenseSpace())
        post = gm.class_log_prob(out, torch.ones(n, dtype=F64), torch.zeros(n, dtype=F64))
        return float((post.argmax(1) == klass).double().mean())

    assert 0.35 < share_of(0, 0.0) < 0.65
    for klass in (0, 1):
        assert share_of(klass, 4.0) > 0.9


# ------------------------------------------------------------------ image and audio end to end (CLI)
from tiny import TINY_UNET  # noqa: E402


@pytest.fixture(scope="module")
def image_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("clf_cli")
    cfg = root / "tiny.json"
    cfg.write_text(json.dumps({"model": TINY_UNET, "train": {"final_eval": False}}))
    ccfg = root / "clf.json"
    ccfg.write_text(json.dumps({"model": {"base_channels": 8, "channel_mult": [1, 2], "groups": 4}}))
    runs = {"model": root / "model", "clf": root / "clf", "cfg": cfg, "ccfg": ccfg, "root": root}
    res = CliRunner().invoke(main, ["train", "--domain", "image", "--config", str(cfg), "--steps", "2",
                                    "--batch-size", "8", "--no-progress", "--device", "cpu", "--out", str(runs["model"])])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["train-classifier", "--domain", "image", "--config", str(ccfg), "--steps", "3",
                                    "--batch-size", "8", "--no-progress", "--device", "cpu", "--out", str(runs["clf"])])
    assert res.exit_code == 0, res.output
    assert "accuracy_clean" in res.output and "accuracy_level_1" in res.output
    return runs


def test_image_classifier_run_folder_and_guided_sampling(image_runs, tmp_path):
    clf_dir = image_runs["clf"]
    cfg = json.loads((clf_dir / "config.json").read_text())
    assert cfg["kind"] == "classifier" and cfg["target"]["num_classes"] == 10
    assert (clf_dir / "checkpoint" / "model.safetensors").is_file()
    assert 0 <= json.loads((clf_dir / "evaluation.json").read_text())["accuracy_clean"] <= 1
    assert not list(clf_dir.parent.glob(".clf.tmp-*"))
    out = tmp_path / "s"
    res = CliRunner().invoke(main, ["sample", "-c", str(image_runs["model"]), "--num", "3", "--steps", "3",
                                    "--label", "seven", "--guidance", "classifier", "--classifier", str(clf_dir),
                                    "--guidance-scale", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "sample_0002.png").is_file()
    # API: scale 0 is the unguided model bit for bit; a scale changes the samples; any batch size
    model = api.load(image_runs["model"], device="cpu")
    clf = api.load_classifier(clf_dir, device="cpu")
    plain = model.sample(4, steps=3)
    zero = model.sample(4, steps=3, cond={"label": 7}, guidance="classifier", classifier=clf, guidance_scale=0)
    torch.testing.assert_close(zero.x, plain.x, rtol=0, atol=0)
    a = model.sample(4, steps=3, cond={"label": [1, 7]}, guidance="classifier", classifier=clf, guidance_scale=20)
    b = model.sample(4, steps=3, cond={"label": [1, 7]}, guidance="classifier", classifier=clf_dir,
                     guidance_scale=20, batch_size=3)
    assert (a.x - plain.x).abs().max() > 1e-4
    torch.testing.assert_close(a.x, b.x, rtol=1e-4, atol=1e-4)


def test_audio_classifier_trains_on_the_bundled_labels(tmp_path):
    out = tmp_path / "aclf"
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model": {"channels": [8, 8, 16, 16]}, "train": {"holdout_fraction": 0.2}}))
    r = api.train_classifier("audio", out=out, steps=2, batch_size=4, device="cpu", progress=False, config=cfg)
    assert r["metrics"]["held_out_items"] > 0 and "accuracy_level_3" in r["metrics"]
    clf = api.load_classifier(out, device="cpu")
    assert clf.target.kind == "label" and clf.target.num_classes == len(clf.config.data_info["classes"])
    model = api.build("audio", clf.config.data_info, model={"channels": [8, 16], "factors": [4], "num_res_blocks": 1},
                      device="cpu")
    s = model.sample(2, steps=2, cond={"label": clf.target.class_names[0]}, guidance="classifier", classifier=clf,
                     guidance_scale=3)
    assert torch.isfinite(s.x).all()


def test_molecule_property_classifier_through_the_api(tmp_path):
    out = tmp_path / "mclf"
    r = api.train_classifier("molecules", out=out, target="property:gyration", steps=2, batch_size=8, device="cpu",
                             progress=False, model={"hidden": 8, "layers": 1})
    assert "rmse_clean" in r["metrics"] and r["metrics"]["property_std"] > 0
    clf = api.load_classifier(out, device="cpu")
    assert clf.target.kind == "property" and clf.target.name == "gyration"
    model = api.build("molecules", clf.config.data_info, model={"preset": "tiny"}, device="cpu")
    s = model.sample(2, steps=2, cond={"gyration": 2.5}, guidance="classifier", classifier=clf, structure=[5, 6])
    assert torch.isfinite(s.x).all()
    with pytest.raises(ValueError, match="no class labels"):
        api.train_classifier("molecules", out=tmp_path / "never", steps=1, progress=False)
    assert not (tmp_path / "never").exists()


# ------------------------------------------------------------------ errors: one line, exit 2, nothing written
@pytest.mark.parametrize("args, match", [
    (["--label", "7", "--guidance", "classifier"], "needs a classifier run"),
    (["--label", "7", "--guidance", "classifier", "--classifier", "{root}/missing"], "does not exist"),
    (["--label", "7", "--guidance", "classifier", "--classifier", "{model}"], "is not a classifier run"),
    (["--label", "eleven", "--guidance", "classifier", "--classifier", "{clf}"], "unknown label 'eleven'"),
    (["--label", "12", "--classifier", "{clf}"], "out of range"),
    (["--guidance", "classifier", "--classifier", "{clf}"], "needs a target"),
    (["--label", "7", "--guidance", "free", "--classifier", "{clf}"], "classifier guidance only"),
    (["--label", "7", "--classifier", "{clf}", "--guidance-scale", "-1"], "guidance scale must be >= 0"),
    (["--label", "7", "--classifier", "{clf}", "--guidance-rescale", "0.5"], "classifier-free guidance only"),
    (["--label", "7", "--classifier", "{mclf}"], "is for the 'molecules' domain"),
    (["--label", "7", "--classifier", "{oclf}"], "trained on other data"),
    (["--target-value", "gyration=2"], "--target-value needs --guidance classifier"),
])
def test_bad_classifier_guidance_input_is_one_error_line(image_runs, tmp_path, args, match):
    root = image_runs["root"]
    if "{mclf}" in " ".join(args) and not (root / "mclf").exists():
        api.train_classifier("molecules", out=root / "mclf", target="property:gyration", steps=1, batch_size=4,
                             device="cpu", progress=False, model={"hidden": 8, "layers": 1})
    if "{oclf}" in " ".join(args) and not (root / "oclf").exists():
        # a classifier of 14x14 images: a different sample layout than the 28x28 model
        api.train_classifier("image", out=root / "oclf", steps=1, batch_size=4, device="cpu", progress=False,
                             config={"model": {"base_channels": 8, "channel_mult": [1], "groups": 4},
                                     "data_options": {"image_size": 14}})
    args = [a.format(root=root, model=image_runs["model"], clf=image_runs["clf"], mclf=root / "mclf",
                     oclf=root / "oclf") for a in args]
    out = tmp_path / "never"
    res = CliRunner().invoke(main, ["sample", "-c", str(image_runs["model"]), "--num", "2", "--steps", "2",
                                    "--out", str(out), *args])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], res.output
    assert not out.exists()


@pytest.mark.parametrize("args, match", [
    (["--domain", "image", "--target", "colour"], "--target must be 'label' or 'property:NAME'"),
    (["--domain", "image", "--target", "property:mass"], "no property 'mass'"),
    (["--domain", "molecules"], "no class labels"),
    (["--domain", "nope"], "nope"),
    (["--domain", "image", "--data", "/nonexistent/digits"], "does not exist"),
])
def test_bad_train_classifier_input_is_one_error_line(tmp_path, args, match):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train-classifier", "--steps", "1", "--no-progress", "--device", "cpu",
                                    "--out", str(out), *args])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], res.output
    assert not out.exists()


def test_existing_classifier_run_is_not_overwritten(image_runs):
    res = CliRunner().invoke(main, ["train-classifier", "--domain", "image", "--steps", "1", "--no-progress",
                                    "--out", str(image_runs["clf"])])
    assert res.exit_code == 2 and "already holds a run" in res.output


def test_help_lists_the_classifier_options():
    res = CliRunner().invoke(main, ["train-classifier", "--help"])
    assert res.exit_code == 0 and "--target" in res.output
    res = CliRunner().invoke(main, ["sample", "--help"])
    assert res.exit_code == 0 and "--classifier" in res.output and "--guidance [free|classifier]" in res.output
