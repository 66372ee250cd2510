"""The embedded sample: deterministic, in the competition layout, labels consistent with audio."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from birdclef import layout, readmes
from birdclef.params import SampleParams
from birdclef.sample import SampleError, generate, species_catalogue

SMALL = SampleParams(
    seed=7, species=4, min_recordings=3, max_recordings=5, min_recording_seconds=2.0,
    max_recording_seconds=7.0, extra_recordings_per_species=1, train_soundscapes=1, test_soundscapes=3,
    soundscape_seconds=20, calls_per_soundscape=4, background_clips=1, pretrain_extra_species=2,
    pretrain_recordings_per_species=1,
)
CORPORA = ((layout.TRAIN_CSV, layout.TRAIN_AUDIO), (layout.EXTRA_CSV, layout.EXTRA_AUDIO),
           (layout.PRETRAIN_CSV, layout.PRETRAIN_AUDIO))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The small sample twice with one seed, once with another."""
    root = tmp_path_factory.mktemp("sample")
    outs = {"a": root / "a" / "raw", "b": root / "b" / "raw", "other": root / "other" / "raw"}
    generate(outs["a"], SMALL)
    generate(outs["b"], SMALL)
    generate(outs["other"], replace(SMALL, seed=SMALL.seed + 1))
    return outs


@pytest.fixture(scope="module")
def raw(runs) -> Path:
    return runs["a"]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _digests(root: Path) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.suffix in layout.AUDIO_SUFFIXES}


def _band_fraction(wave: np.ndarray, rate: int, band: tuple[float, float], margin: float = 0.07) -> float:
    """Share of the power above 150 Hz that lies in ``band`` (widened for the pitch jitter)."""
    power = np.abs(np.fft.rfft(wave)) ** 2
    freqs = np.fft.rfftfreq(len(wave), 1 / rate)
    inside = (freqs >= band[0] * (1 - margin)) & (freqs <= band[1] * (1 + margin))
    return float(power[inside].sum() / power[freqs >= 150].sum())


def _overlap(a: tuple[float, float], b: tuple[float, float], margin: float = 0.07) -> bool:
    return a[0] * (1 - margin) <= b[1] * (1 + margin) and b[0] * (1 - margin) <= a[1] * (1 + margin)


def _reach(call) -> tuple[float, float]:
    """From the lowest fundamental up to the highest harmonic."""
    return call.band[0], call.band[1] * call.harmonics


def test_same_seed_gives_identical_files_and_another_seed_other_audio(runs):
    first, second = _files(runs["a"]), _files(runs["b"])
    assert len(first) > 40
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []
    assert _digests(runs["a"]).isdisjoint(_digests(runs["other"]))
    assert (runs["a"] / layout.TRAIN_CSV).read_bytes() != (runs["other"] / layout.TRAIN_CSV).read_bytes()


def test_files_do_not_depend_on_the_cpus_vector_instructions(runs, tmp_path):
    """numpy picks its exp and power kernels by CPU (AVX2, AVX-512) and they differ in the last
    bit: the sample, and so ``dvc.lock``, must not. Regenerated here with every optional kernel
    this CPU has switched off, the files must come out byte for byte the same."""
    optional = np.show_config(mode="dicts")["SIMD Extensions"].get("found", [])
    if not optional:
        pytest.skip("this CPU runs numpy's baseline kernels only: nothing to switch off")
    script = ("import json, sys; from pathlib import Path; from birdclef.params import SampleParams; "
              "from birdclef.sample import generate; generate(Path(sys.argv[1]), SampleParams(**json.loads(sys.argv[2])))")
    out = tmp_path / "raw"
    subprocess.run([sys.executable, "-c", script, str(out), json.dumps(asdict(SMALL))], check=True,
                   env={**os.environ, "NPY_DISABLE_CPU_FEATURES": " ".join(optional)})
    baseline, vectorised = _files(out), _files(runs["a"])
    assert baseline.keys() == vectorised.keys()
    assert [name for name in baseline if baseline[name] != vectorised[name]] == []


