"""The embedded sample: a small synthetic BirdCLEF-like dataset in the competition layout.

It lets the whole pipeline (decode, store, train on 5-s windows, predict 1-minute soundscapes,
score ROC-AUC) run offline on a CPU in minutes. Each species gets a procedural call model
(band, syllable shape, rhythm, envelope); focal recordings are close and clean, soundscapes are
far, filtered and noisy, as in the real competition. Everything follows from the seed: each file
draws from its own generator, so the same params give byte-identical files.
"""

from __future__ import annotations

import io
import os
import signal
import struct
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from birdclef import layout, readmes
from birdclef.outputs import folder_written_atomically
from birdclef.params import SampleParams

WINDOW_SECONDS = 5  # Kaggle scores soundscapes per 5-s window
SHAPES = ("tone", "upsweep", "downsweep", "harmonic", "trill", "buzz")
# The highest frequency a call reaches is 9.5 kHz x 1.05 (spread, pitch jitter); the far-field low-pass
# corner is at most 9 kHz. 22.05 kHz, the next common rate, keeps both under Nyquist.
MIN_SAMPLE_RATE = 22_050
# Where a species' call may sit, per syllable shape: (lowest, highest) centre in Hz.
CENTRE_HZ = {
    "tone": (1500, 8000),
    "upsweep": (1500, 6500),
    "downsweep": (1500, 6500),
    "harmonic": (800, 3000),
    "trill": (2000, 7000),
    "buzz": (2000, 7000),
}
# Rhythm per shape: syllable seconds, gap seconds, fewest syllables, extra syllables at most.
RHYTHM = {
    "tone": ((0.12, 0.45), (0.08, 0.35), (1, 3), 3),
    "upsweep": ((0.06, 0.25), (0.04, 0.25), (2, 4), 4),
    "downsweep": ((0.06, 0.25), (0.04, 0.25), (2, 4), 4),
    "harmonic": ((0.08, 0.35), (0.08, 0.30), (1, 3), 3),
    "trill": ((0.018, 0.05), (0.008, 0.035), (8, 16), 14),
    "buzz": ((0.25, 1.0), (0.10, 0.40), (1, 2), 2),
    "croak": ((0.03, 0.12), (0.03, 0.15), (3, 6), 6),
    "chirp": ((0.05, 0.6), (0.05, 0.30), (1, 4), 3),
}
ENVELOPES = {
    "tone": ("arch", "swell"),
    "upsweep": ("arch", "percussive"),
    "downsweep": ("arch", "percussive"),
    "harmonic": ("arch", "percussive"),
    "trill": ("arch",),
    "buzz": ("swell", "arch"),
}
LONGEST_PHRASE_SECONDS = 4.0  # fits inside one 5-s window, so every soundscape keeps silent ones
ALTERNATIVE_RATES = (44100, 48000)
# Share of a corpus's recordings (and the least number of them) made in each non-default format.
FORMATS = {
    layout.TRAIN_AUDIO: {
        "mp3": (0.08, 1), "wav": (0.0, 1), "flac": (0.0, 1),
        44100: (0.06, 1), 48000: (0.05, 1), "stereo": (0.06, 1), "short": (0.10, 1),
    },
    layout.EXTRA_AUDIO: {
        "mp3": (0.8, 1), 44100: (0.5, 0), 48000: (0.2, 0), "stereo": (0.1, 0), "short": (0.1, 0),
    },
    layout.PRETRAIN_AUDIO: {"mp3": (0.1, 0), "short": (0.1, 0)},
}
SUBTYPES = {
    ".ogg": ("OGG", "VORBIS"), ".mp3": ("MP3", "MPEG_LAYER_III"), ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
}
ESC50 = (("rain", 10), ("wind", 16), ("insects", 7))  # ESC-50 category and its class number
SITES = ("H02", "H04", "H06", "H08", "H13", "P03", "P07", "P10", "P14", "U06", "U09")
# Keys of the independent random streams (numpy SeedSequence spawn keys).
STREAM = {
    "species": 0, "plan": 1, layout.TRAIN_AUDIO: 2, layout.EXTRA_AUDIO: 3, layout.PRETRAIN_AUDIO: 4,
    layout.TRAIN_SOUNDSCAPES: 5, layout.TEST_SOUNDSCAPES: 6, "background": 7,
}

ADJECTIVES = (
    "Rufous", "Olive", "Pale", "Dusky", "Golden", "Spotted", "Striped", "Ashy", "Crested", "Scaly",
    "Tawny", "Slaty", "Buffy", "Chestnut", "Sooty", "Cinnamon", "Plain", "Lesser", "Greater", "Masked",
    "Rusty", "Bronzy", "Streaked", "Velvet", "Marbled", "Dotted", "Banded", "Silver",
)
PARTS = ("throated", "capped", "backed", "winged", "bellied", "breasted", "crowned", "tailed", "naped")
GROUPS = {
    "Aves": (
        "Wren", "Tanager", "Flycatcher", "Warbler", "Antbird", "Thrush", "Finch", "Woodpecker",
        "Hermit", "Tinamou", "Dove", "Parakeet", "Manakin", "Vireo", "Seedeater", "Woodcreeper",
        "Saltator", "Euphonia", "Pewee", "Owl", "Potoo", "Nightjar", "Trogon", "Foliage-gleaner",
    ),
    "Amphibia": ("Treefrog", "Rainfrog", "Toad", "Glassfrog", "Robber Frog"),
    "Insecta": ("Katydid", "Cricket", "Cicada", "Bush-cricket"),
}
GENUS_HEADS = ("Thryo", "Myio", "Basil", "Tachy", "Chloro", "Hylo", "Xipho", "Poeci", "Pipra", "Cyano",
               "Melano", "Leuco", "Eupho", "Sclero", "Gralla", "Pristi", "Dendro", "Boana")
GENUS_TAILS = ("thorus", "bius", "phonus", "spiza", "philus", "ornis", "cichla", "ura", "ops", "mantis")
EPITHETS = ("rufus", "olivacea", "pallidus", "fuscata", "aurea", "maculatus", "striata", "cinereus",
            "cristata", "squamata", "fulvus", "schistacea", "castanea", "virens", "flava", "plumbea",
            "minor", "major", "larvata", "ferruginea", "fuliginosus", "marmorata", "argentea")
