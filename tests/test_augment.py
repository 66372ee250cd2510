"""Augmentations: mixup, background mixing, random filtering and SpecAugment (seed spec §2.5)."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from birdclef.augment import (
    BackgroundMixer,
    RandomFiltering,
    SpecAugment,
    StoreBackground,
    mixup,
    peak_normalize,
)

WINDOW = 3200


def tone(cycles: int, n_samples: int = WINDOW) -> np.ndarray:
    """A sine with a whole number of cycles in the window: tones of different cycles are
    orthogonal over the window, so a mix can be split back into its parts."""
    return np.sin(2 * np.pi * cycles * np.arange(n_samples) / n_samples).astype(np.float32)


def share(mix: np.ndarray, part: np.ndarray) -> float:
    """Coefficient of ``part`` in ``mix`` (least squares onto one orthogonal component)."""
    return float(mix @ part / (part @ part))


# --- peak normalisation and mixup ---------------------------------------------------------


def test_peak_normalize_scales_to_one_and_keeps_silence():
    wave = np.array([0.5, -2.0, 1.0], np.float32)
    np.testing.assert_allclose(peak_normalize(wave), [0.25, -1.0, 0.5])
    np.testing.assert_array_equal(peak_normalize(np.zeros(4)), np.zeros(4))


def test_mixup_is_hard_union_with_peak_one():
    wave_a, wave_b = 0.3 * tone(5), 0.1 * tone(9)
    target_a = np.array([1, 0, 0.8, 0], np.float32)
    target_b = np.array([1, 1, 0.5, 0], np.float32)
    wave, target = mixup(wave_a, target_a, wave_b, target_b)
    np.testing.assert_array_equal(target, [1, 1, 1, 0])
    assert np.max(np.abs(wave)) == pytest.approx(1.0)
    # Equal weights: the two parts keep their 3:1 amplitude ratio.
    assert share(wave, tone(5)) / share(wave, tone(9)) == pytest.approx(3.0, rel=1e-4)


def test_mixup_rejects_mismatched_windows():
    with pytest.raises(ValueError, match="equal shapes"):
        mixup(np.zeros(10), np.zeros(3), np.zeros(11), np.zeros(3))


# --- background mixing --------------------------------------------------------------------


def fixed_noise(noise: np.ndarray):
    return lambda rng, n_samples: noise


def test_background_weight_lies_in_range_and_spans_it():
    wave, noise = tone(10), tone(37)
    mixer = BackgroundMixer([fixed_noise(noise)], p=1.0)
    rng = np.random.default_rng(0)
    weights = []
    for _ in range(300):
        mixed = mixer(wave, rng)
        assert np.max(np.abs(mixed)) == pytest.approx(1.0)
        wave_part, noise_part = share(mixed, wave), share(mixed, noise)
        weights.append(noise_part / (wave_part + noise_part))
    assert 0.25 - 1e-4 <= min(weights) < 0.27
    assert 0.73 < max(weights) <= 0.75 + 1e-4


def test_background_fires_half_the_time_and_leaves_input_alone():
    wave = tone(10)
    original = wave.copy()
    mixer = BackgroundMixer([fixed_noise(tone(37))])
    rng = np.random.default_rng(1)
    fired = sum(mixer(wave, rng) is not wave for _ in range(2000))
    # Binomial(2000, 0.5): sd 22.4, so this bound is about 4.5 sd.
    assert 900 <= fired <= 1100
    np.testing.assert_array_equal(wave, original)


def test_background_chooses_one_source_uniformly():
    wave, rain, insects = tone(10), tone(37), tone(53)
    mixer = BackgroundMixer([fixed_noise(rain), fixed_noise(insects)], p=1.0)
    rng = np.random.default_rng(2)
    rain_count = 0
    for _ in range(1000):
        mixed = mixer(wave, rng)
        from_rain, from_insects = share(mixed, rain) > 1e-3, share(mixed, insects) > 1e-3
        assert from_rain != from_insects
        rain_count += from_rain
    assert 400 <= rain_count <= 600


def test_background_tiles_short_clip_after_peak_normalising_it():
    clip = np.array([0.0, 2.0, -4.0, 1.0, 0.5, 3.0, -1.0], np.float32)
    mixer = BackgroundMixer([[clip]], p=1.0, weight_range=(0.5, 0.5))
    tiled = np.tile(clip / 4.0, WINDOW // len(clip) + 1)[:WINDOW]
    mixed = mixer(np.zeros(WINDOW, np.float32), np.random.default_rng(3))
    np.testing.assert_allclose(mixed, tiled, rtol=1e-6)
    # Under a call the clip's level shows: at peak 1 it weighs as much as the call, not 4 times.
    call = tone(10)
    mixed = mixer(call, np.random.default_rng(3))
    np.testing.assert_allclose(mixed, peak_normalize(call + tiled), rtol=1e-5, atol=1e-6)


def test_background_crops_long_clip_at_random():
    clip = np.arange(1, 10 * WINDOW + 1, dtype=np.float32)
    mixer = BackgroundMixer([[clip]], p=1.0, weight_range=(0.5, 0.5))
    rng = np.random.default_rng(4)
    starts = set()
    for _ in range(20):
        mixed = mixer(np.zeros(WINDOW, np.float32), rng)
        # The mix is peak-normalised again: find the crop from the ratio of its ends,
        # (start + WINDOW) / (start + 1), since the clip counts 1, 2, 3, ...
        ratio = float(mixed[-1]) / float(mixed[0])
        start = round((WINDOW - ratio) / (ratio - 1))
        np.testing.assert_allclose(mixed, peak_normalize(clip[start : start + WINDOW]), rtol=1e-5)
        starts.add(start)
    assert len(starts) > 15


class CountingReads:
    """A real HDF5 store (float32, so values read back exactly) that records what was read."""

    def __init__(self, root: Path, recordings: dict[str, np.ndarray], sample_rate: int):
        from birdclef.store import AudioStore, ShardWriter, write_index

        root.mkdir(parents=True)
        writer = ShardWriter(root / "background-000.h5", sample_rate, "float32", "test")
        for key, wave in recordings.items():
            writer.append(key, wave, sample_rate, 1, "WAV")
        write_index(root, writer.close())
        self.store, self.sample_rate, self.reads = AudioStore(root), sample_rate, []

    def duration(self, key: str) -> float:
        return self.store.duration(key)

    def read(self, key: str, start_s: float, end_s: float) -> np.ndarray:
        audio = self.store.read(key, start_s, end_s)
        self.reads.append((key, len(audio)))
        return audio


def test_store_background_scales_crop_by_recording_peak_and_reads_one_window(tmp_path):
    rate = 1000
    soundscape = np.full(20 * WINDOW, 0.5, np.float32)
    soundscape[7] = 2.0  # the loudest moment is outside almost every crop
    store = CountingReads(tmp_path / "store", {"background/a.ogg": soundscape}, rate)
    source = StoreBackground(["background/a.ogg"], store, rate)
    rng = np.random.default_rng(5)
    for _ in range(5):
        crop = source(rng, WINDOW)
        assert len(crop) == WINDOW
        assert np.median(crop) == pytest.approx(0.25)
    whole_reads = [n for _, n in store.reads if n == len(soundscape)]
    assert len(whole_reads) == 1  # the peak is read once, then remembered
    assert len(store.reads) == 6


def test_store_background_short_recording_is_tiled_by_the_mixer(tmp_path):
    rate = 1000
    short = (tone(3, 700) * 0.2).astype(np.float32)
    store = CountingReads(tmp_path / "store", {"background/rain.wav": short}, rate)
    mixer = BackgroundMixer([StoreBackground(["background/rain.wav"], store, rate)], p=1.0)
    mixed = mixer(np.zeros(WINDOW, np.float32), np.random.default_rng(6))
    np.testing.assert_allclose(mixed, np.tile(short / 0.2, 5)[:WINDOW], atol=1e-5)


# --- RandomFiltering ----------------------------------------------------------------------


def band_energy_db(wave: torch.Tensor, n_fft: int = 1024, bins_per_band: int = 32) -> torch.Tensor:
    """Mean power per band of neighbouring STFT bins, in dB, (B, bands)."""
    spec = torch.stft(wave, n_fft, n_fft // 2, window=torch.hann_window(n_fft), return_complex=True)
    power = spec.abs().pow(2).mean(dim=-1)[:, : (n_fft // 2 // bins_per_band) * bins_per_band]
    return 10 * torch.log10(power.reshape(wave.shape[0], -1, bins_per_band).mean(dim=-1))


def test_random_filtering_keeps_length_and_peak():
    filtering = RandomFiltering()
    generator = torch.Generator().manual_seed(0)
    for n_samples in (160_000, 16_001):
        wave = torch.randn(3, n_samples, generator=generator)
        filtered = filtering(wave)
        assert filtered.shape == wave.shape
        torch.testing.assert_close(filtered.abs().amax(dim=-1), torch.ones(3), atol=1e-5, rtol=0)


def test_random_filtering_only_attenuates_by_at_most_20_db():
    noise = torch.randn(6, 160_000, generator=torch.Generator().manual_seed(0))
    filtering = RandomFiltering(normalize=False)
    filtered = filtering(noise, generator=torch.Generator().manual_seed(1))
    change_db = band_energy_db(filtered) - band_energy_db(noise)
    assert change_db.max() <= 0.3
    assert change_db.min() >= -20.3
    # The drawn curve is what was applied: each band follows the interpolated gains.
    gains = filtering.band_gains(6, torch.Generator().manual_seed(1), noise.device)
    expected_db = (20 * torch.log10(gains[:, :512])).reshape(6, -1, 32).mean(dim=-1)
    torch.testing.assert_close(change_db, expected_db, atol=0.5, rtol=0)
    # Each sample gets its own curve.
    assert (expected_db[0] - expected_db[1]).abs().max() > 1.0


def test_random_filtering_is_deterministic_under_a_seed():
    wave = torch.randn(2, 32_000, generator=torch.Generator().manual_seed(0))
    filtering = RandomFiltering()
    torch.manual_seed(7)
    first = filtering(wave)
    torch.manual_seed(7)
    torch.testing.assert_close(filtering(wave), first, rtol=0, atol=0)
    with_generator = filtering(wave, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(
        filtering(wave, generator=torch.Generator().manual_seed(7)), with_generator, rtol=0, atol=0
    )
    assert not torch.equal(filtering(wave, generator=torch.Generator().manual_seed(8)), first)


@pytest.mark.parametrize("hop", [512, 256])
def test_random_filtering_inverts_its_stft_as_torch_istft_does(hop):
    filtering = RandomFiltering(hop_length=hop)
    for n_samples in (160_000, 16_001):
        wave = torch.randn(3, n_samples, generator=torch.Generator().manual_seed(n_samples))
        spec = torch.stft(wave, 1024, hop, window=filtering.window, center=True, pad_mode="reflect",
                          return_complex=True)
        expected = torch.istft(spec, 1024, hop, window=filtering.window, center=True, length=n_samples)
        torch.testing.assert_close(filtering.inverse_stft(spec, n_samples), expected, rtol=1e-6, atol=1e-6)


def test_random_filtering_never_reads_a_device_value_back():
    # torch.istft checks its window envelope on every call with at::equal, which on a GPU
    # copies the result to the host: a stall in every training step. The CPU profile shows
    # the same operators, so the test runs here.
    from torch.profiler import profile

    filtering = RandomFiltering()
    wave = torch.randn(2, 32_000)
    with profile(acc_events=True) as trace:
        filtering(wave)
    readbacks = {"aten::equal", "aten::item", "aten::_local_scalar_dense", "aten::is_nonzero"}
    assert not readbacks & {event.name for event in trace.events()}


def test_random_filtering_compiles_to_one_graph_that_matches_eager():
    # No graph break (fullgraph) means no Python-side state: a tensor cached on the module from
    # inside a CUDA graph would be overwritten by the graph's next replay. aot_eager traces
    # forward and backward as torch.compile does, without inductor's slow CPU code generation.
    wave = torch.randn(2, 16_001, generator=torch.Generator().manual_seed(0))
    filtering = RandomFiltering()
    compiled = torch.compile(filtering, fullgraph=True, backend="aot_eager")
    for _ in range(2):  # the first call captures the graph, the second replays it
        torch.manual_seed(3)
        result = compiled(wave)
        torch.manual_seed(3)
        torch.testing.assert_close(result, filtering(wave), rtol=1e-5, atol=1e-6)


def test_random_filtering_refuses_hops_that_leave_gaps():
    with pytest.raises(ValueError, match="must divide n_fft"):
        RandomFiltering(hop_length=300)
    with pytest.raises(ValueError, match="no window covers"):
        RandomFiltering(hop_length=1024)


def test_random_filtering_is_identity_in_eval_mode():
    wave = torch.randn(2, 8000)
    assert RandomFiltering().eval()(wave) is wave


# --- SpecAugment --------------------------------------------------------------------------


def masked_runs(line_masked: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D bool tensor."""
    padded = torch.cat([torch.tensor([False]), line_masked, torch.tensor([False])]).int()
    edges = torch.diff(padded)
    return (torch.nonzero(edges == -1) - torch.nonzero(edges == 1)).flatten().tolist()


