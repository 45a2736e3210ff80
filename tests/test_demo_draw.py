"""What ``diffuse demo`` shows, without a browser or Gradio: each domain's written files sorted for
the page (digits as images, drums as audio clips, molecules as 2-D depictions with the validity
table and the SDF), and a bad input as one UserInputError."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffuse.cli.demo import NO_LABEL, _Models, draw, labels_of
from diffuse.core.errors import UserInputError


@pytest.fixture(scope="module")
def models():
    return _Models("cpu")


def test_digits_by_label(models):
    assert labels_of(models.get("image"))[:3] == [NO_LABEL, "0", "1"]
    r = draw(models, "image", 2, 3, 0, "7", 2.0)
    assert len(r["images"]) >= 2 and all(Path(p).is_file() for p in r["images"])
    assert "label 7, guidance 2.0" in r["message"]


def test_drums_as_audio_clips(models):
    assert "snare" in labels_of(models.get("audio"))
    r = draw(models, "audio", 2, 3, 0, "snare", 1.0)
    assert len(r["audio"]) == 2 and all(p.endswith(".wav") for p in r["audio"])


def test_molecules_as_pictures_table_and_sdf(models):
    r = draw(models, "molecules", 3, 5, 0, NO_LABEL, 0.0)
    assert any(p.endswith(".sdf") for p in r["files"])
    assert any(Path(p).name.startswith("molecule_") for p in r["images"])       # RDKit depictions
    assert any(row[0] == "valid_connected" for row in r["table"])


@pytest.mark.parametrize("source, label, steps, message", [
    ("image", "eleven", 3, "label"), ("image", NO_LABEL, -2, "steps"), ("no/such/folder", NO_LABEL, 3, "does not exist"),
])
def test_a_bad_input_is_one_message(models, source, label, steps, message):
    with pytest.raises(UserInputError, match=message):
        draw(models, source, 2, steps, 0, label, 1.0)
