"""Text prompts for every domain: a shipped word tokenizer, captions drawn from class labels,
the ``text`` condition kind and a small text encoder trained with the model.

One place, used by the image and the audio domain alike (domains do not copy each other):

* :class:`Tokenizer`: word level. A prompt is lower-cased and split into runs of letters and
  digits (``"An 808 kick!"`` -> ``an 808 kick``; punctuation and hyphens separate words). Each
  word maps to its id in the vocabulary shipped as ``text_vocab.json`` (package data, written by
  hand for this project: the words of the caption templates plus a few hundred common English
  words, no download, no licence terms). Id 0 is padding, id 1 ``<unk>``: a word outside the
  vocabulary becomes ``<unk>`` (no character fallback; a prompt made only of unknown words is
  refused). Class names of the user's data that the vocabulary lacks are appended to it at
  training (``extra_words`` of the kind's spec), so captions of any labelled data set tokenize
  without ``<unk>``.
* :class:`TextKind`: the ``text`` condition, a :class:`~diffuse.core.data.condition.TokensKind`
  (token ids ``[n, max_len]``, null = the empty prompt, all padding) whose ``parse`` also takes
  strings. Its spec records ``max_len``, the vocabulary version and the extra words, so a
  checkpoint rebuilds exactly the tokenizer it was trained with.
* :class:`Captioner`: turns class labels into varied captions (``"a handwritten seven"``,
  ``"the digit 7"`` ...), one phrasing per sample drawn from the batch generator, so training
  stays reproducible from the seed.
* :class:`TextEncoder`: token embedding + learned positions + a small pre-norm transformer
  encoder (2 layers, width 64 by default, about 0.1 M parameters). It is built *inside* the
  backbone (the U-Nets take ``text_encoder=``), so it trains, checkpoints and is averaged (EMA)
  with the model. A learned start token is always present, so the empty prompt still gives the
  cross-attention one valid token (the learned "no text" context) instead of an all-masked row.
* :class:`HFTextEncoder`: optional adapter for a pretrained CLIP / T5 text encoder the user has
  as local files (model option ``{"text_encoder": {"kind": "hf", "path": "/local/dir"}}``);
  loaded through ``transformers`` with ``local_files_only=True`` and kept frozen (outside the
  saved state: it is reloaded from ``path``), with a trained projection. The prompt reaches it through the word tokenizer above (ids are decoded back to
  words and re-tokenized by the pretrained tokenizer), so words outside the shipped vocabulary
  arrive as ``<unk>``.

Rebuild the vocabulary file (only needed when the word list here changes)::

    python -m diffuse.domains.text
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..core.data.condition import Condition, TokensKind, _per_sample, register_kind
from ..core.errors import MissingPathError, UserInputError

__all__ = ["Tokenizer", "TextKind", "Captioner", "TextEncoder", "HFTextEncoder", "TextPool", "build_text_encoder",
           "text_kind_for", "generic_phrases", "with_article", "split_words", "text_context",
           "VOCAB_PATH", "VOCAB_VERSION", "PAD", "UNK", "DEFAULT_MAX_LEN"]

VOCAB_PATH = Path(__file__).resolve().parent / "text_vocab.json"
VOCAB_VERSION = 1
PAD, UNK = "<pad>", "<unk>"
DEFAULT_MAX_LEN = 16
_WORD = re.compile(r"[a-z]+|[0-9]+")

#: the shipped word list (``python -m diffuse.domains.text`` writes it to ``text_vocab.json``)
_WORDS = """
a an the this that these those some any one two three four five six seven eight nine ten zero
0 1 2 3 4 5 6 7 8 9 808 909
of in on at by with without for from to into over under and or not no yes is are was be it its
image picture photo photograph drawing sketch painting scan figure illustration icon sign symbol
digit digits number numeral numbers character letter handwritten handwriting written hand drawn draw write
sound sounds sample samples clip recording audio noise tone note beat loop hit hits stroke strike shot
drum drums kick bass snare tom toms cymbal cymbals crash ride splash hi hat hihat tabla tablas percussion
drumkit kit acoustic electronic electric synth synthetic analog digital machine indian
deep low high mid soft hard loud quiet short long bright dark heavy light fat thin punchy crisp sharp dull
big small large tiny huge round square thick bold clean dirty old new fast slow open closed pedal dry wet
black white gray grey red green blue yellow orange purple pink brown
very quite really more less most least much many few
cat dog bird fish horse car truck ship plane airplane boat house tree flower face person man woman child
cow sheep frog deer shoe shirt bag dress coat sandal sneaker boot trouser pullover
please make create generate give show me my your our their his her
like looking looks look style kind type sort class
first second third last next other another same different
good bad nice beautiful ugly simple plain pretty neat messy
"""


def split_words(text: str) -> list[str]:
    """Lower-cased runs of letters or digits: ``"An 808-kick!"`` -> ``["an", "808", "kick"]``."""
    return _WORD.findall(str(text).lower())


def with_article(phrase: str) -> str:
    """``"a seven"``, ``"an eight"``, ``"an 808 kick"`` (by the sound of the first word, roughly)."""
    first = phrase.split()[0] if phrase.split() else ""
    vowel = first[:1] in tuple("aeio") or first.startswith(("8", "11", "18")) or first in ("hour", "honest")
    return ("an " if vowel else "a ") + phrase


def generic_phrases(name: str, medium: str) -> list[str]:
    """Caption phrasings for a class ``name`` without a hand-written list (``medium``: e.g.
    ``"picture"`` or ``"sound"``): ``"cat"``, ``"a cat"``, ``"a picture of a cat"``, ``"a cat picture"``."""
    words = " ".join(split_words(name.replace("_", " "))) or str(name)
    return [words, with_article(words), f"{with_article(medium)} of {with_article(words)}", with_article(f"{words} {medium}")]


@lru_cache(maxsize=1)
def _builtin_words() -> tuple[str, ...]:
    with open(VOCAB_PATH, encoding="utf-8") as fh:
        data = json.load(fh)
    if data.get("version") != VOCAB_VERSION:
        raise UserInputError(f"{VOCAB_PATH}: vocabulary version {data.get('version')!r}, expected {VOCAB_VERSION}")
    return tuple(data["words"])


class Tokenizer:
    """Word-level tokenizer: ``encode(text) -> ids``, ``decode(ids) -> text`` (see the module docstring)."""

    def __init__(self, words: Sequence[str]) -> None:
        words = list(words)
        if words[:2] != [PAD, UNK] or len(set(words)) != len(words):
            raise UserInputError("a vocabulary starts with <pad>, <unk> and holds every word once")
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}
        self.pad_id, self.unk_id = 0, 1

    @classmethod
    def builtin(cls, extra_words: Sequence[str] = ()) -> "Tokenizer":
        """The shipped vocabulary, plus ``extra_words`` (not already in it) appended in order."""
        base = list(_builtin_words())
        have = set(base)
        return cls(base + [w for w in extra_words if w not in have and not have.add(w)])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        return [self.index.get(w, self.unk_id) for w in split_words(text)]

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return " ".join(self.words[i] for i in ids if i != self.pad_id)

    def unknown(self, text: str) -> list[str]:
        """The words of ``text`` outside the vocabulary."""
        return [w for w in split_words(text) if w not in self.index]


@register_kind
class TextKind(TokensKind):
    """Text prompts as word ids ``long [n, max_len]`` (null = the empty prompt, all padding).

    ``parse`` takes a string, a list of strings (cycled over the samples) or token ids. A prompt
    that is empty, longer than ``max_len`` words or made only of unknown words is a ``ValueError``."""

    type = "text"

    def __init__(self, max_len: int = DEFAULT_MAX_LEN, extra_words: Sequence[str] | None = None,
                 vocab_version: int = VOCAB_VERSION) -> None:
        if int(vocab_version) != VOCAB_VERSION:
            raise UserInputError(f"this model was trained with text vocabulary version {vocab_version}; this "
                             f"installation ships version {VOCAB_VERSION}")
        self.extra_words = [str(w) for w in (extra_words or [])]
        self.tokenizer = Tokenizer.builtin(self.extra_words)
        super().__init__(vocab_size=len(self.tokenizer), max_len=max_len, pad_id=self.tokenizer.pad_id)

    def encode(self, texts: Sequence[str]) -> Tensor:
        """Captions -> ids ``[len(texts), max_len]`` (longer captions are cut to ``max_len``)."""
        out = self.null(len(texts))
        for i, t in enumerate(texts):
            ids = self.tokenizer.encode(t)[: self.max_len]
            out[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def parse(self, value: Any, n: int) -> Tensor:
        if isinstance(value, str) or (isinstance(value, (list, tuple)) and value and isinstance(value[0], str)):
            rows = []
            for text in _per_sample(value, n, "prompt"):
                if not isinstance(text, str):
                    raise UserInputError(f"a prompt must be text, got {text!r}")
                words = split_words(text)
                if not words:
                    raise UserInputError(f"empty prompt {text!r}; give words, or no prompt for unconditional samples")
                if len(words) > self.max_len:
                    raise UserInputError(f"prompt {text!r} has {len(words)} words; this model takes at most {self.max_len}")
                if len(self.tokenizer.unknown(text)) == len(words):
                    raise UserInputError(f"none of the words of the prompt {text!r} are in the model's vocabulary")
                rows.append(self.tokenizer.encode(text))
            return super().parse(rows, n)
        return super().parse(value, n)

    def spec(self) -> dict[str, Any]:
        return {"type": self.type, "max_len": self.max_len, "extra_words": list(self.extra_words),
                "vocab_version": VOCAB_VERSION}

    def describe(self, values: Tensor) -> list[Any]:
        return [self.tokenizer.decode(row) or None for row in values]


def text_kind_for(class_names: Sequence[str] | None, max_len: int = DEFAULT_MAX_LEN) -> TextKind:
    """The ``text`` kind for data with these class names: the shipped vocabulary plus the words of
    the class names it lacks."""
    base = set(_builtin_words())
    extra: list[str] = []
    for name in class_names or []:
        for w in split_words(str(name).replace("_", " ")):
            if w not in base and w not in extra:
                extra.append(w)
    return TextKind(max_len=max_len, extra_words=extra)


class Captioner:
    """Captions for class labels: ``phrases[c]`` lists the phrasings of class ``c``; each sample
    gets one drawn uniformly from the generator (one ``torch.randint`` call per batch)."""

    def __init__(self, phrases: Sequence[Sequence[str]], kind: TextKind) -> None:
        if not phrases or any(len(p) == 0 for p in phrases):
            raise UserInputError("every class needs at least one caption phrasing")
        self.phrases = [list(p) for p in phrases]
        self.kind = kind
        width = max(len(p) for p in self.phrases)
        # every phrasing tokenized once; [classes, width, max_len], rows past a class's list repeat it
        self._ids = torch.stack([kind.encode([p[j % len(p)] for j in range(width)]) for p in self.phrases])
        self._count = torch.tensor([len(p) for p in self.phrases])

    def captions(self, labels: Tensor, generator: torch.Generator | None = None) -> list[str]:
        """The caption strings :meth:`__call__` would encode (same draw from the same generator state)."""
        choice = self._choose(labels, generator)
        return [self.phrases[int(c)][int(j)] for c, j in zip(labels, choice)]

    def _choose(self, labels: Tensor, generator: torch.Generator | None) -> Tensor:
        labels = labels.long().cpu()
        u = torch.rand(len(labels), generator=generator)
        return (u * self._count[labels]).long().clamp(max=self._count[labels] - 1)

    def __call__(self, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Token ids ``[B, max_len]`` of one caption per label."""
        choice = self._choose(labels, generator)
        return self._ids[labels.long().cpu(), choice]

    def condition(self, labels: Tensor, generator: torch.Generator | None = None) -> Condition:
        return Condition({"text": self(labels, generator)}, {"text": self.kind})


