"""Typed conditions: parsing, null values, batch operations, JSON specs, and condition dropout."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from diffuse.core import Batch, DenseSpace
from diffuse.core.data.condition import (Condition, LabelKind, TokensKind, VectorKind, kind_from_spec,
                                         kinds_from_spec, parse_condition)
from diffuse.core.config import DiffusionConfig
from diffuse.core.process.diffusion import Diffusion

pytestmark = pytest.mark.usefixtures("one_thread")
DIGITS = LabelKind(10, [str(i) for i in range(10)], aliases={"seven": 7, "zero": 0})


def test_label_parse_accepts_indices_names_aliases_and_cycles_lists():
    assert DIGITS.parse(7, 3).tolist() == [7, 7, 7]
    assert DIGITS.parse("seven", 2).tolist() == [7, 7]
    assert DIGITS.parse("Seven", 1).tolist() == [7]
    assert DIGITS.parse("3", 1).tolist() == [3]
    assert DIGITS.parse([0, "seven", 2], 6).tolist() == [0, 7, 2, 0, 7, 2]
    named = LabelKind(2, ["cat", "dog"])
    assert named.parse(["dog", "cat", 0], 3).tolist() == [1, 0, 0]
    assert DIGITS.null(2).tolist() == [10, 10]


@pytest.mark.parametrize("bad, msg", [("eleven", "unknown label"), (10, "out of range"), (-1, "out of range"),
                                      (True, "class index"), (2.5, "class index"), ([1] * 5, "5 values for 4"),
                                      ([], "empty")])
def test_label_parse_rejects_bad_values(bad, msg):
    with pytest.raises(ValueError, match=msg):
        DIGITS.parse(bad, 4)


def test_vector_kind_normalises_and_marks_presence():
    kind = VectorKind(["alpha", "gap"], mean=[70.0, 6.0], std=[10.0, 1.0])
    v = kind.parse({"alpha": 80}, 2)
    assert v.tolist() == [[1.0, 0.0, 1.0, 0.0]] * 2                 # gap absent
    assert kind.describe(v) == [{"alpha": 80.0}] * 2
    assert kind.is_null(kind.null(3)).all() and not kind.is_null(v).any()
    with pytest.raises(ValueError, match="unknown property homo"):
        kind.parse({"homo": 1}, 1)
    with pytest.raises(ValueError, match="must be a number"):
        kind.parse({"gap": "x"}, 1)
    with pytest.raises(ValueError, match="by name"):
        kind.parse(3.0, 1)
    assert VectorKind(["mu"]).parse([1.0, 2.0], 2)[:, 0].tolist() == [1.0, 2.0]


def test_tokens_kind_null_is_the_empty_prompt():
    kind = TokensKind(vocab_size=50, max_len=4, pad_id=0)
    assert kind.null(2).tolist() == [[0] * 4] * 2
    assert kind.parse([5, 6], 2).tolist() == [[5, 6, 0, 0]] * 2
    assert kind.parse([[1], [2, 3]], 2).tolist() == [[1, 0, 0, 0], [2, 3, 0, 0]]
    with pytest.raises(ValueError, match="at most 4"):
        kind.parse([1] * 5, 1)
    with pytest.raises(ValueError, match="0..49"):
        kind.parse([50], 1)


@pytest.mark.parametrize("kind", [DIGITS, VectorKind(["a", "b"], [1.0, 2.0], [3.0, 4.0]), TokensKind(9, 3, 1)])
def test_kind_specs_are_json_round_trips(kind):
    spec = json.loads(json.dumps(kind.spec()))
    again = kind_from_spec(spec)
    assert type(again) is type(kind) and again.spec() == kind.spec()
    assert torch.equal(again.null(2), kind.null(2))
    with pytest.raises(ValueError, match="unknown condition kind"):
        kind_from_spec({"type": "image"})


def _cond(n=4):
    kinds = {"label": DIGITS, "props": VectorKind(["a"])}
    return Condition({"label": torch.arange(n), "props": kinds["props"].parse([float(i) for i in range(n)], n)}, kinds)


def test_condition_batch_operations():
    c = _cond(4)
    assert len(c) == 4 and "label" in c and c.get("missing") is None
    null = c.null()
    assert null["label"].tolist() == [10] * 4 and float(null["props"].abs().sum()) == 0
    dropped = c.drop(torch.tensor([True, False, True, False]))
    assert dropped["label"].tolist() == [10, 1, 10, 3]
    assert dropped["props"][:, 1].tolist() == [0.0, 1.0, 0.0, 1.0]     # presence cleared where dropped
    sel = c.select(torch.tensor([3, 1]))
    assert sel["label"].tolist() == [3, 1] and sel["props"][:, 0].tolist() == [3.0, 1.0]
    assert c.select(slice(1, 3))["label"].tolist() == [1, 2]
    both = Condition.concat([c, null])
    assert len(both) == 8 and both["label"].tolist() == [0, 1, 2, 3] + [10] * 4
    assert kinds_from_spec(json.loads(json.dumps(c.spec())))["label"].spec() == DIGITS.spec()
    assert c.describe()["label"] == ["0", "1", "2", "3"] and null.describe()["label"] == [None] * 4
    assert c.to("cpu")["label"].device.type == "cpu"
    with pytest.raises(ValueError, match="different numbers"):
        Condition({"label": torch.zeros(2, dtype=torch.long), "props": torch.zeros(3, 2)}, c.kinds)
    batch = Batch(torch.zeros(4, 2), DenseSpace(), c).to("cpu")
    assert isinstance(batch.cond, Condition)


def test_parse_condition_checks_names_and_fills_nulls():
    kinds = {"label": DIGITS, "props": VectorKind(["a"])}
    c = parse_condition(kinds, {"label": "seven"}, 3)
    assert c["label"].tolist() == [7] * 3 and float(c["props"].abs().sum()) == 0
    assert parse_condition(kinds, None, 2)["label"].tolist() == [10, 10]
    assert parse_condition({}, None, 2) is None
    with pytest.raises(ValueError, match="trained without conditions"):
        parse_condition({}, {"label": 3}, 2)
    with pytest.raises(ValueError, match="does not understand the condition.*text"):
        parse_condition(kinds, {"text": "a cat"}, 2)


class LabelNet(nn.Module):
    """Output depends on the label (embedding) and x, so dropped samples have a different loss."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 2)

    def forward(self, x, noise_level, cond=None, space=None):
        labels = cond["label"] if cond is not None else torch.full((x.shape[0],), 10)
        return x * 0.5 + self.emb(labels)