FIRST_NAMES = ("Ana", "Carlos", "Juliana", "Pedro", "María", "Luis", "Sofía", "Andrés", "Camila",
               "Diego", "Laura", "Felipe", "Valentina", "Jorge", "Isabel", "Tomás", "Elena", "Ricardo")
SURNAMES = ("Gómez", "Restrepo", "Moreno", "Silva", "Rojas", "Herrera", "Castro", "Ortiz", "Vargas",
            "Pardo", "Mejía", "Quintero", "Salazar", "Cárdenas", "Ospina", "Becker", "Walsh")
AUTHORS = 15
LICENSES = ("cc-by-nc-sa 4.0", "cc-by-nc 4.0", "cc-by-sa 4.0", "cc-by 4.0", "cc-by-nc-nd 4.0")
CALL_TYPES = {
    "Aves": ("['song']", "['call']", "['call', 'song']", "['flight call']", "['alarm call']", "['']"),
    "Amphibia": ("['advertisement call']", "['call']", "['']"),
    "Insecta": ("['song']", "['call']", "['']"),
}
COLLECTIONS = {"Aves": (("XC", "iNat", "CSA"), (0.75, 0.2, 0.05)), "other": (("iNat", "XC"), (0.8, 0.2))}


@dataclass(frozen=True)
class CallModel:
    """How one species calls: the shape and band of a syllable and the rhythm of a phrase."""

    shape: str  # tone | upsweep | downsweep | harmonic | trill | buzz
    centre_hz: float
    spread: float  # sweeps and trill notes run between centre/(1+spread) and centre*(1+spread)
    harmonics: int
    pulse_hz: float  # pulse rate of a buzz
    envelope: str  # arch | percussive | swell
    syllable_seconds: float
    gap_seconds: float
    syllables: tuple[int, int]  # fewest and most syllables in a phrase
    crescendo: float  # gain of a phrase's last syllable relative to its first
    phrase_gap_seconds: float  # pause between phrases of a focal recording

    @property
    def band(self) -> tuple[float, float]:
        """Where the fundamental's energy lies, before a recording's pitch jitter."""
        centre = self.centre_hz
        if self.shape in ("upsweep", "downsweep", "trill"):
            return centre / (1 + self.spread), centre * (1 + self.spread)
        if self.shape == "buzz":
            return centre - 4 * self.pulse_hz, centre + 4 * self.pulse_hz
        if self.shape == "harmonic":
            return centre * 0.95, centre * 1.01
        return centre * 0.98, centre * 1.02


@dataclass(frozen=True)
class Species:
    """One species: its taxonomy row, where it lives and how it calls."""

    label: str
    inat_taxon_id: int
    scientific_name: str
    common_name: str
    class_name: str
    latitude: float
    longitude: float
    call: CallModel


@dataclass(frozen=True)
class _Recording:
    """One planned labelled recording: its csv row and what its audio is made of."""

    species: Species
    secondary: Species | None
    seconds: float
    rate: int
    channels: int
    row: dict


def generate(out: Path, params: SampleParams, sample_rate: int = 32000, workers: int | None = None) -> dict:
    """Write the sample into ``out`` (normally data/raw). Returns a small summary dict (counts).

    Written through ``folder_written_atomically``: an interrupted run leaves the previous
    dataset (or none), never half of one. The audio files are made by ``workers`` processes
    (default: one per core); each file has its own random stream, so their number changes nothing.
    """
    from birdclef.progress import progress_bar

    _check(params, sample_rate)
    events: dict[str, list] = {}
    seconds = 0.0
    with (folder_written_atomically(out, layout.TAXONOMY_CSV) as tmp,
          _baseline_numpy_workers(workers or os.cpu_count() or 1) as pool):
        # Every number is drawn and computed in the workers, the plan's and the labels' too.
        targets, extras, plan = pool.submit(_planned, params, sample_rate).result()
        jobs = _jobs(plan, params.soundscape_seconds, sample_rate)
        tables = 7  # the csv files of _tables
        with progress_bar("sample dataset", len(jobs) + tables) as advance:
            made = [pool.submit(_make_file, tmp / relative, make, params.seed, STREAM[stream], index)
                    for stream, index, relative, make in jobs]
            for (stream, _, relative, _), file in zip(jobs, made):
                file_seconds, calls = file.result()
                if stream == layout.TEST_SOUNDSCAPES:
                    events[Path(relative).stem] = calls
                seconds += file_seconds
                advance()
            labelled = pool.submit(_tables, plan, events, params.soundscape_seconds).result()
            for relative, table in labelled.items():
                path = tmp / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                table.to_csv(path, index=False)
                advance()
        readmes.write_readme(tmp / layout.PSEUDO, readmes.PSEUDO)
    return {
        "species": len(targets),
        "pretrain_species": len(targets) + len(extras),
        "train_recordings": len(plan.corpora[layout.TRAIN_AUDIO]),
        "extra_recordings": len(plan.corpora[layout.EXTRA_AUDIO]),
        "pretrain_recordings": len(plan.corpora[layout.PRETRAIN_AUDIO]),
        "train_soundscapes": params.train_soundscapes,
        "test_soundscapes": params.test_soundscapes,
        "background_clips": len(plan.background),
        "files": len(jobs) + tables,
        "audio_seconds": round(seconds, 1),
        "bytes": sum(path.stat().st_size for path in out.rglob("*") if path.is_file()),
    }


