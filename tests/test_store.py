import pickle

import numpy as np
import pytest

from birdclef.store import AudioStore, ShardWriter, StoreError, read_shard_rows, write_index


def make_store(root, dtype="float32", lengths=(80000, 200000, 1000)):
    rng = np.random.default_rng(0)
    waves = {f"train_audio/sp{i}/XC{i}.ogg": rng.uniform(-1, 1, n).astype(np.float32)
             for i, n in enumerate(lengths)}
    writer = ShardWriter(root / "train_audio-000.h5", 32000, dtype, "fp")
    for key, wave in waves.items():
        writer.append(key, wave, 44100, 2, "OGG")
    rows = writer.close()
    write_index(root, rows)
    return waves


def test_round_trip_and_random_windows(tmp_path):
    waves = make_store(tmp_path)
    store = AudioStore(tmp_path)
    assert len(store) == 3 and store.sample_rate == 32000
    rng = np.random.default_rng(1)
    for key, wave in waves.items():
        assert store.length(key) == len(wave)
        assert store.duration(key) == pytest.approx(len(wave) / 32000)
        np.testing.assert_array_equal(store.read(key), wave)
        for _ in range(20):
            start = rng.uniform(0, len(wave) / 32000)
            window = store.read(key, start, start + 5.0)
            first = round(start * 32000)
            np.testing.assert_array_equal(window, wave[first:first + 160000])


def test_windows_past_the_end_are_clipped(tmp_path):
    waves = make_store(tmp_path)
    store = AudioStore(tmp_path)
    key = "train_audio/sp2/XC2.ogg"  # 1000 samples
    assert len(store.read(key, 0.0, 5.0)) == 1000
    assert len(store.read(key, 10.0, 15.0)) == 0
    np.testing.assert_array_equal(store.read_samples(key, -5, 10), waves[key][:10])


def test_float16_storage_is_close(tmp_path):
    waves = make_store(tmp_path, dtype="float16")
    store = AudioStore(tmp_path)
    for key, wave in waves.items():
        stored = store.read(key)
        assert stored.dtype == np.float32
        assert np.max(np.abs(stored - wave)) <= 2.0**-11  # float16 spacing below 1.0


def test_float16_reads_widen_every_value_exactly(tmp_path):
    every_half = np.arange(2**16, dtype=np.uint16).view(np.float16)
    writer = ShardWriter(tmp_path / "train_audio-000.h5", 32000, "float16", "fp")
    writer.append("train_audio/all/halves.ogg", every_half.astype(np.float32), 32000, 1, "OGG")
    write_index(tmp_path, writer.close())
    stored = AudioStore(tmp_path).read_samples("train_audio/all/halves.ogg", 0, 2**16)
    assert stored.dtype == np.float32
    # numpy's cast is the reference (NaNs compare equal by position)
    np.testing.assert_array_equal(stored, every_half.astype(np.float32))


def test_unknown_key_and_missing_index_are_explained(tmp_path):
    make_store(tmp_path)
    store = AudioStore(tmp_path)
    with pytest.raises(StoreError, match="nope.ogg: not in the store"):
        store.read("train_audio/nope.ogg")
    with pytest.raises(StoreError, match="run `dvc repro precompute`"):
        AudioStore(tmp_path / "elsewhere")


def test_shard_is_invisible_until_closed_and_abort_leaves_nothing(tmp_path):
    writer = ShardWriter(tmp_path / "a-000.h5", 32000, "float32", "fp")
    writer.append("a/x.ogg", np.zeros(10, np.float32), 32000, 1, "OGG")
    assert not (tmp_path / "a-000.h5").exists()
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_shard_describes_itself(tmp_path):
    make_store(tmp_path)
    rows, skipped = read_shard_rows(tmp_path / "train_audio-000.h5")
    assert [row.key for row in rows] == [f"train_audio/sp{i}/XC{i}.ogg" for i in range(3)]
    assert rows[1].offset == 80000 and rows[1].source_rate == 44100 and rows[1].source_channels == 2
    assert skipped == []


def test_store_survives_pickling_for_workers(tmp_path):
    waves = make_store(tmp_path)
    store = AudioStore(tmp_path)
    store.read("train_audio/sp0/XC0.ogg", 0, 1)  # opens a handle
    copy = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(copy.read("train_audio/sp0/XC0.ogg"), waves["train_audio/sp0/XC0.ogg"])
