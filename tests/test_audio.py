import numpy as np
import pytest

from birdclef.audio import AudioError, decode
from conftest import tone, write_audio


def dominant_frequency(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spectrum) * rate / len(wave))


def rms_db(wave: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(wave**2))))


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg", ".mp3"])
@pytest.mark.parametrize("rate", [22050, 32000, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_decode_keeps_frequency_level_and_duration(tmp_path, suffix, rate, channels):
    path = write_audio(tmp_path / f"tone{suffix}", tone(1000.0, 3.0, rate, channels=channels), rate)
    recording = decode(path, 32000)
    assert recording.wave.dtype == np.float32 and recording.wave.ndim == 1
    assert (recording.source_rate, recording.source_channels) == (rate, channels)
    # mp3 adds encoder delay and padding; every other format keeps the exact length
    tolerance = 3000 if suffix == ".mp3" else 2
    assert abs(len(recording.wave) - 96000) <= tolerance
    middle = recording.wave[16000:80000]
    assert dominant_frequency(middle, 32000) == pytest.approx(1000.0, abs=1.0)
    expected_level = 0.5 if channels == 1 else 0.45  # channels are averaged
    level_tolerance_db = 1.5 if suffix == ".mp3" else 0.5  # mp3 at low rates is coarse
    expected_db = 20 * np.log10(expected_level / np.sqrt(2))
    assert rms_db(middle) == pytest.approx(expected_db, abs=level_tolerance_db)


@pytest.mark.parametrize("suffix", [".wav", ".ogg", ".mp3"])
def test_decode_matches_librosa(tmp_path, suffix):
    """The seed decoded with librosa.load(path, sr=32000): same samples to 1e-4."""
    import librosa

    path = write_audio(tmp_path / f"chirp{suffix}", tone(3000.0, 2.0, 44100, level=0.3, channels=2), 44100)
    ours = decode(path, 32000).wave
    reference, _ = librosa.load(path, sr=32000)
    assert ours.shape == reference.shape
    assert np.max(np.abs(ours - reference)) < 1e-4


def test_corrupt_file_names_the_file(tmp_path):
    path = tmp_path / "XC1.ogg"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(AudioError, match="XC1.ogg.*corrupt"):
        decode(path)


def test_a_file_that_is_no_mp3_is_not_called_missing(tmp_path):
    """libsndfile words an MPEG stream it cannot parse as "File does not exist or is not a
    regular file"; the file is there, so the message must not send the user looking for it."""
    path = tmp_path / "notes.mp3"
    path.write_text("not audio at all\n" * 20)
    with pytest.raises(AudioError, match=r"notes.mp3: cannot decode \(libsndfile cannot parse it\); the file is "
                                         r"corrupt or not audio"):
        decode(path)


def test_empty_files_are_rejected(tmp_path):
    zero_bytes = tmp_path / "zero.wav"
    zero_bytes.write_bytes(b"")
    with pytest.raises(AudioError, match=r"zero.wav: empty file \(0 bytes\); delete or replace it"):
        decode(zero_bytes)
    no_frames = write_audio(tmp_path / "silent.wav", np.zeros(0, dtype=np.float32), 32000)
    with pytest.raises(AudioError, match="silent.wav: contains no samples"):
        decode(no_frames)


def test_truncated_file_fails_naming_it(tmp_path):
    # libsndfile reads no frames from an Ogg cut in half: an error naming the file, not a crash
    path = write_audio(tmp_path / "cut.ogg", tone(800.0, 6.0, 32000), 32000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match="cut.ogg: contains no samples"):
        decode(path)



def test_a_file_that_cannot_be_opened_says_why_not_that_it_is_corrupt(tmp_path):
    (tmp_path / "broken.wav").symlink_to(tmp_path / "moved_away.wav")
    with pytest.raises(AudioError, match=r"broken.wav: cannot open it \(No such file or directory\); check the "
                                         r"path \(a broken link\?\)"):
        decode(tmp_path / "broken.wav")
    (tmp_path / "folder.wav").mkdir()
    with pytest.raises(AudioError, match=r"folder.wav: cannot open it \(Is a directory\)"):
        decode(tmp_path / "folder.wav")
