"""Text prompts: the shipped tokenizer (round trips, unknown words, max length), captions drawn
reproducibly from the generator, the text encoder's masking, a text condition that is really
learned, and image text models end to end through the CLI (bad input: one error line)."""

from __future__ import annotations

import json
import math

import pytest
from tiny import TINY_UNET
import torch
from torch import nn

from diffuse.core import Batch, DenseSpace
from diffuse.core.data.condition import Condition, kind_from_spec
from diffuse.core.config import DiffusionConfig
from diffuse.core.process.diffusion import Diffusion
from diffuse.core.sampling.guidance import classifier_free_guidance
from diffuse.core.sampling.ancestral import ddim
from diffuse.core.sampling.common import prior_sample
from diffuse.core.sampling.grids import time_grid
from diffuse.domains.audio.data import CLASS_PHRASES
from diffuse.domains.image.data import image_phrases
from diffuse.domains.text import (Captioner, TextEncoder, TextKind, Tokenizer, build_text_encoder, split_words,
                                  text_kind_for, with_article)

DIGITS = [str(i) for i in range(10)]


# ------------------------------------------------------------------ tokenizer
def test_tokenizer_round_trips_known_words_and_maps_unknown_ones_to_unk():
    tok = Tokenizer.builtin()
    for text in ["A handwritten Seven!", "an 808 bass-drum hit", "the digit 7", "  a  snare\tdrum "]:
        ids = tok.encode(text)
        assert tok.unk_id not in ids and tok.pad_id not in ids
        assert tok.decode(ids) == " ".join(split_words(text))
    assert split_words("An 808-kick!") == ["an", "808", "kick"]
    ids = tok.encode("a zorblax seven")
    assert ids[1] == tok.unk_id and tok.decode(ids) == "a <unk> seven"
    assert tok.unknown("a zorblax seven") == ["zorblax"]
    # extra words are appended after the shipped vocabulary, which keeps its ids
    ext = Tokenizer.builtin(["zorblax", "seven", "zorblax"])
    assert len(ext) == len(tok) + 1 and ext.encode("a zorblax seven") == [ids[0], len(tok), ids[2]]
    with pytest.raises(ValueError, match="<pad>"):
        Tokenizer(["a", "b"])


def test_every_shipped_caption_tokenizes_without_unknown_words_and_fits():
    kind = TextKind()
    phrases = [p for cls in image_phrases(DIGITS) for p in cls] + [p for cls in CLASS_PHRASES.values() for p in cls]
    for p in phrases:
        assert not kind.tokenizer.unknown(p), p
        assert 0 < len(split_words(p)) <= kind.max_len
    assert len(set(image_phrases(DIGITS)[7])) == 10 and "a handwritten seven" in image_phrases(DIGITS)[7]
    assert "an 808 bass drum hit" in CLASS_PHRASES["kick"] and with_article("eight") == "an eight"


def test_text_kind_parses_prompts_and_rejects_bad_ones():
    kind = TextKind(max_len=6)
    ids = kind.parse("a handwritten seven", 3)
    assert ids.shape == (3, 6) and (ids[:, 3:] == kind.pad_id).all() and (ids[0] == ids[2]).all()
    assert kind.describe(ids) == ["a handwritten seven"] * 3
    cycled = kind.parse(["a kick", "a snare"], 3)
    assert kind.describe(cycled) == ["a kick", "a snare", "a kick"]
    assert kind.describe(kind.null(2)) == [None, None] and kind.is_null(kind.null(2)).all()
    assert torch.equal(kind.parse(ids[0].tolist()[:3], 1)[0], ids[0])      # token ids still accepted
    for bad, msg in [("", "empty prompt"), ("  !! ", "empty prompt"), ("zorblax quux", "none of the words"),
                     ("a b c d e f g", "at most 6"), (["a kick", 3], "must be text")]:
        with pytest.raises(ValueError, match=msg):
            kind.parse(bad, 2)
    assert kind.parse("a zorblax", 1)[0, 1] == kind.tokenizer.unk_id     # some unknown words: <unk>