def test_condition_dropout_in_the_training_loss():
    torch.manual_seed(0)
    net = LabelNet()
    x = torch.randn(64, 2)
    cond = Condition({"label": torch.arange(64) % 10}, {"label": DIGITS})

    def loss(p, c):
        diff = Diffusion(DiffusionConfig(cond_drop=p))
        return diff.training_losses(diff.denoiser(net), Batch(x, DenseSpace(), c), torch.Generator().manual_seed(3))

    kept, nulled = loss(0.0, cond), loss(0.0, cond.null())
    assert not torch.allclose(kept, nulled)
    assert torch.equal(loss(1.0, cond), nulled)                # everything dropped: the null condition
    half = loss(0.5, cond)
    assert torch.equal(half, loss(0.5, cond))                  # the drop mask comes from the generator
    is_kept, is_null = half == kept, half == nulled
    assert bool((is_kept | is_null).all())
    assert 10 < int(is_null.sum()) < 54
    assert torch.equal(loss(0.5, None), loss(0.0, None))       # no condition: no draw, no change
    with pytest.raises(ValueError, match="cond_drop"):
        Diffusion(DiffusionConfig(cond_drop=1.5))


# ------------------------------------------------------------------ image labels end to end (CLI + API)
@pytest.fixture(scope="module")
def image_runs(tmp_path_factory):
    from tiny import train_tiny_image

    root = tmp_path_factory.mktemp("cond_cli")
    return {name: train_tiny_image(root, name, extra)
            for name, extra in (("labels", ["--condition", "label", "--cond-drop", "0.3"]), ("plain", []))}