@contextmanager
def _baseline_numpy_workers(workers: int) -> Iterator[ProcessPoolExecutor]:
    """Worker processes whose numpy runs its baseline kernels only, so the files are the same
    on every CPU.

    numpy picks its float64 sin, exp and power kernels by CPU when it is imported (AVX2,
    AVX-512), and they differ in the last bit. Rounded to float32 for writing, such a bit now and
    then flips a sample, and one flipped sample changes a whole encoded file: one of the 264 on
    an AVX-512 CPU. numpy reads ``NPY_DISABLE_CPU_FEATURES`` when it is imported, so the workers
    are fresh interpreters (spawned, not forked), started while it is set.
    """
    import multiprocessing

    simd = np.show_config(mode="dicts")["SIMD Extensions"]
    optional = simd.get("found", []) + simd.get("not found", [])  # this process may run with some off
    with _environment("NPY_DISABLE_CPU_FEATURES", " ".join(optional)):
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        try:
            # Ctrl-C is for the main process, which drops the queued files: the workers ignore it
            # from their first instruction on (an ignored signal stays ignored in a new program),
            # so start them all now, each submit starting one while none is idle.
            interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                for _ in range(workers):
                    pool.submit(int)
            finally:
                signal.signal(signal.SIGINT, interrupt)
            yield pool
        finally:
            # After Ctrl-C or an error the files not started are dropped, and the running ones
            # finish before their folder goes.
            pool.shutdown(cancel_futures=True)


@contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """``name`` set to ``value`` for the processes started in the block, then as it was."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


def _planned(params: SampleParams, sample_rate: int) -> tuple[list[Species], list[Species], _Plan]:
    """The species and the plan of every file (in a worker)."""
    targets, extras = species_catalogue(params)
    return targets, extras, _plan(params, targets, extras, sample_rate)


def _make_file(path: Path, make: Callable, seed: int, *key: int) -> tuple[float, list]:
    """Make and write one audio file (in a worker); returns its seconds and call events."""
    audio, rate, calls = make(_rng(seed, *key))
    _write_audio(path, audio, rate)
    return len(audio) / rate, calls


def species_catalogue(params: SampleParams) -> tuple[list[Species], list[Species]]:
    """The target species in taxonomy order, and the pretraining-only ones; fixed by the seed."""
    rng = _rng(params.seed, STREAM["species"])
    taken: set[str] = set()
    non_birds = min(2, max(1, params.species // 4)) if params.species >= 2 else 0
    classes = ["Amphibia", "Insecta"][:non_birds] + ["Aves"] * (params.species - non_birds)
    targets = _new_species(rng, classes, taken, [])
    extra_classes = rng.choice(["Aves", "Amphibia", "Insecta"], p=[0.8, 0.1, 0.1],
                               size=params.pretrain_extra_species)
    extras = _new_species(rng, [str(name) for name in extra_classes], taken, targets)
    return sorted(targets, key=lambda s: s.label), sorted(extras, key=lambda s: s.label)


class SampleError(ValueError):
    """Settings the sample cannot be generated with; names the params keys to change."""


def _check(params: SampleParams, sample_rate: int) -> None:
    if params.species < 1 or params.min_recordings < 1 or params.min_recordings > params.max_recordings:
        raise SampleError("data.sample: need species >= 1 and 1 <= min_recordings <= max_recordings.")
    counts = ("seed", "extra_recordings_per_species", "train_soundscapes", "calls_per_soundscape",
              "background_clips", "pretrain_extra_species", "pretrain_recordings_per_species")
    negative = [name for name in counts if getattr(params, name) < 0]
    if negative:
        raise SampleError(f"data.sample: {', '.join(negative)} must be >= 0.")
    if params.test_soundscapes < 1:
        raise SampleError("data.sample: need test_soundscapes >= 1 (infer and evaluate score them).")
    # A recording's first call starts up to 0.6 s in: a shorter recording could hold no call.
    if not 1 <= params.min_recording_seconds <= params.max_recording_seconds:
        raise SampleError("data.sample: need 1 <= min_recording_seconds <= max_recording_seconds.")
    if params.soundscape_seconds < 2 * WINDOW_SECONDS or params.soundscape_seconds % WINDOW_SECONDS:
        raise SampleError(f"data.sample: soundscape_seconds must be a multiple of {WINDOW_SECONDS}, at least 10.")
    if sample_rate < MIN_SAMPLE_RATE:
        raise SampleError(f"audio.sample_rate {sample_rate} is too low for the sample, whose calls reach "
                          f"~10 kHz; use at least {MIN_SAMPLE_RATE} (the competition's rate is 32000).")


def _rng(seed: int, *key: int) -> np.random.Generator:
    """The generator of one part of the sample, unaffected by how much the other parts draw."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


# --- species and their calls ---------------------------------------------------------------


def _new_species(rng: np.random.Generator, classes: list[str], taken: set[str],
                 earlier: list[Species]) -> list[Species]:
    """Species of the given classes; birds cycle through the shapes and some reuse an earlier band."""
    shapes = [str(shape) for shape in rng.permutation(SHAPES)]
    made = list(earlier)
    birds = 0
    for class_name in classes:
        if class_name == "Aves":
            call = _bird_call(rng, shapes[birds % len(shapes)], [s.call for s in made])
            birds += 1
        else:
            call = _other_call(rng, class_name)
        label, scientific, common, taxon = _names(rng, class_name, taken)
        made.append(Species(
            label=label, inat_taxon_id=taxon, scientific_name=scientific, common_name=common,
            class_name=class_name, latitude=float(rng.uniform(1, 11)), longitude=float(rng.uniform(-78, -70)),
            call=call,
        ))
    return made[len(earlier):]


def _bird_call(rng: np.random.Generator, shape: str, earlier: list[CallModel]) -> CallModel:
    """A bird's call. 40 % share the centre of an earlier species of another shape, so that
    only the shape or rhythm tells them apart; the others keep away from the earlier centres
    (the best of four draws), so that the bands still cover the range."""
    low, high = CENTRE_HZ[shape]
    shared = [c.centre_hz for c in earlier if c.shape != shape and low <= c.centre_hz <= high]
    if shared and rng.random() < 0.4:
        centre = float(rng.choice(shared)) * rng.uniform(0.97, 1.03)
    else:
        taken = np.log([c.centre_hz for c in earlier] or [1.0])
        draws = [_log_uniform(rng, low, high) for _ in range(4)]
        centre = max(draws, key=lambda hz: np.abs(taken - np.log(hz)).min())
    spread = 0.0
    if shape in ("upsweep", "downsweep"):
        spread = min(rng.uniform(0.2, 0.45), 9500 / centre - 1)
    elif shape == "trill":
        spread = rng.uniform(0.08, 0.25)
    return _call(
        rng, shape, shape, centre, spread,
        harmonics=int(rng.integers(2, 5)) if shape == "harmonic" else 1,
        pulse_hz=rng.uniform(40, 150) if shape == "buzz" else 0.0,
        envelope=str(rng.choice(ENVELOPES[shape])),
    )


