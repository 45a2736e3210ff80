"""Audio data: a folder (recursive) of WAV / FLAC / OGG files, or the bundled default set.

Every file is read once with soundfile, mixed down (or copied) to the configured channel
count, resampled to the configured rate with ``torchaudio.functional.resample`` and normalised
(peak or RMS loudness) per file; :meth:`AudioDataset.batch` then crops (randomly, drawing only
from the given generator, or from the start) or zero-pads each clip to the clip length.
Model space is the normalised waveform ``[B, C, L]``.

Options (``AudioDomain.default_data`` lists the defaults):

=============== ===========================================================================
sample_rate     target rate in Hz; ``None`` keeps the files' rate (they must then all agree)
clip_seconds    clip length in seconds (``length = round(clip_seconds * sample_rate)``)
channels        1 (mix down) or 2 (stereo; mono files are duplicated)
normalise       ``peak`` | ``loudness`` | ``none``
crop            ``random`` | ``start`` | ``auto`` (``start`` for the bundled one-shots, whose
                onsets are at the start; ``random`` otherwise)
short           what to do with a file shorter than the clip: ``pad`` (zeros at the end),
                ``error`` or ``skip``
labels          class labels from the first sub-folder name (bundled set: kick, snare, tom,
                cymbal, tabla); when true, ``Batch.cond["label"]`` holds them (``--condition label``)
text            captions drawn from the class labels ("a kick drum", "an 808 bass drum hit", ...;
                :data:`CLASS_PHRASES`, else generic phrasings of the sub-folder name) as the
                condition ``text`` (``--condition text``); reads the labels like ``labels``
skip_bad        skip unreadable / silent / bad files with a warning instead of failing
stream          ``auto`` | true | false: read clips lazily instead of holding whole files in
                memory (``auto``: files over 64 MB decoded, and every file of a set over 1 GB)
=============== ===========================================================================

Streaming (:class:`LazyClip`): a file already at the target rate is read with soundfile seeks,
only the frames of each crop; a file that needs resampling is decoded and resampled once, block
by block, into the on-disk cache (``core.data.cache``: keyed by path, mtime, size, rate and channels)
and memory-mapped. The normalisation gain comes from one block-wise pass over the file (cached
too). Crops equal those of whole-file reading (bit for bit without resampling; to float
rounding with it), so the same seed trains on the same data either way.

A folder's files with other extensions, empty (0-byte) files and, with ``skip_bad`` or
``short='skip'``, the files left out are summarised in one warning line by reason (each file's
own reason is logged at INFO); hidden files are ignored.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...core.data.cache import cached_array, cached_json, file_key
from ...core.data.datafiles import log_skipped, scan_folder, skipped_summary
from ...core.data.condition import Condition, LabelKind
from ...core.data.domain import Batch, DomainDataset
from ...core.errors import DataError, UserInputError
from ...core.data.space import DenseSpace
from ..text import Captioner, generic_phrases, text_kind_for
from . import io as _io
from .io import (AUDIO_EXTENSIONS, audio_info, decoded_blocks, normalise, normalise_gain, num_samples, read_audio,
                 read_frames, resample, resampled_length, to_channels)

__all__ = ["AudioDataset", "LazyClip", "DATA_OPTIONS", "CLASS_PHRASES", "audio_phrases", "load_audio_folder", "load_bundled", "BUNDLED_DIR",
           "resolve_options"]

log = logging.getLogger(__name__)
BUNDLED_DIR = Path(__file__).resolve().parent / "data"

DATA_OPTIONS: dict[str, Any] = {
    "sample_rate": 16000,
    "clip_seconds": 0.5,
    "channels": 1,
    "normalise": "peak",
    "crop": "auto",
    "short": "pad",
    "labels": False,
    "text": False,
    "skip_bad": False,
    "lowrate": None,   # bandwidth extension: condition on the clip resampled to this rate (Hz) and back
    "stream": "auto",
    "speech": False,   # speech recordings instead of the percussion (speech.py): true / "all" or "digits"
    "mel": None,       # vocoder: the clip's log-mel as the condition `mel` (mel.py): true or {n_fft, hop, ...}
    "noisy": None,     # denoising: the clip plus white noise at this SNR in dB (or [lo, hi]) as the condition `noisy`
}

#: ``stream: auto`` streams a file whose decoded samples (float32, all channels, its own rate) take
#: more than this, and every file of a set whose total does
STREAM_FILE_BYTES = 64 << 20
STREAM_SET_BYTES = 1 << 30

#: caption phrasings of the bundled classes (``text`` conditioning); other classes get generic ones
CLASS_PHRASES: dict[str, list[str]] = {
    "kick": ["a kick drum", "a kick", "a bass drum", "a bass drum hit", "an 808 bass drum hit", "a kick drum hit",
             "a deep kick", "kick"],
    "snare": ["a snare", "a snare drum", "a snare drum hit", "a snare hit", "a crisp snare", "snare"],
    "tom": ["a tom", "a tom drum", "a tom hit", "a tom tom", "a low tom", "tom"],
    "cymbal": ["a cymbal", "a cymbal crash", "a cymbal hit", "a hi hat", "a splash cymbal", "cymbal"],
    "tabla": ["a tabla", "a tabla hit", "an indian tabla drum", "a tabla stroke", "a hand drum", "tabla"],
}


def audio_phrases(classes: list[str] | None) -> list[list[str]]:
    """Caption phrasings per class: :data:`CLASS_PHRASES` or generic ones ("a NAME sound", ...)."""
    return [CLASS_PHRASES.get(c, generic_phrases(c, "sound")) for c in classes or []]


def resolve_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults plus ``options``; unknown keys or impossible values raise ``ValueError``."""
    opts = dict(DATA_OPTIONS)
    unknown = sorted(set(options or {}) - set(DATA_OPTIONS))
    if unknown:
        raise UserInputError(f"unknown audio data option(s): {', '.join(unknown)}; known: {', '.join(sorted(DATA_OPTIONS))}")
    opts.update(options or {})
    if opts["sample_rate"] is not None and int(opts["sample_rate"]) <= 0:
        raise UserInputError(f"sample_rate must be a positive integer, got {opts['sample_rate']!r}")
    if float(opts["clip_seconds"]) <= 0:
        raise UserInputError(f"clip_seconds must be positive, got {opts['clip_seconds']!r}")
    if int(opts["channels"]) not in (1, 2):
        raise UserInputError(f"channels must be 1 or 2, got {opts['channels']!r}")
    if opts["speech"] not in (False, True, "all", "digits"):
        raise UserInputError(f"speech must be false, true, 'all' or 'digits', got {opts['speech']!r}")
    for key, allowed in (("normalise", ("peak", "loudness", "none")), ("crop", ("auto", "random", "start")),
                         ("short", ("pad", "error", "skip")), ("stream", ("auto", True, False))):
        if opts[key] not in allowed:
            raise UserInputError(f"{key} must be one of {', '.join(allowed)}, got {opts[key]!r}")
    return opts