def test_image_label_training_records_its_condition_and_samples_by_label(image_runs, tmp_path):
    from click.testing import CliRunner

    import diffuse.api as api
    from diffuse.cli.main import main

    cfg = json.loads((image_runs["labels"] / "config.json").read_text())
    assert cfg["diffusion"]["cond_drop"] == 0.3 and cfg["data_info"]["conditions"]["label"]["num_classes"] == 10
    model = api.load(image_runs["labels"], device="cpu")
    assert list(model.condition_kinds()) == ["label"]
    s = model.sample(4, steps=3, cond={"label": "seven"}, guidance_scale=3, guidance_rescale=0.5)
    assert s.cond["label"].tolist() == [7] * 4 and s.x.shape == (4, 1, 28, 28) and torch.isfinite(s.x).all()
    cycled = model.sample(4, steps=3, cond={"label": [1, 2]}, batch_size=3)
    assert cycled.cond["label"].tolist() == [1, 2, 1, 2]
    # guidance scale 1 = the conditional model itself; scale 0 = the null label
    one = model.sample(2, steps=3, cond={"label": 4}, guidance_scale=1)
    plain = model.sample(2, steps=3, cond={"label": 4})
    torch.testing.assert_close(one.x, plain.x, rtol=1e-4, atol=1e-4)
    zero = model.sample(2, steps=3, cond={"label": 4}, guidance_scale=0)
    torch.testing.assert_close(zero.x, model.sample(2, steps=3).x, rtol=0, atol=0)
    out = tmp_path / "s"
    res = CliRunner().invoke(main, ["sample", "-c", str(image_runs["labels"]), "--num", "3", "--steps", "3",
                                    "--label", "7", "--label", "seven", "--guidance-scale", "2",
                                    "--guidance-interval", "0.1,20", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "grid.png").is_file() and (out / "sample_0002.png").is_file()


def test_conditional_evaluation_draws_the_training_splits_conditions(image_runs, tmp_path):
    """`evaluate --guidance-scale S` conditions each sample on a random training item: the labels
    follow the training split's class shares, and the metrics are those of exactly those samples."""
    from click.testing import CliRunner

    import diffuse.api as api
    from diffuse.cli.main import main

    model = api.load(image_runs["labels"], device="cpu")
    from diffuse.api.configs import load_data, split_data
    train_set, _ = split_data(load_data(model.domain, model.config), model.config.train)
    truth = torch.bincount(train_set.batch(torch.arange(len(train_set))).cond["label"], minlength=10).double()
    drawn = torch.bincount(model.training_conditions(20000, seed=1)["label"], minlength=10).double()
    assert (drawn / drawn.sum() - truth / truth.sum()).abs().max() < 0.015       # ~4 standard errors
    assert torch.equal(model.training_conditions(50, seed=2)["label"], model.training_conditions(50, seed=2)["label"])
    opts = dict(sampler="ddim", steps=3, seed=0)
    cond = model.training_conditions(8, seed=0)
    expected = model.domain.metrics(model.sample(8, cond=cond, guidance_scale=2.0, **opts), model.reference_data())
    assert model.evaluate(8, cond="train", guidance_scale=2.0, **opts) == expected
    out = tmp_path / "e.json"
    res = CliRunner().invoke(main, ["evaluate", "-c", str(image_runs["labels"]), "--num", "8", "--sampler", "ddim",
                                    "--steps", "3", "--guidance-scale", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    record = json.loads(out.read_text())
    assert record["guidance_scale"] == 2.0 and record["metrics"] == pytest.approx(expected)
    res = CliRunner().invoke(main, ["evaluate", "-c", str(image_runs["plain"]), "--num", "8", "--guidance-scale", "1",
                                    "--out", str(tmp_path / "p.json")])
    assert res.exit_code == 2 and "trained without conditions" in res.output and not (tmp_path / "p.json").exists()


@pytest.mark.parametrize("run, args, match", [
    ("labels", ["--label", "eleven"], "unknown label 'eleven'"),
    ("labels", ["--label", "12"], "out of range"),
    ("labels", ["--label", "7", "--guidance-scale", "abc"], "guidance scale must be a number"),
    ("labels", ["--guidance-scale", "3"], "guidance needs a condition"),
    ("labels", ["--label", "7", "--guidance-rescale", "2", "--guidance-scale", "3"], "rescale must lie in [0, 1]"),
    ("labels", ["--label", "7", "--guidance-scale", "3", "--guidance-interval", "3"], "LO,HI"),
    ("plain", ["--label", "7"], "trained without conditions"),
    ("plain", ["--guidance-scale", "3"], "guidance needs a conditional model"),
])
def test_bad_condition_input_is_one_error_line_and_writes_nothing(image_runs, tmp_path, run, args, match):
    from click.testing import CliRunner

    from diffuse.cli.main import main

    out = tmp_path / "never"
    res = CliRunner().invoke(main, ["sample", "-c", str(image_runs[run]), "--num", "2", "--steps", "2",
                                    "--out", str(out), *args])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], res.output
    assert not out.exists()


@pytest.mark.parametrize("args, match", [
    (["--condition", "colour"], "cannot condition on colour"),
    (["--condition", "label", "--cond-drop", "abc"], "--cond-drop must be a number"),
    (["--condition", "label", "--cond-drop", "1.5"], "--cond-drop must be a number in [0, 1]"),
])
def test_bad_training_condition_options(tmp_path, args, match):
    from click.testing import CliRunner

    from diffuse.cli.main import main

    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--domain", "image", "--steps", "1", "--no-progress", "--device", "cpu",
                                    "--out", str(out), *args])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], res.output
    assert not out.exists()