# ------------------------------------------------------------------------------ encoders
class TextEncoder(nn.Module):
    """Token ids ``[B, L]`` -> context ``[B, L + 1, dim]`` and mask ``[B, L + 1]`` (True = a real
    token; position 0 is a learned start token, always valid). Embedding + learned positions +
    ``layers`` pre-norm transformer encoder layers + a final LayerNorm."""

    def __init__(self, vocab_size: int, max_len: int, dim: int = 64, layers: int = 2, heads: int = 4,
                 pad_id: int = 0) -> None:
        super().__init__()
        if dim < 1 or layers < 0 or heads < 1 or dim % heads:
            raise UserInputError(f"text encoder: need dim >= 1 divisible by heads >= 1 and layers >= 0, got "
                             f"dim={dim}, heads={heads}, layers={layers}")
        self.dim, self.max_len, self.pad_id = int(dim), int(max_len), int(pad_id)
        self.embed = nn.Embedding(vocab_size, dim)
        self.start = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, max_len + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False) if layers else None
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        ids = ids.long()
        b, n = ids.shape
        if n > self.max_len:
            raise UserInputError(f"{n} tokens; this text encoder takes at most {self.max_len}")
        mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=ids.device), ids != self.pad_id], dim=1)
        h = torch.cat([self.start.expand(b, 1, self.dim), self.embed(ids)], dim=1) + self.pos[:, : n + 1]
        if self.encoder is not None:
            h = self.encoder(h, src_key_padding_mask=~mask)
        return self.norm(h), mask