class LazyClip:
    """A decoded, normalised clip ``[C, N]`` read on demand: ``clip[:, a:b]`` reads only those
    samples (from the file with a seek, or from a memory-mapped cached array) times the gain."""

    def __init__(self, read, channels: int, length: int, gain: float | None) -> None:
        self._read, self.shape, self.gain = read, (int(channels), int(length)), gain

    def __getitem__(self, key) -> Tensor:
        rows, cols = key if isinstance(key, tuple) else (slice(None), slice(None))
        if rows != slice(None) or not isinstance(cols, slice) or cols.step not in (None, 1):
            raise IndexError("LazyClip supports clip[:, a:b] only")
        a, b, _ = cols.indices(self.shape[1])
        x = self._read(a, max(0, b - a))
        return x if self.gain is None else x * self.gain


class AudioDataset(DomainDataset):
    """Clips ``[C, N_i]`` (variable lengths; tensors in memory or :class:`LazyClip`) served as
    fixed-length ``[B, C, L]`` batches."""

    def __init__(self, clips: list[Tensor], sample_rate: int, length: int, *, crop: str = "random",
                 labels: list[int] | None = None, classes: list[str] | None = None,
                 names: list[str] | None = None, normalise_mode: str = "peak", source: str = "",
                 label_condition: bool = True, text: bool = False) -> None:
        if not clips:
            raise DataError(f"{source or 'audio data'}: no usable audio clips")
        self.clips = clips
        self.sample_rate = int(sample_rate)
        self.length = int(length)
        self.channels = int(clips[0].shape[0])
        self.crop = crop
        self.labels = torch.as_tensor(labels, dtype=torch.long) if labels is not None else None
        self.classes = classes
        self.names = names or [f"clip{i}" for i in range(len(clips))]
        self.normalise_mode = normalise_mode
        self.source = source
        self.space = DenseSpace()
        has = self.labels is not None and classes is not None
        if text and not has:
            raise DataError(f"{source or 'audio data'}: text conditioning needs class labels (one sub-folder per class)")
        self.label_condition = bool(label_condition) and has
        self._label_kind = LabelKind(len(classes), classes) if has else None
        self._captioner = Captioner(audio_phrases(classes), text_kind_for(classes)) if text else None

    def __len__(self) -> int:
        return len(self.clips)

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sample_rate": self.sample_rate, "channels": self.channels, "length": self.length,
            "clip_seconds": self.length / self.sample_rate, "normalise": self.normalise_mode,
            "num_clips": len(self.clips), "source": self.source,
        }
        if self.classes is not None:
            out["classes"] = list(self.classes)
            out["label_condition"] = self.label_condition
        out["text"] = self._captioner is not None
        return out

    def _fit(self, clip: Tensor, generator: torch.Generator | None) -> Tensor:
        n = clip.shape[-1]
        if n >= self.length:
            off = 0
            if self.crop == "random" and n > self.length:
                off = int(torch.randint(0, n - self.length + 1, (1,), generator=generator))
            return clip[:, off:off + self.length]
        return torch.nn.functional.pad(clip[:, 0:n], (0, self.length - n))

    def batch(self, indices: Tensor, generator: torch.Generator | None = None) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        x = torch.stack([self._fit(self.clips[int(i)], generator) for i in idx]).float()
        values: dict[str, Tensor] = {}
        kinds: dict[str, Any] = {}
        if self.label_condition:
            values["label"], kinds["label"] = self.labels[idx], self._label_kind
        if self._captioner is not None:   # one caption per clip, drawn from the batch generator
            values["text"], kinds["text"] = self._captioner(self.labels[idx], generator), self._captioner.kind
        return Batch(x, self.space, Condition(values, kinds) if values else None)


