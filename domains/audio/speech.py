"""Speech data: a folder of speech recordings, by default the Asterisk prompts of one English speaker.

``data_options.speech`` (``true`` / ``"all"`` or ``"digits"``) reads speech instead of the
bundled percussion:

* with ``--data FOLDER``: every WAV / FLAC / OGG under the folder (recursively);
* without: Debian's ``asterisk-core-sounds-en-wav`` when installed (568 recordings of Allison
  Smith, 8 kHz mono, about 25 minutes: digits, letters, the phonetic alphabet, prompts; CC-BY-SA-3.0;
  ``apt-get install asterisk-core-sounds-en-wav``, read from :data:`ASTERISK_DIR`), else the small
  subset shipped in ``data/speech/`` under the same licence (see its README);
* ``"digits"``: only the spoken digits ``digits/0.wav`` .. ``digits/9.wav`` of that folder,
  labelled ``zero`` .. ``nine`` (SC09-style words of one speaker; ``--condition label``).

The folder ``silence/`` (recordings of silence) is left out. Every recording must have one
sample rate, at least :data:`MIN_SPEECH_RATE` (8 kHz, telephone speech): a mix of rates is refused
with one line naming two files (resample them first, or give ``sample_rate`` to read a set of
one rate at another). The held-out part of a run (``train.holdout_fraction``) is a set of whole
recordings (utterances), drawn with the run's seed; with ``--data`` a folder of several speakers can
be split by speaker by giving the held-out speakers' folder as the evaluation ``--data``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...core.data.datafiles import scan_folder, skipped_summary
from ...core.errors import DataError, UserInputError
from .data import BUNDLED_DIR, AudioDataset, _load
from .io import AUDIO_EXTENSIONS, audio_info

__all__ = ["ASTERISK_DIR", "SHIPPED_SPEECH_DIR", "DIGIT_NAMES", "MIN_SPEECH_RATE", "SPEECH_SUBSETS",
           "speech_folder", "speech_files", "load_speech"]

#: where Debian's asterisk-core-sounds-en-wav puts the English prompts (Allison Smith, 8 kHz)
ASTERISK_DIR = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
#: the subset of those prompts shipped with the package (CC-BY-SA-3.0, see its README)
SHIPPED_SPEECH_DIR = BUNDLED_DIR / "speech"
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: the lowest sample rate a speech set may have (telephone band)
MIN_SPEECH_RATE = 8000
SPEECH_SUBSETS = (True, "all", "digits")
#: folders of a speech set that hold no speech
_NOT_SPEECH = {"silence"}


def speech_folder() -> tuple[Path, str]:
    """``(folder, source name)`` of the default speech set: the Debian package when installed,
    else the shipped subset."""
    if ASTERISK_DIR.is_dir():
        return ASTERISK_DIR, "asterisk-core-sounds-en (Allison Smith, CC-BY-SA-3.0)"
    if SHIPPED_SPEECH_DIR.is_dir():
        return SHIPPED_SPEECH_DIR, "bundled:asterisk-speech-subset (Allison Smith, CC-BY-SA-3.0)"
    raise DataError(f"no speech recordings found: neither {ASTERISK_DIR} (apt-get install "
                    f"asterisk-core-sounds-en-wav) nor the shipped subset {SHIPPED_SPEECH_DIR}; give --data FOLDER")


def speech_files(root: Path, subset: Any) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """The recordings of ``subset`` under ``root`` and, for ``digits``, their labels and class names."""
    if subset == "digits":
        files = [root / "digits" / f"{i}.wav" for i in range(10)]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise DataError(f"{root / 'digits'}: the spoken digits {', '.join(missing)} are missing; expected "
                            f"digits/0.wav .. digits/9.wav (the Asterisk layout)")
        return files, list(range(10)), list(DIGIT_NAMES)
    files, skipped = scan_folder(root, AUDIO_EXTENSIONS)
    files = [f for f in files if not (set(f.relative_to(root).parts[:-1]) & _NOT_SPEECH)]
    if not files:
        raise DataError(f"{root}: no speech recordings (WAV / FLAC / OGG) found ("
                        + (skipped_summary(skipped) if skipped else "folder is empty") + ")")
    return files, None, None


def check_rates(files: list[Path], root: Path, resampled: bool) -> int:
    """The one sample rate of ``files`` (from their headers); a DataError for a corrupt file, a
    rate below :data:`MIN_SPEECH_RATE` or, unless ``resampled``, a mix of rates."""
    first: tuple[Path, int] | None = None
    for f in files:
        _, _, rate = audio_info(f)
        if rate < MIN_SPEECH_RATE:
            raise DataError(f"{f}: sample rate {rate} Hz is below {MIN_SPEECH_RATE} Hz; not a speech recording "
                            f"(telephone speech needs at least 8 kHz)")
        if first is None:
            first = (f, rate)
        elif rate != first[1] and not resampled:
            raise DataError(f"{root}: speech recordings at different rates ({first[0].name}: {first[1]} Hz, "
                            f"{f.name}: {rate} Hz); resample them to one rate, or set sample_rate")
    assert first is not None
    return first[1]


def load_speech(path: str | Path | None, opts: dict[str, Any]) -> AudioDataset:
    """Speech recordings as an :class:`~diffuse.domains.audio.data.AudioDataset` (module docstring):
    ``path`` (a folder) or the default set; ``opts`` are resolved audio data options."""
    subset = opts["speech"]
    if subset not in SPEECH_SUBSETS:
        raise UserInputError(f"data option speech must be true, 'all' or 'digits', got {subset!r}")
    if path is None:
        root, source = speech_folder()
    else:
        root = Path(path).expanduser()
        if not root.is_dir():
            raise DataError(f"{root}: no such folder; expected a folder of speech recordings (WAV / FLAC / OGG)")
        source = str(root)
    files, labels, classes = speech_files(root, subset)
    check_rates(files, root, resampled=opts["sample_rate"] is not None)
    if labels is not None and not (opts["labels"] or opts["text"]):
        labels, classes = None, None
    if (opts["labels"] or opts["text"]) and labels is None:
        raise DataError(f"{root}: class labels of speech need speech='digits' (the words zero .. nine)")
    return _load(files, labels, classes, opts, source, default_crop="random")