def _other_call(rng: np.random.Generator, class_name: str) -> CallModel:
    """Frogs croak low (300-1000 Hz) in pulsed harmonic stacks; insects buzz or chirp higher."""
    if class_name == "Amphibia":
        return _call(rng, "harmonic", "croak", _log_uniform(rng, 300, 1000), 0.0,
                     harmonics=int(rng.integers(3, 5)), pulse_hz=0.0, envelope="percussive")
    return _call(rng, "buzz", "chirp", _log_uniform(rng, 2500, 6500), 0.0,
                 harmonics=1, pulse_hz=rng.uniform(60, 220), envelope=str(rng.choice(["swell", "arch"])))


def _call(rng, shape, rhythm, centre, spread, harmonics, pulse_hz, envelope) -> CallModel:
    """Completes a call model with a rhythm whose longest phrase still fits in one window."""
    syllable_range, gap_range, fewest_range, extra = RHYTHM[rhythm]
    syllable = rng.uniform(*syllable_range)
    gap = rng.uniform(*gap_range)
    fewest = int(rng.integers(fewest_range[0], fewest_range[1] + 1))
    # The worst case of the per-recording tempo (1.1) and per-syllable (1.1, 1.2) jitters.
    most_that_fit = max(1, int(LONGEST_PHRASE_SECONDS / (1.21 * syllable + 1.32 * gap)))
    most = min(fewest + int(rng.integers(0, extra + 1)), most_that_fit)
    return CallModel(
        shape=shape, centre_hz=float(centre), spread=float(spread), harmonics=harmonics,
        pulse_hz=float(pulse_hz), envelope=envelope, syllable_seconds=float(syllable), gap_seconds=float(gap),
        syllables=(min(fewest, most), most), crescendo=float(rng.uniform(0.5, 1.4)),
        phrase_gap_seconds=float(rng.uniform(0.4, 2.0)),
    )


def _names(rng: np.random.Generator, class_name: str, taken: set[str]) -> tuple[str, str, str, int]:
    """Label, scientific and common name, iNat taxon id; eBird-like codes for birds, iNat ids otherwise."""
    while True:
        common = f"{rng.choice(ADJECTIVES)} {rng.choice(GROUPS[class_name])}"
        if rng.random() < 0.5:
            common = f"{rng.choice(ADJECTIVES)}-{rng.choice(PARTS)} {rng.choice(GROUPS[class_name])}"
        scientific = f"{rng.choice(GENUS_HEADS)}{rng.choice(GENUS_TAILS)} {rng.choice(EPITHETS)}"
        if common not in taken and scientific not in taken:
            break
    taxon = int(rng.integers(10_000, 1_600_000))
    if class_name == "Aves":
        words = [w for w in common.replace("-", " ").split() if w[0].isupper()]
        stem = (words[0][:3] + words[-1][:3]).lower()
        label = next(f"{stem}{digit}" for digit in range(1, 10_000) if f"{stem}{digit}" not in taken)
    else:
        while str(taxon) in taken:
            taxon += 1
        label = str(taxon)
    taken.update((common, scientific, label))
    return label, scientific, common, taxon


# --- synthesis ------------------------------------------------------------------------------


def _envelope(kind: str, n: int, sr: int) -> np.ndarray:
    """Amplitude over one syllable, with 2-ms fades so no syllable clicks."""
    u = np.arange(n) / n
    if kind == "percussive":
        shape = (1 - np.exp(-u / 0.04)) * np.exp(-u / 0.35)
    elif kind == "swell":
        shape = np.minimum(u / 0.75, (1 - u) / 0.25)
    else:
        shape = np.sin(np.pi * u)
    edge = np.minimum(np.arange(n), np.arange(n)[::-1])
    return shape * np.minimum(1.0, edge / (0.002 * sr))


def _syllable(call: CallModel, n: int, sr: int, pitch: float, rng: np.random.Generator) -> np.ndarray:
    """One syllable: the frequency track integrated to a phase (cumsum), then harmonics and pulses."""
    u = np.arange(n) / n
    centre = call.centre_hz * pitch
    if call.shape == "upsweep":
        track = centre * (1 + call.spread) ** (2 * u - 1)
    elif call.shape in ("downsweep", "trill"):
        track = centre * (1 + call.spread) ** (1 - 2 * u)
    elif call.shape == "harmonic":
        track = centre * (1 - 0.04 * u)
    elif call.shape == "tone":
        track = centre * (1 + 0.006 * np.sin(8 * np.pi * u))
    else:
        track = np.full(n, centre)
    phase = 2 * np.pi * np.cumsum(track) / sr + rng.uniform(0, 2 * np.pi)
    wave = np.zeros(n)
    for k in range(1, call.harmonics + 1):
        if k * track.max() < 0.45 * sr:
            wave += np.sin(k * phase) / k
    if call.shape == "buzz":
        wave *= (0.5 + 0.5 * np.cos(2 * np.pi * call.pulse_hz * np.arange(n) / sr)) ** 4
    return wave * _envelope(call.envelope, n, sr)


def _phrase(call: CallModel, rng: np.random.Generator, sr: int, pitch: float, tempo: float) -> np.ndarray:
    """One phrase: syllables and gaps with small jitter, gain sliding towards ``crescendo``."""
    count = int(rng.integers(call.syllables[0], call.syllables[1] + 1))
    lengths = np.maximum(16, (call.syllable_seconds * tempo * rng.uniform(0.9, 1.1, count) * sr).astype(int))
    gaps = (call.gap_seconds * tempo * rng.uniform(0.8, 1.2, count) * sr).astype(int)
    starts = np.concatenate([[0], np.cumsum(lengths + gaps)[:-1]])
    phrase = np.zeros(starts[-1] + lengths[-1])
    for start, length, gain in zip(starts, lengths, np.linspace(1.0, call.crescendo, count)):
        syllable = _syllable(call, int(length), sr, pitch * rng.uniform(0.99, 1.01), rng)
        phrase[start:start + length] = gain * syllable
    return phrase