def _too_short(n: int, name: str, opts: dict[str, Any], target_rate: int, length: int) -> bool:
    """Whether to skip a file of ``n`` samples (at the target rate); an error if it must not be short."""
    if n < length and opts["short"] != "pad":
        if opts["short"] == "skip":
            log.info("%s: skipped, %d samples at %d Hz is shorter than the clip (%d)", name, n, target_rate, length)
            return True
        raise DataError(f"{name}: {n / target_rate:.3f} s long, shorter than the clip "
                        f"({length / target_rate:.3f} s); use short='pad' or 'skip', or a shorter clip_seconds")
    return False


def _prepare(x: Tensor, rate: int, name: str, opts: dict[str, Any], target_rate: int, length: int) -> Tensor | None:
    """Channels, resampling, length check and normalisation of one decoded file."""
    x = to_channels(x, int(opts["channels"]), name)
    x = resample(x, rate, target_rate)
    if _too_short(x.shape[-1], name, opts, target_rate, length):
        return None
    return normalise(x, opts["normalise"], name).contiguous()


def _stats(blocks) -> dict[str, float]:
    """Peak ``max |x|`` and RMS over blocks ``[C, n]`` (float64 sums)."""
    peak, sumsq, count = 0.0, 0.0, 0
    for b in blocks:
        peak = max(peak, float(b.abs().max())) if b.numel() else peak
        sumsq += float(b.double().pow(2).sum())
        count += b.numel()
    return {"peak": peak, "rms": math.sqrt(sumsq / max(count, 1))}