def test_text_kind_spec_round_trips_with_the_class_names_vocabulary():
    kind = text_kind_for(["hot_dog", "cat", "Zebra"])
    assert kind.extra_words == ["hot", "zebra"]          # "dog" and "cat" are shipped words
    assert not kind.tokenizer.unknown("a hot dog picture") and not kind.tokenizer.unknown("a zebra")
    back = kind_from_spec(json.loads(json.dumps(kind.spec())))
    assert isinstance(back, TextKind) and back.spec() == kind.spec() and back.vocab_size == kind.vocab_size
    with pytest.raises(ValueError, match="vocabulary version"):
        TextKind(vocab_version=99)


# ------------------------------------------------------------------ captions
def test_captions_are_reproducible_from_the_generator_and_cover_every_phrasing():
    kind = text_kind_for(DIGITS)
    cap = Captioner(image_phrases(DIGITS), kind)
    labels = torch.arange(10).repeat(200)
    a = cap(labels, torch.Generator().manual_seed(3))
    b = cap(labels, torch.Generator().manual_seed(3))
    c = cap(labels, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    texts = cap.captions(labels, torch.Generator().manual_seed(3))
    assert kind.describe(a) == texts                                   # ids are the tokenized captions
    for lab, text in zip(labels.tolist(), texts):
        assert text in image_phrases(DIGITS)[lab]
    sevens = {t for lab, t in zip(labels.tolist(), texts) if lab == 7}
    assert sevens == set(image_phrases(DIGITS)[7])                      # 200 draws cover all 10 phrasings
    with pytest.raises(ValueError):
        Captioner([["a"], []], kind)


def test_image_data_draws_captions_from_the_batch_generator():
    from diffuse.domains.image.domain import ImageDomain

    dom = ImageDomain()
    ds = dom.load_data(None, {"text": True, "conditional": True, "max_images": 50})
    idx = torch.arange(0, 50, 5)
    b1 = ds.batch(idx, torch.Generator().manual_seed(0))
    b2 = ds.batch(idx, torch.Generator().manual_seed(0))
    assert torch.equal(b1.cond["text"], b2.cond["text"]) and sorted(b1.cond) == ["label", "text"]
    for lab, text in zip(b1.cond["label"].tolist(), b1.cond.describe()["text"]):
        assert text in image_phrases(DIGITS)[lab]
    kinds = dom.bind(ds.info()).condition_kinds()
    assert sorted(kinds) == ["label", "text"] and kinds["text"].spec() == b1.cond.kinds["text"].spec()
    assert dom.condition_data_options(["text"]) == {"text": True}


# ------------------------------------------------------------------ encoder
def test_text_encoder_masks_padding_and_handles_the_empty_prompt():
    torch.manual_seed(0)
    kind = TextKind(max_len=8)
    enc = TextEncoder(kind.vocab_size, kind.max_len, dim=32, layers=2, heads=4).eval()
    assert 10_000 < sum(p.numel() for p in enc.parameters()) < 200_000
    ids = kind.parse(["a handwritten seven", "the digit 1"], 2)
    ctx, mask = enc(ids)
    assert ctx.shape == (2, 9, 32) and mask.tolist()[0] == [True] * 4 + [False] * 5
    # padding is invisible: the same prompt with less padding gives the same valid tokens
    short, smask = enc(ids[:, :4])
    torch.testing.assert_close(short[0], ctx[0, :5][: short.shape[1]], atol=1e-5, rtol=1e-5)
    # the empty prompt keeps one valid (start) token, so cross-attention never sees an all-masked row
    null, nmask = enc(kind.null(2))
    assert nmask[:, 0].all() and not nmask[:, 1:].any() and torch.isfinite(null).all()
    with pytest.raises(ValueError, match="at most 8"):
        enc(torch.ones(1, 9, dtype=torch.long))


def test_unets_read_the_text_condition_through_their_encoder():
    from diffuse.domains.audio.unet import UNet1D
    from diffuse.domains.image.unet import UNet

    torch.manual_seed(0)
    kind = TextKind(max_len=8)
    for net, x in [(UNet(base_channels=8, channel_mult=[1, 2], attn_levels=[1], groups=4, head_dim=8,
                         text_encoder=build_text_encoder({"dim": 16}, kind)), torch.randn(2, 1, 12, 12)),
                   (UNet(base_channels=8, channel_mult=[1, 2], attn_levels=[1], groups=4, head_dim=8, text_pool=True,
                         text_encoder=build_text_encoder({"dim": 16}, kind)), torch.randn(2, 1, 12, 12)),
                   (UNet1D(channels=(8, 16), factors=(4,), attn_levels=(-1,), heads=2,
                           text_encoder=build_text_encoder({"dim": 16, "layers": 1}, kind)), torch.randn(2, 1, 64)),
                   (UNet1D(channels=(8, 16), factors=(4,), attn_levels=(-1,), heads=2, text_pool=True,
                           text_encoder=build_text_encoder({"dim": 16, "layers": 1}, kind)), torch.randn(2, 1, 64))]:
        for p in net.parameters():   # leave the zero-initialised identity start
            p.data.add_(0.05 * torch.randn_like(p))
        net.eval()
        t = torch.tensor([300.0, 300.0])
        a = net(x, t, Condition({"text": kind.parse(["a kick", "a snare"], 2)}, {"text": kind}))
        b = net(x, t, Condition({"text": kind.parse(["a kick", "a tabla"], 2)}, {"text": kind}))
        assert torch.allclose(a[0], b[0], atol=1e-6) and not torch.allclose(a[1], b[1], atol=1e-4)
        assert torch.isfinite(net(x, t, Condition.null_of({"text": kind}, 2))).all()


def test_text_pool_is_the_masked_token_mean_projected():
    from diffuse.domains.text import TextPool

    torch.manual_seed(0)
    pool = TextPool(4, 3)
    ctx, mask = torch.randn(2, 5, 4), torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = pool((ctx, mask))
    want = torch.stack([ctx[0, :2].mean(0), ctx[1].mean(0)]) @ pool.weight.T + pool.bias
    assert torch.allclose(out, want, atol=1e-6)
    ctx2 = ctx.clone()
    ctx2[0, 2:] = 1e3    # what sits under the padding never matters
    assert torch.allclose(pool((ctx2, mask)), out)
    assert set(dict(pool.named_parameters())) == {"weight", "bias"}   # checkpoints keep their key names


def test_pretrained_encoder_adapter_errors_are_clear(tmp_path):
    kind = TextKind()
    with pytest.raises(ValueError, match="unknown text_encoder kind"):
        build_text_encoder({"kind": "bert"}, kind)
    with pytest.raises(ValueError, match="unknown text_encoder option"):
        build_text_encoder({"kind": "builtin", "path": "x"}, kind)
    with pytest.raises(ValueError, match="needs \"path\""):
        build_text_encoder({"kind": "hf"}, kind)
    try:
        import transformers  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="needs the transformers package"):
            build_text_encoder({"kind": "hf", "path": str(tmp_path)}, kind)
    else:  # pragma: no cover - transformers is not installed in the project's environment
        with pytest.raises(FileNotFoundError):
            build_text_encoder({"kind": "hf", "path": str(tmp_path / "missing")}, kind)