def _jitter(rng: np.random.Generator) -> tuple[float, float]:
    """A recording's pitch (±5 %) and tempo (±10 %): individuals and days differ."""
    return 1 + rng.uniform(-0.05, 0.05), 1 + rng.uniform(-0.1, 0.1)


def _shaped_noise(rng: np.random.Generator, n: int, sr: int, gain) -> np.ndarray:
    """Gaussian noise with amplitude spectrum ``gain(frequency)``, scaled to unit RMS.

    Made in float32 (noise needs no more), at a length with small prime factors and then cut,
    since an FFT of a prime length is slow. The gain alone is computed in float64 and then
    rounded: numpy's float32 exp and power kernels differ in the last bit between CPUs (AVX2,
    AVX-512), and that bit would otherwise reach the written files, so the sample would differ
    by machine.
    """
    from scipy.fft import irfft, next_fast_len

    size = next_fast_len(n, real=True)
    freqs = np.fft.rfftfreq(size, 1 / sr)
    gains = gain(freqs).astype(np.float32)
    spectrum = rng.standard_normal((len(freqs), 2), dtype=np.float32).view(np.complex64)[:, 0] * gains
    spectrum[0] = 0
    noise = irfft(spectrum, size)[:n]
    return noise / (noise.std() + 1e-12)


def _slow_wobble(rng: np.random.Generator, n: int, sr: int, per_second: float, low: float) -> np.ndarray:
    """A smooth random gain between ``low`` and 1 (gusts of wind, a chorus swelling)."""
    knots = max(2, int(n / sr * per_second) + 2)
    return np.interp(np.arange(n), np.linspace(0, n, knots), rng.uniform(low, 1, knots))


def _ambient(rng: np.random.Generator, n: int, sr: int, wind: float, insects: float, rain: float,
             bed: float = 1.0) -> np.ndarray:
    """Outdoor noise without target calls: a pink-to-brown bed, gusty wind rumble, an insect
    chorus and rain drops, mixed at the given weights."""
    from scipy.signal import fftconvolve

    slope = rng.uniform(0.5, 0.8)  # amplitude ~ f^-slope: pink (0.5) towards brown (1.0)
    noise = bed * _shaped_noise(rng, n, sr, lambda f: np.maximum(f, 20.0) ** -slope)
    if wind:
        corner = rng.uniform(60, 180)
        rumble = _shaped_noise(rng, n, sr, lambda f: 1 / (1 + (f / corner) ** 4))
        noise += wind * rumble * _slow_wobble(rng, n, sr, 0.7, 0.1)
    if insects:
        centre, width = rng.uniform(3500, 7000), rng.uniform(300, 1200)
        chorus = _shaped_noise(rng, n, sr, lambda f: np.exp(-0.5 * ((f - centre) / width) ** 2))
        pulsing = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(4, 25) * np.arange(n) / sr)
        noise += insects * chorus * pulsing * _slow_wobble(rng, n, sr, 0.2, 0.3)
    if rain:
        drops = np.zeros(n)
        hits = rng.integers(0, n, rng.poisson(rng.uniform(5, 60) * n / sr))
        drops[hits] = rng.lognormal(0, 0.7, len(hits))
        splash = rng.standard_normal(int(0.012 * sr)) * np.exp(-np.arange(int(0.012 * sr)) / (0.003 * sr))
        drops = fftconvolve(drops, splash)[:n]
        noise += rain * drops / (drops.std() + 1e-12)
    return noise


def _lowpass(audio: np.ndarray, corner_hz: float, sr: int) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    return sosfilt(butter(2, corner_hz, fs=sr, output="sos"), audio)


def _peak_normalised(audio: np.ndarray, peak: float) -> np.ndarray:
    return audio * (peak / (np.abs(audio).max() + 1e-12))


def _sounding_rms(calls: np.ndarray) -> float:
    """RMS over the samples that sound (gaps between syllables are exact zeros), so that a
    train of short notes and a long whistle of equal loudness get equal levels."""
    return float(np.sqrt(np.mean(calls[calls != 0] ** 2)))


def _recording_audio(recording: _Recording, rng: np.random.Generator) -> tuple[np.ndarray, int, list]:
    """A close, clean recording: phrases of the species one after the other, perhaps a
    quieter, farther second species, a light noise floor; stereo channels differ slightly."""
    sr, n = recording.rate, int(recording.seconds * recording.rate)
    call = recording.species.call
    pitch, tempo = _jitter(rng)
    calls = np.zeros(n)
    at = int(rng.uniform(0.05, 0.6) * sr)
    while at < n:
        phrase = _phrase(call, rng, sr, pitch, tempo)[: n - at]
        calls[at:at + len(phrase)] += phrase
        at += len(phrase) + int(call.phrase_gap_seconds * rng.uniform(0.6, 1.6) * sr)
    if recording.secondary is not None:
        other = np.zeros(n)
        other_pitch, other_tempo = _jitter(rng)
        for _ in range(int(rng.integers(1, 4))):
            phrase = _phrase(recording.secondary.call, rng, sr, other_pitch, other_tempo)[:n]
            at = int(rng.integers(0, n - len(phrase) + 1))
            other[at:at + len(phrase)] += phrase
        # 12-20 dB below the focal species in energy, however sparse or chatty each one calls.
        gain = np.sqrt(np.sum(calls**2) / np.sum(other**2)) * 10 ** (-rng.uniform(12, 20) / 20)
        calls += _lowpass(other, rng.uniform(5000, 9000), sr) * gain
    level = calls.std() * 10 ** (-rng.uniform(28, 40) / 20)
    channels = []
    for channel in range(recording.channels):
        floor = _ambient(rng, n, sr, wind=rng.uniform(0, 0.5), insects=0.0, rain=0.0) * level
        if channel == 0:
            channels.append(calls + floor)
        else:
            delay = int(rng.integers(3, 40))
            shifted = np.concatenate([np.zeros(delay), calls[: n - delay]])
            channels.append(shifted * rng.uniform(0.75, 0.95) + floor)
    audio = np.stack(channels, axis=1)
    return _peak_normalised(audio, rng.uniform(0.3, 0.9)), sr, []