def _convert(path: Path, channels: int, rate: int, n: int, out_path: Path) -> None:
    """Decode and resample ``path`` block by block into a ``[channels, n]`` float32 ``.npy``."""
    out = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float32, shape=(channels, n))
    pos = 0
    for block in decoded_blocks(path, channels, rate):
        out[:, pos:pos + block.shape[-1]] = block.numpy()
        pos += block.shape[-1]
    if pos != n:
        raise DataError(f"{path}: decoded {pos} samples, expected {n}; the file changed while being read?")
    out.flush()
    del out


def _prepare_lazy(path: Path, frames: int, rate: int, opts: dict[str, Any], target_rate: int,
                  length: int) -> LazyClip | None:
    """:func:`_prepare` for a streamed file: a :class:`LazyClip` with the same samples."""
    name, channels = str(path), int(opts["channels"])
    to_channels(read_frames(path, 0, 1), channels, name)   # a channel-count mismatch fails here, as read whole
    n = resampled_length(frames, rate, target_rate)
    if _too_short(n, name, opts, target_rate, length):
        return None
    key = file_key(path, channels=channels, rate=target_rate)
    if rate == target_rate:   # soundfile seeks: only the frames of each crop are read
        def read(a: int, k: int) -> Tensor:
            return to_channels(read_frames(path, a, k), channels, name)
        stats = cached_json("audio_stats", key, lambda: _stats(decoded_blocks(path, channels, target_rate)))
    else:                     # decoded and resampled once into the cache, then memory-mapped
        arr = cached_array("audio", key, lambda out: _convert(path, channels, target_rate, n, out))

        def read(a: int, k: int) -> Tensor:
            return torch.from_numpy(np.array(arr[:, a:a + k], dtype=np.float32))
        step = _io.BLOCK_FRAMES
        stats = cached_json("audio_stats", key, lambda: _stats(
            torch.from_numpy(np.array(arr[:, a:a + step])) for a in range(0, n, step)))
    mode = opts["normalise"]
    gain = None if mode == "none" else normalise_gain(mode, stats["peak"], stats["rms"], name)
    return LazyClip(read, channels, n, gain)


def _load(files: list[Path], labels: list[int] | None, classes: list[str] | None,
          opts: dict[str, Any], source: str, default_crop: str,
          skipped: list[tuple[Path, str]] | None = None) -> AudioDataset:
    skipped = list(skipped or [])
    try:
        return _decode_all(files, labels, classes, opts, source, default_crop, skipped)
    finally:
        log_skipped(source, skipped)


def _read_or_skip(read, f: Path, opts: dict[str, Any], skipped: list[tuple[Path, str]]):
    """``read(f)``; with ``skip_bad``, ``None`` for an unreadable file (logged and recorded in
    ``skipped``), else its DataError."""
    try:
        return read(f)
    except DataError as exc:
        if not opts["skip_bad"]:
            raise
        log.info("skipped bad file: %s", exc)
        skipped.append((f, "unreadable"))
        return None