class HFTextEncoder(nn.Module):
    """A frozen pretrained text encoder from local files (CLIP or T5 via ``transformers``) with a
    trained linear projection to ``dim``. Same interface as :class:`TextEncoder`."""

    def __init__(self, path: str, tokenizer: Tokenizer, dim: int = 64, max_len: int = 77) -> None:
        super().__init__()
        try:
            import transformers
        except ImportError:
            raise UserInputError('text_encoder kind "hf" needs the transformers package, which is not installed '
                             "(pip install transformers); or use the built-in encoder") from None
        p = Path(str(path)).expanduser()
        if not p.is_dir():
            raise MissingPathError(f"{p}: no such folder (expected a local Hugging Face model folder)")
        self.words = tokenizer
        try:
            self.hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(p), local_files_only=True)
            config = transformers.AutoConfig.from_pretrained(str(p), local_files_only=True)
            if getattr(config, "model_type", "") == "t5":
                model = transformers.T5EncoderModel.from_pretrained(str(p), local_files_only=True)
            elif getattr(config, "model_type", "") == "clip":
                model = transformers.CLIPTextModel.from_pretrained(str(p), local_files_only=True)
            else:
                model = transformers.AutoModel.from_pretrained(str(p), local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise UserInputError(f"{p}: cannot load a pretrained text encoder from this folder ({exc})") from None
        # kept out of the module tree: frozen, not saved in checkpoints (reloaded from `path`), not EMA'd
        object.__setattr__(self, "hf_model", model.eval().requires_grad_(False))
        width = int(getattr(model.config, "hidden_size", 0) or getattr(model.config, "d_model"))
        self.proj = nn.Linear(width, dim)
        self.dim, self.hf_max_len = int(dim), int(max_len)

    def forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        texts = [self.words.decode(row) for row in ids.cpu()]
        enc = self.hf_tokenizer(texts, padding="max_length", truncation=True, max_length=self.hf_max_len,
                                return_tensors="pt").to(ids.device)
        model = self.hf_model.to(ids.device)
        with torch.no_grad():
            hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        mask = enc["attention_mask"].bool()
        mask[:, 0] = True   # never an all-masked row (the empty prompt)
        return self.proj(hidden.float()), mask


_ENCODER_OPTIONS = {"builtin": {"kind", "dim", "layers", "heads"}, "hf": {"kind", "path", "dim", "max_len"}}


def check_text_encoder_options(options: Any) -> dict[str, Any]:
    """The model option ``text_encoder`` checked (kind, known keys, value types) without building
    anything; a ``ValueError`` naming the bad key. Returns the options as a dict."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise UserInputError(f"model.text_encoder must be a JSON object such as {{\"dim\": 64, \"layers\": 2}}, got {options!r}")
    opts = dict(options)
    which = opts.get("kind", "builtin")
    if which not in _ENCODER_OPTIONS:
        raise UserInputError(f"unknown text_encoder kind {which!r}; expected builtin or hf")
    unknown = sorted(set(opts) - _ENCODER_OPTIONS[which])
    if unknown:
        raise UserInputError(f"unknown text_encoder option(s) for kind {which}: {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(_ENCODER_OPTIONS[which]))}")
    for key in ("dim", "layers", "heads", "max_len"):
        v = opts.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise UserInputError(f"model.text_encoder.{key} must be a positive integer, got {v!r}")
    if which == "hf" and not (isinstance(opts.get("path"), str) and opts["path"]):
        raise UserInputError('text_encoder kind "hf" needs "path": a local folder with the pretrained model')
    return opts


def build_text_encoder(options: Mapping[str, Any] | None, kind: TextKind) -> nn.Module:
    """The text encoder for a model option ``text_encoder`` (``None``: the built-in one)::

        {"kind": "builtin", "dim": 64, "layers": 2, "heads": 4}     # default, trained with the model
        {"kind": "hf", "path": "/local/clip-or-t5", "dim": 64}       # frozen pretrained, local files only
    """
    opts = check_text_encoder_options(options)
    which = opts.get("kind", "builtin")
    if which == "hf":
        return HFTextEncoder(opts["path"], kind.tokenizer, int(opts.get("dim", 64)), int(opts.get("max_len", 77)))
    return TextEncoder(kind.vocab_size, kind.max_len, int(opts.get("dim", 64)), int(opts.get("layers", 2)),
                       int(opts.get("heads", 4)), kind.pad_id)


class TextPool(nn.Linear):
    """The pooled prompt for a backbone's time embedding (as Imagen adds its pooled text
    embedding): the mean of the valid tokens of ``(context [B, S, D], mask [B, S])``, projected
    to ``[B, out_features]``. Added to the time embedding, the prompt reaches every ResBlock the
    way a class label does, not only the cross-attention levels. (A ``Linear`` subclass, so its
    weights keep the names ``weight`` / ``bias``.)"""

    def forward(self, text: tuple[Tensor, Tensor]) -> Tensor:  # type: ignore[override]
        ctx, mask = text
        m = mask[..., None].to(ctx.dtype)
        return super().forward((ctx * m).sum(1) / m.sum(1).clamp_min(1.0))


def text_context(encoder: nn.Module | None, cond: Any) -> tuple[Tensor, Tensor] | None:
    """``(context, mask)`` of the ``text`` entry of a :class:`Condition` (``None`` if it has none);
    a ``ValueError`` if there is text but no encoder."""
    if not isinstance(cond, Condition) or "text" not in cond:
        return None
    if encoder is None:
        raise UserInputError("this backbone was built without a text encoder, so it cannot take text prompts")
    return encoder(cond["text"])


def _write_vocab(path: Path = VOCAB_PATH) -> Path:
    words = [PAD, UNK]
    for w in _WORDS.split():
        if w not in words:
            words.append(w)
    data = {"version": VOCAB_VERSION, "source": "written by hand for diffuse (caption words plus common "
            "English words); public domain / CC0", "words": words}
    path.write_text(json.dumps(data, indent=0) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":  # pragma: no cover
    import logging

    logging.basicConfig(level=logging.INFO)
    logging.getLogger(__name__).info("wrote %s", _write_vocab())