def _distant(phrase: np.ndarray, rng: np.random.Generator, sr: int) -> np.ndarray:
    """The phrase as heard from afar: high frequencies absorbed, smeared by a short reverb tail."""
    from scipy.signal import fftconvolve

    dry = _lowpass(phrase, rng.uniform(4000, 9000), sr)
    decay = rng.uniform(0.03, 0.12)
    tail = np.arange(int(4 * decay * sr))
    response = rng.standard_normal(len(tail)) * np.exp(-tail / (decay * sr))
    wet = fftconvolve(dry, response / np.sqrt(np.sum(response**2)))
    wet[: len(dry)] += dry / rng.uniform(0.4, 1.0)
    return wet


def _soundscape(species: list[Species], rng: np.random.Generator, seconds: int, sr: int
                ) -> tuple[np.ndarray, int, list[tuple[str, float, float]]]:
    """A far, noisy minute: ambient noise with the given species' phrases spread over it (some
    overlapping), and some 5-s windows left without any call. Returns audio, rate and
    (label, start, end) of each phrase."""
    n = seconds * sr
    noise = _ambient(rng, n, sr, wind=rng.uniform(0.2, 1.5),
                     insects=rng.uniform(0, 0.5) * (rng.random() < 0.7),
                     rain=rng.uniform(0, 0.6) * (rng.random() < 0.3))
    windows = seconds // WINDOW_SECONDS
    quiet = int(np.clip(round(windows * rng.uniform(0.15, 0.35)), 1, windows - 1))
    silent = set(rng.choice(windows, size=quiet, replace=False).tolist())
    runs = _runs_with_calls(windows, silent)
    audio = noise.copy()
    events: list[tuple[str, float, float]] = []
    for one in species:
        pitch, tempo = _jitter(rng)
        dry = _phrase(one.call, rng, sr, pitch, tempo)
        dry *= 10 ** (rng.uniform(-3, 9) / 20) / _sounding_rms(dry)
        phrase = _distant(dry, rng, sr)[: max(b - a for a, b in runs) * sr]
        length = len(phrase) / sr
        start = None
        if events and events[-1][0] != one.label and rng.random() < 0.25:
            start = _overlapping_start(events[-1], length, runs, rng)
        if start is None:
            start = _free_start(length, runs, rng)
        at = int(start * sr)
        audio[at:at + len(phrase)] += phrase * noise.std()
        events.append((one.label, at / sr, (at + min(len(dry), len(phrase))) / sr))
    audio *= 10 ** (rng.uniform(-30, -24) / 20) / audio.std()
    return audio / max(1.0, np.abs(audio).max() / 0.95), sr, events


def _background_clip(clip: _Clip, rng: np.random.Generator) -> tuple[np.ndarray, int, list]:
    """No-call ambience of a random mix, or (ESC-50-like) mostly one kind of noise."""
    n = int(clip.seconds * clip.rate)
    if clip.source == "nocall":
        noise = _ambient(rng, n, clip.rate, wind=rng.uniform(0.2, 1.5), insects=rng.uniform(0, 0.6),
                         rain=rng.uniform(0, 0.6) * (rng.random() < 0.4))
    else:
        weights = {"wind": 0.0, "insects": 0.0, "rain": 0.0, clip.category: 1.0}
        noise = _ambient(rng, n, clip.rate, bed=0.3, **weights)
    noise *= 10 ** (rng.uniform(-30, -20) / 20) / noise.std()
    return noise / max(1.0, np.abs(noise).max() / 0.95), clip.rate, []


def _runs_with_calls(windows: int, silent: set[int]) -> list[tuple[int, int]]:
    """The stretches (start, end seconds) of consecutive windows that may hold calls."""
    runs: list[tuple[int, int]] = []
    for window in range(windows):
        if window in silent:
            continue
        start, end = window * WINDOW_SECONDS, (window + 1) * WINDOW_SECONDS
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((start, end))
    return runs


def _free_start(length: float, runs: list[tuple[int, int]], rng: np.random.Generator) -> float:
    """A start time such that the phrase lies inside one run of calling windows."""
    room = np.array([max(0.0, b - a - length) for a, b in runs]) + 1e-9
    a, b = runs[int(rng.choice(len(runs), p=room / room.sum()))]
    return a + rng.uniform(0, max(0.0, b - a - length))


def _overlapping_start(previous: tuple[str, float, float], length: float, runs: list[tuple[int, int]],
                       rng: np.random.Generator) -> float | None:
    """A start that overlaps the previous phrase (two species at once), if the runs allow one."""
    start = rng.uniform(previous[1] - length / 2, previous[2] - length / 2)
    fits = any(a <= start and start + length <= b for a, b in runs)
    return start if fits else None