# ------------------------------------------------------------------ a text condition is really learned
class TextMLP(nn.Module):
    """2-D denoiser reading the prompt through the real text encoder (mean of the valid tokens)."""

    def __init__(self, kind, width=64):
        super().__init__()
        self.text = TextEncoder(kind.vocab_size, kind.max_len, dim=16, layers=1, heads=2)
        self.net = nn.Sequential(nn.Linear(2 + 16 + 16, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, 2))
        self.register_buffer("freqs", torch.exp(-math.log(1000.0) * torch.arange(8) / 8))

    def forward(self, x, noise_level, cond=None, space=None):
        ctx, mask = self.text(cond["text"])
        pooled = (ctx * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        arg = noise_level[:, None] * self.freqs[None]
        return self.net(torch.cat([x, torch.sin(arg), torch.cos(arg), pooled], 1))


def test_a_text_condition_trained_on_varied_captions_puts_samples_in_the_prompted_class():
    torch.manual_seed(0)
    classes = ["kick", "snare"]
    kind = text_kind_for(classes, max_len=6)
    cap = Captioner([CLASS_PHRASES[c] for c in classes], kind)
    space = DenseSpace()
    g = torch.Generator().manual_seed(0)
    diff = Diffusion(DiffusionConfig(cond_drop=0.2))
    den = diff.denoiser(TextMLP(kind))
    opt = torch.optim.Adam(den.parameters(), lr=3e-3)
    for _ in range(300):
        y = torch.randint(0, 2, (128,), generator=g)
        x0 = torch.stack([4.0 * y - 2.0, torch.zeros(128)], 1) + 0.3 * torch.randn(128, 2, generator=g)
        loss = diff.training_losses(den, Batch(x0, space, cap.condition(y, g)), g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    den.eval()

    @torch.no_grad()
    def side(prompt, scale=None):
        n = 200
        cond = Condition({"text": kind.parse(prompt, n) if prompt else kind.null(n)}, {"text": kind})
        x = prior_sample(diff.schedule, space, torch.zeros(n, 2), generator=torch.Generator().manual_seed(1))
        fn = den.bind(space, cond) if scale is None else classifier_free_guidance(den, space, cond, scale, diff.schedule)
        return float((ddim(fn, x, time_grid(diff.schedule, 40), schedule=diff.schedule, space=space)[:, 0] > 0)
                     .float().mean())

    assert side("an 808 bass drum hit") < 0.15 and side("a snare drum") > 0.85
    assert side("a kick") < 0.15 and side("snare") > 0.85            # other training phrasings
    assert side("a snare drum", scale=3.0) > 0.85
    assert 0.2 < side(None) < 0.8                                     # the empty prompt: both classes


# ------------------------------------------------------------------ image text models end to end
@pytest.fixture(scope="module")
def text_runs(tmp_path_factory):
    from tiny import train_tiny_image

    root = tmp_path_factory.mktemp("text_cli")
    return {"text": train_tiny_image(root, "text", ["--condition", "text"],
                                     {**TINY_UNET, "text_encoder": {"dim": 16, "layers": 1}}),
            "labels": train_tiny_image(root, "labels", ["--condition", "label"])}


def test_image_text_model_records_its_vocabulary_and_samples_from_a_prompt(text_runs, tmp_path):
    from click.testing import CliRunner

    import diffuse.api as api
    from diffuse.cli.main import main

    cfg = json.loads((text_runs["text"] / "config.json").read_text())
    assert cfg["data_info"]["conditions"]["text"]["type"] == "text"
    model = api.load(text_runs["text"], device="cpu")
    assert list(model.condition_kinds()) == ["text"]
    assert any(k.startswith("text_encoder.") for k in model.denoiser.backbone.state_dict())
    s = model.sample(3, steps=3, cond={"text": ["a handwritten seven", "the digit 1"]}, guidance_scale=3)
    assert s.cond.describe()["text"] == ["a handwritten seven", "the digit 1", "a handwritten seven"]
    zero = model.sample(2, steps=3, cond={"text": "a seven"}, guidance_scale=0)
    torch.testing.assert_close(zero.x, model.sample(2, steps=3).x, rtol=0, atol=0)   # s = 0: the empty prompt
    out = tmp_path / "s"
    res = CliRunner().invoke(main, ["sample", "-c", str(text_runs["text"]), "--num", "2", "--steps", "2",
                                    "--prompt", "a handwritten seven", "--guidance-scale", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "sample_0001.png").is_file()


@pytest.mark.parametrize("run, args, match", [
    ("labels", ["--prompt", "a handwritten seven"], "does not understand the condition(s) text"),
    ("text", ["--prompt", ""], "empty prompt"),
    ("text", ["--prompt", "zorblax quux"], "none of the words"),
    ("text", ["--prompt", " ".join(["seven"] * 17)], "at most 16"),
    ("text", ["--label", "7"], "does not understand the condition(s) label"),
])
def test_bad_prompt_input_is_one_error_line_and_writes_nothing(text_runs, tmp_path, run, args, match):
    from click.testing import CliRunner

    from diffuse.cli.main import main

    out = tmp_path / "never"
    res = CliRunner().invoke(main, ["sample", "-c", str(text_runs[run]), "--num", "2", "--steps", "2",
                                    "--out", str(out), *args])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], res.output
    assert not out.exists()


def test_bad_text_encoder_option_is_one_error_line(tmp_path):
    from click.testing import CliRunner

    from diffuse.cli.main import main

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model": {**TINY_UNET, "text_encoder": {"kind": "hf", "path": str(tmp_path)}}}))
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--domain", "image", "--config", str(cfg), "--condition", "text",
                                    "--steps", "1", "--no-progress", "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
