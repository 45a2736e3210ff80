"""The transformers text-encoder adapter (``text_encoder: {"kind": "hf"}``) end to end: a small,
randomly initialised CLIP text model and a T5 encoder, each saved with a word-level tokenizer to a
local folder (nothing downloaded), load through ``domains.text.HFTextEncoder``; a prompt-conditioned
digit model trains through the CLIP one, is reloaded from its run folder and samples from
prompts. Skips where transformers is not installed (the ``text`` extra)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from diffuse.cli.main import main  # noqa: E402
from diffuse.domains.text import HFTextEncoder, Tokenizer  # noqa: E402
from tiny import TINY_UNET  # noqa: E402

WORDS = ["a", "an", "handwritten", "digit", "number", "zero", "one", "two", "three", "four", "five", "six", "seven",
         "eight", "nine", "drawn", "written", "by", "hand", "the", "of", "picture", "image"]


def _tokenizer(folder: Path) -> None:
    """A word-level fast tokenizer (the words above) saved as ``tokenizer.json`` in ``folder``."""
    from tokenizers import Tokenizer as Raw, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[BOS]", *WORDS])}
    raw = Raw(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]",
                                                bos_token="[BOS]")
    fast.save_pretrained(str(folder))


def _clip(folder: Path) -> Path:
    torch.manual_seed(0)
    config = transformers.CLIPTextConfig(vocab_size=len(WORDS) + 3, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                                         pad_token_id=0, bos_token_id=2, eos_token_id=1)
    transformers.CLIPTextModel(config).save_pretrained(str(folder))
    _tokenizer(folder)
    return folder


def _t5(folder: Path) -> Path:
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=len(WORDS) + 3, d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                   num_heads=2, pad_token_id=0, decoder_start_token_id=0)
    transformers.T5EncoderModel(config).save_pretrained(str(folder))
    _tokenizer(folder)
    return folder


@pytest.mark.parametrize("make, width", [(_clip, 16), (_t5, 16)])
def test_a_local_model_encodes_prompts(make, width, tmp_path):
    folder = make(tmp_path / "enc")
    assert any(p.suffix == ".safetensors" for p in folder.iterdir())          # no pickle written or read
    words = Tokenizer.builtin()
    enc = HFTextEncoder(str(folder), words, dim=8, max_len=8)
    assert not any(p.requires_grad for p in enc.hf_model.parameters())       # frozen
    assert sum(p.numel() for p in enc.parameters()) == width * 8 + 8          # only the projection trains
    ids = torch.tensor([words.encode("a handwritten seven") + [0] * 3, words.encode("") + [0] * 6])[:, :6]
    out, mask = enc(ids)
    assert out.shape == (2, 8, 8) and mask.shape == (2, 8) and mask[:, 0].all()
    assert int(mask[0].sum()) == 3 and torch.isfinite(out).all()             # three words, padding masked
    # the frozen model is the saved one: a second load gives the same hidden states
    assert torch.equal(enc.hf_model(input_ids=torch.tensor([[3, 4]])).last_hidden_state,
                       HFTextEncoder(str(folder), words, 8, 8).hf_model(input_ids=torch.tensor([[3, 4]])).last_hidden_state)


def test_a_prompt_conditioned_digit_model_trains_through_it(tmp_path):
    folder = _clip(tmp_path / "clip")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model": {**TINY_UNET, "text_encoder": {"kind": "hf", "path": str(folder), "dim": 16,
                                                                       "max_len": 8}},
                               "train": {"final_eval": False}}))
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "--domain", "image", "--config", str(cfg), "--condition", "text",
                                    "--steps", "3", "--batch-size", "8", "--no-progress", "--device", "cpu",
                                    "--eval-samples", "0", "--out", str(run)])
    assert res.exit_code == 0, res.output
    losses = [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) >= 1 and all(torch.isfinite(torch.tensor(losses)))
    res = CliRunner().invoke(main, ["sample", "-c", str(run), "--num", "2", "--steps", "3", "--device", "cpu",
                                    "--prompt", "a handwritten seven", "--prompt", "the digit two",
                                    "--guidance-scale", "2", "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "s").glob("sample_*.png"))) == 2
    import diffuse.api as api
    model = api.load(run, device="cpu")
    a = model.sample(2, steps=3, seed=0, cond={"text": "a handwritten seven"}, guidance_scale=3)
    b = model.sample(2, steps=3, seed=0, cond={"text": "the digit two"}, guidance_scale=3)
    assert not torch.equal(a.x, b.x)                  # the prompt reaches the network through the adapter
