"""The data cache is bounded by its user: entries are listed with their size and last use (a read
refreshes it), ``clear_cache`` / ``diffuse cache --clear`` remove all, one kind or the unused
ones, a writer's young temporary file is left alone, a removed entry is rebuilt on its next use,
and an array memory-mapped by a reader survives the removal of its file."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from click.testing import CliRunner

from diffuse.cli.main import main
from diffuse.core.data.cache import (STALE_TEMP_SECONDS, cache_dir, cache_entries, cached_array, cached_arrays,
                                     cached_json, clear_cache)

DAY = 86400.0


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSE_CACHE", str(tmp_path / "cache"))


def _fill() -> dict[str, int]:
    """Three entries of three kinds; returns how often each was built."""
    built = {"a": 0, "j": 0, "f": 0}

    def arr(p):
        built["a"] += 1
        np.save(p, np.arange(1000, dtype=np.float64))

    def js():
        built["j"] += 1
        return {"mean": 1.5}

    def folder():
        built["f"] += 1
        return {"x": np.ones((8, 8), dtype=np.float32)}, {"n": 8}

    cached_array("audio", "ab12", arr)
    cached_json("audio_stats", "ab12", js)
    cached_arrays("images", "cd34", folder)
    return built


def _age(path, days):
    t = time.time() - days * DAY
    os.utime(path, (t, t))


def test_entries_are_listed_with_size_and_a_read_refreshes_their_last_use():
    _fill()
    entries = {e["kind"]: e for e in cache_entries()}
    assert set(entries) == {"audio", "audio_stats", "images"}
    assert entries["audio"]["bytes"] >= 8000 and entries["images"]["bytes"] >= 256
    assert not any(e["partial"] for e in entries.values())
    old = cache_dir() / "audio" / "ab12.npy"
    _age(old, 10)
    assert cache_entries("audio")[0]["last_used"] < time.time() - 9 * DAY
    again = cached_array("audio", "ab12", lambda p: pytest.fail("a cached entry must not be rebuilt"))
    assert again[999] == 999
    assert cache_entries("audio")[0]["last_used"] > time.time() - 60     # the read marked it used
    with pytest.raises(ValueError, match="bad cache kind"):
        cache_entries("../etc")


def test_clear_selects_by_age_and_kind_and_keeps_young_temporary_files():
    _fill()
    _age(cache_dir() / "audio" / "ab12.npy", 3)
    young_tmp = cache_dir() / "images" / ".cd34.abc.tmp"
    young_tmp.mkdir()
    old_tmp = cache_dir() / "audio" / ".ab12.xyz.tmp.npy"
    old_tmp.write_bytes(b"half")
    t = time.time() - 2 * STALE_TEMP_SECONDS
    os.utime(old_tmp, (t, t))

    dry = clear_cache(older_than_days=2, dry_run=True)
    assert [e["name"] for e in dry] == ["ab12.npy"] and (cache_dir() / "audio" / "ab12.npy").exists()
    gone = clear_cache(older_than_days=2)
    assert [e["name"] for e in gone] == ["ab12.npy"]
    assert not (cache_dir() / "audio" / "ab12.npy").exists()
    assert (cache_dir() / "audio_stats" / "ab12.json").exists()

    gone = clear_cache(kind="audio")                    # the old leftover goes, the young one stays
    assert [e["name"] for e in gone] == [old_tmp.name]
    gone = clear_cache()
    assert sorted(e["name"] for e in gone) == ["ab12.json", "cd34"]
    assert young_tmp.exists()                           # may belong to a conversion running now
    assert [e["partial"] for e in cache_entries()] == [True]
    with pytest.raises(ValueError, match="older-than"):
        clear_cache(older_than_days=float("nan"))


def test_a_removed_entry_is_rebuilt_and_a_mapped_array_survives_its_removal():
    mapped = cached_array("audio", "ef56", lambda p: np.save(p, np.arange(50.0)))
    clear_cache()
    assert cache_entries() == []
    assert float(mapped.sum()) == float(np.arange(50.0).sum())     # still readable after the unlink
    built = _fill()
    assert built == {"a": 1, "j": 1, "f": 1}


def test_cli_lists_and_clears():
    _fill()
    _age(cache_dir() / "images" / "cd34", 5)
    res = CliRunner().invoke(main, ["cache"])
    assert res.exit_code == 0, res.output
    assert str(cache_dir()) in res.output
    assert all(k in res.output for k in ("audio", "audio_stats", "images", "total"))
    res = CliRunner().invoke(main, ["cache", "--clear", "--older-than", "4", "--dry-run"])
    assert res.exit_code == 0 and "would remove 1 entry" in res.output
    assert (cache_dir() / "images" / "cd34").is_dir()
    res = CliRunner().invoke(main, ["cache", "--clear", "--older-than", "4"])
    assert res.exit_code == 0 and "removed 1 entry" in res.output
    assert not (cache_dir() / "images" / "cd34").exists()
    res = CliRunner().invoke(main, ["cache", "--clear", "--kind", "audio_stats"])
    assert res.exit_code == 0 and not (cache_dir() / "audio_stats" / "ab12.json").exists()
    assert (cache_dir() / "audio" / "ab12.npy").exists()


@pytest.mark.parametrize("argv, match", [
    (["cache", "--older-than", "1"], "go with --clear"),
    (["cache", "--dry-run"], "go with --clear"),
    (["cache", "--clear", "--older-than", "-1"], "must be >= 0"),
    (["cache", "--clear", "--older-than", "nan"], "older-than"),
    (["cache", "--clear", "--older-than", "soon"], "older-than"),
    (["cache", "--kind", "a/b"], "unknown cache kind"),
])
def test_cli_mistakes_are_one_error_line_and_remove_nothing(argv, match):
    _fill()
    before = sorted(e["path"] for e in cache_entries())
    res = CliRunner().invoke(main, argv)
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], res.output
    assert sorted(e["path"] for e in cache_entries()) == before


def test_a_cache_location_that_is_a_file_is_one_error_line(tmp_path, monkeypatch):
    target = tmp_path / "not-a-folder"
    target.write_text("x")
    monkeypatch.setenv("DIFFUSE_CACHE", str(target))
    for argv in (["cache"], ["cache", "--clear"]):
        res = CliRunner().invoke(main, argv)
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and "is a file, not a folder" in lines[0], res.output
    assert target.read_text() == "x"