def masked_rows_and_columns(spec: torch.Tensor, augmented: torch.Tensor):
    """Masked frequency rows and time columns per item, (B, F) and (B, T)."""
    zero = augmented[:, 0] == 0
    rows, columns = zero.all(dim=2), zero.all(dim=1)
    # Nothing else changed: every zero lies on a masked row or column, the rest is the input.
    on_mask = rows[:, :, None] | columns[:, None, :]
    assert torch.equal(zero, on_mask)
    torch.testing.assert_close(augmented[:, 0][~on_mask], spec[:, 0][~on_mask], rtol=0, atol=0)
    return rows, columns


def test_spec_augment_masks_are_zero_and_within_widths():
    generator = torch.Generator().manual_seed(0)
    spec = 0.01 + torch.rand(2000, 1, 64, 100, generator=generator)
    rows, columns = masked_rows_and_columns(spec, SpecAugment()(spec, generator=generator))
    for item in range(len(spec)):
        for masked, width in ((rows[item], 10), (columns[item], 20)):
            runs = masked_runs(masked)
            assert len(runs) <= 3 and sum(runs) <= 3 * (width - 1)
    single = SpecAugment(max_masks=1)
    rows, columns = masked_rows_and_columns(spec, single(spec, generator=generator))
    widths_f = [max(masked_runs(r), default=0) for r in rows]
    widths_t = [max(masked_runs(c), default=0) for c in columns]
    assert max(widths_f) == 9 and max(widths_t) == 19