def test_tables_follow_the_layout_and_name_existing_files(raw):
    taxonomy = pd.read_csv(raw / layout.TAXONOMY_CSV, dtype={"primary_label": str})
    assert tuple(taxonomy.columns) == layout.TAXONOMY_COLUMNS
    labels = list(taxonomy.primary_label)
    assert len(labels) == SMALL.species == len(set(labels))
    numeric = taxonomy[taxonomy.primary_label.str.isdigit()]
    assert 1 <= len(numeric) <= 2 and set(numeric.class_name) <= {"Amphibia", "Insecta"}
    birds = taxonomy[~taxonomy.primary_label.str.isdigit()]
    assert (birds.class_name == "Aves").all()
    assert all(re.fullmatch(r"[a-z]{6}\d", label) for label in birds.primary_label)

    pretrain_labels = set(pd.read_csv(raw / layout.PRETRAIN_CSV, dtype={"primary_label": str}).primary_label)
    assert set(labels) < pretrain_labels and len(pretrain_labels) == SMALL.species + SMALL.pretrain_extra_species
    listed = set()
    for csv, folder in CORPORA:
        table = pd.read_csv(raw / csv, dtype={"primary_label": str})
        assert tuple(table.columns) == layout.TRAIN_COLUMNS
        known = pretrain_labels if folder == layout.PRETRAIN_AUDIO else set(labels)
        assert set(table.primary_label) <= known
        for row in table.itertuples():
            assert (raw / folder / row.filename).is_file()
            assert row.filename.startswith(f"{row.primary_label}/")
            assert re.fullmatch(r"(XC|iNat|CSA)\d+", Path(row.filename).stem)
            secondary = ast.literal_eval(row.secondary_labels)
            assert set(secondary) <= known - {row.primary_label}
            assert 0 <= row.rating <= 5 and row.rating * 2 == int(row.rating * 2)
            listed.add(f"{folder}/{row.filename}")
    for folder in (layout.TRAIN_AUDIO, layout.EXTRA_AUDIO, layout.PRETRAIN_AUDIO):
        assert {str(p.relative_to(raw)) for p in (raw / folder).rglob("*.*")} <= listed

    background = pd.read_csv(raw / layout.BACKGROUND_CSV)
    assert tuple(background.columns) == layout.BACKGROUND_COLUMNS
    assert set(background.source) == {"nocall", "esc50"}
    assert all((raw / layout.BACKGROUND_AUDIO / name).is_file() for name in background.filename)


def test_test_labels_and_submission_cover_every_window(raw):
    labels = list(pd.read_csv(raw / layout.TAXONOMY_CSV, dtype={"primary_label": str}).primary_label)
    stems = sorted(p.stem for p in (raw / layout.TEST_SOUNDSCAPES).glob("*.ogg"))
    assert len(stems) == SMALL.test_soundscapes
    assert not set(stems) & {p.stem for p in (raw / layout.TRAIN_SOUNDSCAPES).glob("*.ogg")}
    assert all(re.fullmatch(r"[HPU]\d\d_2023\d{4}_\d{6}", stem) for stem in stems)
    ends = range(5, SMALL.soundscape_seconds + 1, 5)
    row_ids = [layout.row_id(stem, end) for stem in stems for end in ends]
    truth = pd.read_csv(raw / layout.TEST_LABELS_CSV)
    submission = pd.read_csv(raw / layout.SAMPLE_SUBMISSION_CSV)
    for table in (truth, submission):
        assert list(table.columns) == ["row_id", *labels]
        assert list(table.row_id) == row_ids
    assert (submission[labels] == 0).all().all()
    assert set(np.unique(truth[labels])) == {0, 1}
    assert (truth[labels].sum() > 0).all(), "every species calls in some test window"
    calling = truth[labels].sum(axis=1).to_numpy().reshape(len(stems), len(ends)) > 0
    assert calling.any(axis=1).all() and (~calling).any(axis=1).all()


def test_recordings_come_in_the_promised_formats(raw):
    infos = [sf.info(p) for p in sorted((raw / layout.TRAIN_AUDIO).rglob("*.*"))]
    suffixes = {Path(info.name).suffix for info in infos}
    assert {".ogg", ".mp3", ".wav", ".flac"} <= suffixes
    assert {32000, 44100, 48000} <= {info.samplerate for info in infos}
    assert {1, 2} <= {info.channels for info in infos}
    durations = [info.duration for info in infos]
    assert min(durations) < 5 and max(durations) > 5
    assert all(SMALL.min_recording_seconds - 0.1 <= d <= SMALL.max_recording_seconds + 0.1 for d in durations)
    extra = [sf.info(p) for p in (raw / layout.EXTRA_AUDIO).rglob("*.*")]
    assert sum(info.format == "MP3" for info in extra) > len(extra) / 2
    for folder in (layout.TRAIN_SOUNDSCAPES, layout.TEST_SOUNDSCAPES):
        for path in (raw / folder).glob("*"):
            info = sf.info(path)
            assert (path.suffix, info.samplerate, info.channels) == (".ogg", 32000, 1)
            assert info.duration == pytest.approx(SMALL.soundscape_seconds, abs=0.01)


def test_focal_recordings_sound_in_their_species_band(raw):
    targets, extras = species_catalogue(SMALL)
    calls = {s.label: s.call for s in targets + extras}
    checked = 0
    for csv, folder in CORPORA:
        for row in pd.read_csv(raw / csv, dtype={"primary_label": str}).itertuples():
            wave, rate = sf.read(raw / folder / row.filename, always_2d=True)
            call = calls[row.primary_label]
            own = _band_fraction(wave[:, 0], rate, call.band)
            assert own > 0.5, row.filename
            for label, other in calls.items():
                if not _overlap(other.band, _reach(call)):
                    assert _band_fraction(wave[:, 0], rate, other.band) < own / 2, (row.filename, label)
            checked += 1
    assert checked > 20