def _decode_all(files: list[Path], labels: list[int] | None, classes: list[str] | None, opts: dict[str, Any],
                source: str, default_crop: str, skipped: list[tuple[Path, str]]) -> AudioDataset:
    headers: list[tuple[Path, int, int, int | None]] = []   # file, frames, bytes decoded, label
    rates: dict[Path, int] = {}
    for i, f in enumerate(files):
        info = _read_or_skip(audio_info, f, opts, skipped)
        if info is None:
            continue
        frames, channels, rates[f] = info
        headers.append((f, frames, frames * channels * 4, labels[i] if labels is not None else None))
    stream_all = opts["stream"] is True or (opts["stream"] == "auto" and sum(h[2] for h in headers) > STREAM_SET_BYTES)
    decoded: list[tuple[Path, Tensor | int, int, int | None]] = []   # a streamed file keeps its frame count
    for f, frames, size, lab in headers:
        if stream_all or (opts["stream"] == "auto" and size > STREAM_FILE_BYTES):
            decoded.append((f, frames, rates[f], lab))
            continue
        read = _read_or_skip(read_audio, f, opts, skipped)
        if read is None:
            continue
        x, rate = read
        decoded.append((f, x, rate, lab))
    if not decoded:
        raise DataError(f"{source}: none of the {len(files)} audio files could be read")
    target_rate = opts["sample_rate"]
    if target_rate is None:
        target_rate = decoded[0][2]
        for f, _, rate, _ in decoded:
            if rate != target_rate:
                raise DataError(f"{f}: sample rate {rate} Hz differs from {target_rate} Hz of {decoded[0][0].name}; "
                                f"set sample_rate to resample all files to one rate")
    target_rate = int(target_rate)
    length = num_samples(float(opts["clip_seconds"]), target_rate)
    clips, kept_labels, names = [], [], []
    for f, x, rate, lab in decoded:
        try:
            y = (_prepare(x, rate, str(f), opts, target_rate, length) if isinstance(x, Tensor)
                 else _prepare_lazy(f, x, rate, opts, target_rate, length))
        except DataError as exc:
            if not opts["skip_bad"]:
                raise
            log.info("skipped bad file: %s", exc)
            skipped.append((f, "unusable (silent or wrong channels)"))
            continue
        if y is None:
            skipped.append((f, "shorter than the clip"))
            continue
        clips.append(y)
        kept_labels.append(lab)
        names.append(f.name)
    if not clips:
        raise DataError(f"{source}: no usable clips left after skipping bad or short files")
    padded = sum(c.shape[-1] < length for c in clips)
    if padded:
        log.info("%d of %d clips are shorter than %.3f s and are zero-padded", padded, len(clips), length / target_rate)
    crop = default_crop if opts["crop"] == "auto" else opts["crop"]
    return AudioDataset(clips, target_rate, length, crop=crop,
                        labels=kept_labels if labels is not None else None, classes=classes,
                        names=names, normalise_mode=opts["normalise"], source=source,
                        label_condition=bool(opts["labels"]), text=bool(opts["text"]))


def load_audio_folder(path: str | Path, options: dict[str, Any] | None = None) -> AudioDataset:
    """Read every WAV / FLAC / OGG under ``path`` (recursively), or the single file ``path``.
    Other files and empty files in the folder are skipped (one summary line)."""
    opts = resolve_options(options)
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"{root}: no such file or folder; expected a folder of WAV / FLAC / OGG files")
    skipped: list[tuple[Path, str]] = []
    if root.is_file():
        files = [root]
        if root.suffix.lower() not in AUDIO_EXTENSIONS:
            raise DataError(f"{root}: unsupported audio format {root.suffix!r}; expected one of {', '.join(AUDIO_EXTENSIONS)}")
    else:
        files, skipped = scan_folder(root, AUDIO_EXTENSIONS)
        if not files:
            raise DataError(f"{root}: no WAV / FLAC / OGG files found ("
                            + (skipped_summary(skipped) if skipped else "folder is empty") + ")")
    labels = classes = None
    if opts["labels"] or opts["text"]:
        if root.is_file():
            raise DataError(f"{root}: class labels need a folder with one sub-folder per class")
        names = []
        for f in files:
            rel = f.relative_to(root)
            if len(rel.parts) < 2:
                raise DataError(f"{f}: not inside a class sub-folder; with labels=true every file must be in <folder>/<class>/...")
            names.append(rel.parts[0])
        classes = sorted(set(names))
        labels = [classes.index(n) for n in names]
    return _load(files, labels, classes, opts, str(root), default_crop="random", skipped=skipped)


def load_bundled(options: dict[str, Any] | None = None) -> AudioDataset:
    """The bundled default: 70 CC0 percussion one-shots from Sonic Pi (see ``data/README.md``)."""
    opts = resolve_options(options)
    manifest = BUNDLED_DIR / "manifest.csv"
    if not manifest.is_file():
        raise DataError(f"{manifest}: bundled audio manifest is missing; the package install is incomplete")
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    classes = sorted({r["label"] for r in rows})
    files = [BUNDLED_DIR / r["file"] for r in rows]
    labels = [classes.index(r["label"]) for r in rows]
    if not (opts["labels"] or opts["text"]):
        labels, classes = None, None
    return _load(files, labels, classes, opts, "bundled:sonic-pi-percussion", default_crop="start")