def test_spec_augment_draws_one_to_max_masks_per_axis():
    """Narrow masks on a tall spectrogram rarely touch, so each one shows as its own band."""
    spec = torch.ones(1000, 1, 256, 8)
    augment = SpecAugment(freq_width=3, time_width=1, max_masks=3, p=1.0)  # time masks 0 wide
    rows, _ = masked_rows_and_columns(spec, augment(spec, generator=torch.Generator().manual_seed(4)))
    bands = Counter(len(masked_runs(row)) for row in rows)
    assert max(bands) == 3 and bands[2] > 150 and bands[3] > 50, bands  # about 300 and 100


def test_spec_augment_mask_widths_are_torchaudios():
    """The seed masks with torchaudio's FrequencyMasking(10) and TimeMasking(20): one mask's
    width is uniform over 0..9 bins and 0..19 frames."""
    import torchaudio

    draws = 6000
    spec = torch.ones(draws, 1, 64, 100)
    rows, columns = masked_rows_and_columns(
        spec, SpecAugment(max_masks=1, p=1.0)(spec, generator=torch.Generator().manual_seed(2)))
    torch.manual_seed(2)
    for ours, masking, width in ((rows, torchaudio.transforms.FrequencyMasking(10), 10),
                                 (columns, torchaudio.transforms.TimeMasking(20), 20)):
        theirs = torch.stack([masking(spec[0])[0] == 0 for _ in range(draws)])
        theirs = theirs.all(dim=2 if width == 10 else 1).sum(dim=1)
        ours_share = torch.bincount(ours.sum(dim=1), minlength=width + 1) / draws
        theirs_share = torch.bincount(theirs, minlength=width + 1) / draws
        assert ours_share[width] == 0 and theirs_share[width] == 0
        assert (ours_share - theirs_share).abs().max() < 0.025, (ours_share, theirs_share)


def test_spec_augment_touches_about_30_percent_per_axis():
    generator = torch.Generator().manual_seed(1)
    spec = torch.ones(4000, 1, 32, 64)
    rows, columns = masked_rows_and_columns(spec, SpecAugment()(spec, generator=generator))
    freq_touched, time_touched = rows.any(dim=1), columns.any(dim=1)
    # p 0.3, less the rare draws where every mask has width 0: about 0.29, sd 0.007.
    assert 0.26 <= freq_touched.float().mean() <= 0.32
    assert 0.26 <= time_touched.float().mean() <= 0.32
    # Independent axes: both masked on about 0.29², not 0 or 0.29.
    assert 0.06 <= (freq_touched & time_touched).float().mean() <= 0.11


def test_spec_augment_is_identity_in_eval_mode():
    spec = torch.rand(4, 1, 128, 313)
    assert SpecAugment(p=1.0).eval()(spec) is spec