def test_windows_labelled_with_a_species_hold_more_of_its_band(raw):
    """Band power of each 5-s window, relative to its soundscape's windows without any call:
    higher where the species is labelled than where no species calls into that band."""
    targets, _ = species_catalogue(SMALL)
    truth = pd.read_csv(raw / layout.TEST_LABELS_CSV)
    stems = truth.row_id.str.rsplit("_", n=1).str[0]
    no_call = (truth.drop(columns="row_id") == 0).all(axis=1)
    power = {s.label: [] for s in targets}
    for stem in stems.unique():
        reference = no_call[stems == stem].to_numpy()
        assert reference.any(), f"{stem} has no window without calls"
        wave, rate = sf.read(raw / layout.TEST_SOUNDSCAPES / f"{stem}.ogg")
        spectra = np.abs(np.fft.rfft(wave.reshape(-1, 5 * rate), axis=1)) ** 2
        freqs = np.fft.rfftfreq(5 * rate, 1 / rate)
        for species in targets:
            low, high = species.call.band
            in_band = spectra[:, (freqs >= low * 0.95) & (freqs <= high * 1.05)].sum(axis=1)
            power[species.label].extend(in_band / np.median(in_band[reference]))
    for species in targets:
        reaching = [s.label for s in targets if _overlap(species.call.band, _reach(s.call))]
        called = truth[species.label].to_numpy() == 1
        silent = (truth[reaching] == 0).all(axis=1).to_numpy()
        values = np.array(power[species.label])
        assert values[called].mean() > 2 * values[silent].mean(), species.label


def test_rare_and_common_species_both_occur(tmp_path):
    quick = replace(SMALL, species=3, min_recordings=1, max_recordings=16, min_recording_seconds=0.5,
                    max_recording_seconds=1.0, test_soundscapes=1, soundscape_seconds=10, pretrain_extra_species=0)
    for seed in (1, 2):
        summary = generate(tmp_path / "raw", replace(quick, seed=seed))
        counts = pd.read_csv(tmp_path / "raw" / layout.TRAIN_CSV).primary_label.value_counts()
        assert counts.min() <= 10 and counts.max() >= 15
        assert summary["train_recordings"] == counts.sum()


def test_output_is_replaced_whole_and_never_left_half_written(tmp_path, monkeypatch):
    out = tmp_path / "raw"
    quick = replace(SMALL, species=2, min_recordings=1, max_recordings=2, soundscape_seconds=10,
                    test_soundscapes=1, pretrain_extra_species=0)
    (out / "stale").mkdir(parents=True)  # an earlier download (it has a taxonomy) with a stale file
    (out / "stale" / "old.ogg").write_bytes(b"old")
    (out / layout.TAXONOMY_CSV).write_text("old")
    out.with_name("raw.tmp").mkdir()  # left behind by an interrupted run
    generate(out, quick)
    assert not (out / "stale").exists() and (out / layout.TRAIN_CSV).is_file()
    # the pseudo folder round 0 reads is part of the whole (the sample publishes no labels)
    assert [path.name for path in (out / layout.PSEUDO).iterdir()] == [readmes.README]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]

    before = _files(out)
    import birdclef.sample as sample

    written = []

    def fail_on_third(path, audio, rate):
        written.append(path)
        if len(written) == 3:
            raise KeyboardInterrupt
        return write(path, audio, rate)

    write = sample._write_audio
    monkeypatch.setattr(sample, "_write_audio", fail_on_third)
    with pytest.raises(KeyboardInterrupt):
        generate(out, replace(quick, seed=99))
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


@pytest.mark.parametrize("change, message", [
    ({"soundscape_seconds": 12}, "soundscape_seconds must be a multiple of 5"),
    ({"soundscape_seconds": 5}, "at least 10"),
    ({"min_recordings": 4, "max_recordings": 3}, "min_recordings <= max_recordings"),
    ({"species": 0}, "species >= 1")])
def test_impossible_sizes_are_refused(tmp_path, change, message):
    with pytest.raises(SampleError, match=f"data.sample: .*{message}"):
        generate(tmp_path / "raw", replace(SMALL, **change))
    assert not (tmp_path / "raw").exists()


def test_a_rate_below_the_calls_is_refused_before_any_file(tmp_path):
    with pytest.raises(SampleError, match="audio.sample_rate 16000 is too low for the sample.*at least 22050"):
        generate(tmp_path / "raw", SMALL, 16_000)
    assert not (tmp_path / "raw").exists()
    generate(tmp_path / "raw", replace(SMALL, species=2, min_recordings=1, max_recordings=1), 22_050)
    soundscapes = sorted((tmp_path / "raw" / layout.TEST_SOUNDSCAPES).iterdir())
    assert soundscapes and {sf.info(path).samplerate for path in soundscapes} == {22_050}