def _window_labels(events: list[tuple[str, float, float]], labels: list[str], seconds: int) -> np.ndarray:
    """0/1 per (window, species): 1 when a phrase overlaps the window by 0.5 s (or by half of a
    phrase shorter than 1 s)."""
    table = np.zeros((seconds // WINDOW_SECONDS, len(labels)), dtype=int)
    column = {label: i for i, label in enumerate(labels)}
    for label, start, end in events:
        for window in range(len(table)):
            overlap = min(end, (window + 1) * WINDOW_SECONDS) - max(start, window * WINDOW_SECONDS)
            if overlap >= min(0.5, (end - start) / 2):
                table[window, column[label]] = 1
    return table


# --- writing --------------------------------------------------------------------------------

_BIT_REVERSED = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def _ogg_crc(page: bytes) -> int:
    """Ogg's page CRC-32 (polynomial 0x04C11DB7, not reflected), computed with zlib's
    reflected CRC-32 on bit-reversed bytes."""
    reflected = zlib.crc32(page.translate(_BIT_REVERSED), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


def _fixed_ogg_serial(data: bytes, serial: int) -> bytes:
    """libsndfile seeds each Ogg stream's serial number from the clock; set it (and each page's
    CRC) so identical audio gives identical files."""
    data = bytearray(data)
    at = 0
    while at < len(data):
        if data[at:at + 4] != b"OggS":
            raise ValueError("not an Ogg page")
        segments = data[at + 26]
        end = at + 27 + segments + sum(data[at + 27:at + 27 + segments])
        data[at + 14:at + 18] = struct.pack("<I", serial)
        data[at + 22:at + 26] = bytes(4)
        data[at + 22:at + 26] = struct.pack("<I", _ogg_crc(bytes(data[at:end])))
        at = end
    return bytes(data)


def _write_audio(path: Path, audio: np.ndarray, rate: int) -> None:
    import soundfile as sf

    container, subtype = SUBTYPES[path.suffix]
    buffer = io.BytesIO()
    sf.write(buffer, audio.astype(np.float32), rate, format=container, subtype=subtype)
    data = buffer.getvalue()
    if path.suffix == ".ogg":
        data = _fixed_ogg_serial(data, zlib.crc32(path.name.encode()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# --- the plan: every file and row, decided before any audio is made ------------------------------


@dataclass(frozen=True)
class _Clip:
    """One background clip: no target calls, only ambient noise of a kind."""

    filename: str  # relative to background/audio
    source: str  # nocall | esc50
    category: str
    seconds: float
    rate: int


@dataclass
class _Plan:
    targets: list[Species]
    corpora: dict[str, list[_Recording]]  # labelled recordings per audio folder
    soundscapes: dict[str, list[tuple[str, list[Species]]]]  # per folder: (stem, species calling)
    background: list[_Clip]


def _plan(params: SampleParams, targets: list[Species], extras: list[Species], sample_rate: int) -> _Plan:
    """Who is recorded where, by whom, in which format; all from one stream of the seed."""
    rng = _rng(params.seed, STREAM["plan"])
    authors = _authors(rng)
    used: set[str] = set()
    counts = _recording_counts(rng, params)
    everyone = sorted(targets + extras, key=lambda s: s.label)
    recorded = {
        layout.TRAIN_AUDIO: ([s for s, count in zip(targets, counts) for _ in range(count)], targets),
        layout.EXTRA_AUDIO: (targets * params.extra_recordings_per_species, targets),
        layout.PRETRAIN_AUDIO: (everyone * params.pretrain_recordings_per_species, everyone),
    }
    corpora = {
        folder: _plan_corpus(rng, folder, species, pool, authors, used, params, sample_rate)
        for folder, (species, pool) in recorded.items()
    }
    train_stems = _soundscape_stems(rng, params.train_soundscapes, used)
    test_stems = _soundscape_stems(rng, params.test_soundscapes, used)
    per_test = max(params.calls_per_soundscape, -(-len(targets) // max(1, params.test_soundscapes)))
    test_calls = _every_species_once(rng, targets, per_test * params.test_soundscapes)
    soundscapes = {
        layout.TRAIN_SOUNDSCAPES: [
            (stem, [targets[i] for i in rng.integers(0, len(targets), params.calls_per_soundscape)])
            for stem in train_stems
        ],
        layout.TEST_SOUNDSCAPES: [
            (stem, test_calls[i * per_test:(i + 1) * per_test]) for i, stem in enumerate(test_stems)
        ],
    }
    background = [
        _Clip(f"nocall/{stem}.ogg", "nocall", "nocall", round(float(rng.uniform(10, 30)), 2), sample_rate)
        for stem in _soundscape_stems(rng, params.background_clips, used)
    ] + [
        _Clip(f"esc50/1-{rng.integers(10_000, 300_000)}-A-{number}.wav", "esc50", category,
              WINDOW_SECONDS, 44100)
        for category, number in ESC50
    ]
    return _Plan(targets, corpora, soundscapes, background)


def _authors(rng: np.random.Generator) -> tuple[list[str], np.ndarray]:
    """A pool of recordists; a few record much more than others, across species."""
    names: list[str] = []
    while len(names) < AUTHORS:
        name = f"{rng.choice(FIRST_NAMES)} {rng.choice(SURNAMES)}"
        if name not in names:
            names.append(name)
    weights = 1 / np.arange(1, AUTHORS + 1) ** 0.7
    return names, weights / weights.sum()


def _recording_counts(rng: np.random.Generator, params: SampleParams) -> np.ndarray:
    """Recordings per target species; where the range allows, one rare species (<= 10) and one
    common one (>= 15), since the recipe treats rare species differently."""
    low, high = params.min_recordings, params.max_recordings
    counts = rng.integers(low, high + 1, params.species)
    if params.species >= 2:
        rare, common = rng.choice(params.species, size=2, replace=False)
        if low <= 10:
            counts[rare] = rng.integers(low, min(10, high) + 1)
        if high >= 15:
            counts[common] = rng.integers(max(15, low), high + 1)
    return counts


def _formats(rng: np.random.Generator, n: int, shares: dict
             ) -> tuple[list[str], list[int | None], list[int], list[bool]]:
    """Suffix, rate (None: the default), channels and shortness per recording, each format given
    to its share of the recordings (at least its least number), so the real decoding paths run."""
    quota = {key: min(n, max(least, round(share * n))) for key, (share, least) in shares.items()}
    suffixes, rates = [".ogg"] * n, [None] * n
    for values, keys in ((suffixes, ("mp3", "wav", "flac")), (rates, ALTERNATIVE_RATES)):
        order, at = rng.permutation(n), 0
        for key in keys:
            for i in order[at:at + quota.get(key, 0)]:
                values[i] = f".{key}" if isinstance(key, str) else key
            at += quota.get(key, 0)
    stereo = set(rng.permutation(n)[: quota.get("stereo", 0)].tolist())
    short = set(rng.permutation(n)[: quota.get("short", 0)].tolist())
    return suffixes, rates, [2 if i in stereo else 1 for i in range(n)], [i in short for i in range(n)]


def _plan_corpus(rng: np.random.Generator, folder: str, species: list[Species], pool: list[Species],
                 authors: tuple[list[str], np.ndarray], used: set[str], params: SampleParams,
                 sample_rate: int) -> list[_Recording]:
    """The recordings of one corpus; about 20 % also hold a quieter call of a second species."""
    suffixes, rates, channels, short = _formats(rng, len(species), FORMATS[folder])
    low, high = params.min_recording_seconds, params.max_recording_seconds
    names, weights = authors
    recordings = []
    for i, one in enumerate(species):
        others = [s for s in pool if s.label != one.label]
        secondary = others[int(rng.integers(len(others)))] if others and rng.random() < 0.2 else None
        if short[i] and low < 4.9:
            seconds = rng.uniform(low, min(high, 4.9))
        else:
            seconds = rng.uniform(max(low, 5.0) if high >= 5.0 else low, high)
        collections, shares = COLLECTIONS["Aves" if one.class_name == "Aves" else "other"]
        collection = str(rng.choice(collections, p=shares))
        stem, url = _catalogue_number(rng, collection, used)
        ratings = np.arange(1, 11) / 2
        row = {
            "primary_label": one.label,
            "secondary_labels": str([secondary.label] if secondary else []),
            "type": str(rng.choice(CALL_TYPES[one.class_name])),
            "filename": f"{one.label}/{stem}{suffixes[i]}",
            "collection": collection,
            "rating": float(rng.choice(ratings, p=ratings / ratings.sum())) if collection == "XC" else 0.0,
            "url": url,
            "latitude": round(one.latitude + rng.normal(0, 0.8), 4),
            "longitude": round(one.longitude + rng.normal(0, 0.8), 4),
            "scientific_name": one.scientific_name,
            "common_name": one.common_name,
            "author": names[int(rng.choice(len(names), p=weights))],
            "license": str(rng.choice(LICENSES)),
        }
        recordings.append(_Recording(one, secondary, round(float(seconds), 2), rates[i] or sample_rate,
                                     channels[i], row))
    return recordings


def _catalogue_number(rng: np.random.Generator, collection: str, used: set[str]) -> tuple[str, str]:
    """A file stem unique in the sample (``XC123456``, ``iNat98765``, ``CSA1234``) and its url."""
    low, high = {"XC": (100_000, 1_000_000), "iNat": (10_000, 1_500_000), "CSA": (1_000, 40_000)}[collection]
    while (stem := f"{collection}{rng.integers(low, high)}") in used:
        pass
    used.add(stem)
    number = stem[len(collection):]
    url = {
        "XC": f"https://xeno-canto.org/{number}",
        "iNat": f"https://static.inaturalist.org/sounds/{number}.wav",
        "CSA": f"http://colecciones.humboldt.org.co/rec/sonidos/IAvH-CSA-{number}/",
    }[collection]
    return stem, url


def _soundscape_stems(rng: np.random.Generator, count: int, used: set[str]) -> list[str]:
    """Recorder site, date and start time, like ``H02_20230420_074000``; unique in the sample."""
    stems = []
    while len(stems) < count:
        stem = (f"{rng.choice(SITES)}_2023{rng.integers(4, 7):02d}{rng.integers(1, 29):02d}"
                f"_{rng.integers(0, 24):02d}{10 * rng.integers(0, 6):02d}00")
        if stem not in used:
            used.add(stem)
            stems.append(stem)
    return sorted(stems)


def _every_species_once(rng: np.random.Generator, species: list[Species], total: int) -> list[Species]:
    """``total`` calls in random order in which every species calls at least once."""
    chosen = [species[i] for i in rng.permutation(len(species))]
    chosen += [species[i] for i in rng.integers(0, len(species), max(0, total - len(chosen)))]
    return [chosen[i] for i in rng.permutation(len(chosen))]


def _jobs(plan: _Plan, seconds: int, sample_rate: int) -> list[tuple[str, int, str, Callable]]:
    """Per audio file: its random stream, index in the stream, path and a maker taking the
    file's generator and returning (audio, rate, call events)."""
    jobs = []
    for folder, recordings in plan.corpora.items():
        for i, recording in enumerate(recordings):
            jobs.append((folder, i, f"{folder}/{recording.row['filename']}",
                         partial(_recording_audio, recording)))
    for folder, soundscapes in plan.soundscapes.items():
        for i, (stem, calling) in enumerate(soundscapes):
            jobs.append((folder, i, f"{folder}/{stem}.ogg",
                         partial(_soundscape, calling, seconds=seconds, sr=sample_rate)))
    for i, clip in enumerate(plan.background):
        jobs.append(("background", i, f"{layout.BACKGROUND_AUDIO}/{clip.filename}",
                     partial(_background_clip, clip)))
    return jobs


def _tables(plan: _Plan, events: dict[str, list], seconds: int) -> dict[str, pd.DataFrame]:
    """Every csv of the layout; the test labels follow from the calls placed in the test soundscapes."""
    labels = [s.label for s in plan.targets]
    stems = [stem for stem, _ in plan.soundscapes[layout.TEST_SOUNDSCAPES]]
    ends = range(WINDOW_SECONDS, seconds + 1, WINDOW_SECONDS)
    row_ids = [layout.row_id(stem, end) for stem in stems for end in ends]
    truth = [_window_labels(events[stem], labels, seconds) for stem in stems]
    answers = pd.DataFrame(np.concatenate(truth) if truth else np.zeros((0, len(labels)), int),
                           columns=labels)
    answers.insert(0, "row_id", row_ids)
    submission = pd.DataFrame(0.0, index=range(len(row_ids)), columns=labels)
    submission.insert(0, "row_id", row_ids)
    taxonomy = pd.DataFrame([(s.label, s.inat_taxon_id, s.scientific_name, s.common_name, s.class_name)
                             for s in plan.targets], columns=list(layout.TAXONOMY_COLUMNS))
    background = pd.DataFrame([(c.filename, c.source, c.category) for c in plan.background],
                              columns=list(layout.BACKGROUND_COLUMNS))

    def rows(folder: str) -> pd.DataFrame:
        return pd.DataFrame([r.row for r in plan.corpora[folder]], columns=list(layout.TRAIN_COLUMNS))

    return {
        layout.TRAIN_CSV: rows(layout.TRAIN_AUDIO),
        layout.EXTRA_CSV: rows(layout.EXTRA_AUDIO),
        layout.PRETRAIN_CSV: rows(layout.PRETRAIN_AUDIO),
        layout.TAXONOMY_CSV: taxonomy,
        layout.TEST_LABELS_CSV: answers,
        layout.SAMPLE_SUBMISSION_CSV: submission,
        layout.BACKGROUND_CSV: background,
    }
