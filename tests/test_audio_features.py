"""Audio loading and the mel frontend against direct librosa/soundfile calls."""
import librosa
import numpy as np
import pytest
import soundfile as sf

from conftest import write_tone
from jaxtag.data import audio, features
from jaxtag.errors import DataError


def test_mel_matches_direct_librosa_call_with_paper_parameters():
    rng = np.random.default_rng(0)
    y = rng.standard_normal(20500 * 3).astype(np.float32) * 0.1
    settings = features.FrontendSettings()
    mel = features.mel_spectrogram(y, settings)
    expected = librosa.feature.melspectrogram(y=y, sr=20500, n_fft=2048, hop_length=1024, n_mels=128)
    assert mel.shape == (1 + len(y) // 1024, 128)
    np.testing.assert_allclose(mel, expected.T, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("sr, n_fft, n_mels", [(20500, 2048, 128), (16000, 512, 96), (8000, 512, 32),
                                                (44100, 4096, 40), (22050, 1000, 64)])
def test_mel_basis_is_librosas_filterbank(sr, n_fft, n_mels):
    settings = features.FrontendSettings(sample_rate=sr, n_fft=n_fft, n_mels=n_mels)
    np.testing.assert_allclose(features.mel_basis(settings), librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels),
                               rtol=1e-6, atol=1e-9)


def test_library_decoding_worker_needs_no_librosa(tmp_path):
    """Streaming mel frames given the basis imports neither librosa nor scipy (seconds and about
    100 MB in every decoding worker), and gives mel_spectrogram's frames."""
    import subprocess
    import sys
    path = write_tone(tmp_path / "tone.wav", 3.0, sr=16000)
    code = ("import sys, numpy as np; from jaxtag.data.features import FrontendSettings, StreamingMel; "
            "from jaxtag.data.audio import AudioStream; s = FrontendSettings(sample_rate=16000, n_fft=512, "
            "hop_length=256, n_mels=96); m = StreamingMel(s, np.load(sys.argv[2])); "
            "f = np.concatenate([m.push(b) for b in AudioStream(sys.argv[1], 16000)] + [m.finish()]); "
            "np.save(sys.argv[3], f); print(sorted(n for n in ('librosa', 'scipy') if n in sys.modules))")
    settings = features.FrontendSettings(sample_rate=16000, n_fft=512, hop_length=256, n_mels=96)
    np.save(tmp_path / "basis.npy", features.mel_basis(settings))
    out = subprocess.run([sys.executable, "-c", code, path, str(tmp_path / "basis.npy"), str(tmp_path / "f.npy")],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    expected = features.mel_spectrogram(audio.load_audio(path, 16000), settings)
    np.testing.assert_allclose(np.load(tmp_path / "f.npy"), expected, rtol=1e-4, atol=1e-7 * expected.max())


@pytest.mark.parametrize("channels", [2, 3, 6, 7, 8, 12])
def test_downmix_gives_librosas_floats_exactly(channels):
    rng = np.random.default_rng(channels)
    samples = rng.standard_normal((10001, channels)).astype(np.float32) * rng.uniform(0.1, 10, channels)
    samples = samples.astype(np.float32)
    np.testing.assert_array_equal(audio.to_mono(samples), librosa.to_mono(samples.T))


def test_load_audio_downmixes_and_resamples(tmp_path):
    path = write_tone(tmp_path / "stereo.wav", 2.0, sr=44100, channels=2)
    y = audio.load_audio(path, 20500)
    raw, sr = sf.read(path, dtype="float32")
    expected = librosa.resample(raw.mean(axis=1), orig_sr=sr, target_sr=20500)
    np.testing.assert_allclose(y, expected, atol=1e-5)


@pytest.mark.parametrize("fmt", ["mp3", "flac", "ogg"])
def test_load_audio_decodes_compressed_formats(tmp_path, fmt):
    path = write_tone(tmp_path / f"tone.{fmt}", 1.5, sr=22050, fmt=fmt.upper() if fmt != "ogg" else "OGG")
    y = audio.load_audio(path, 22050)
    assert abs(len(y) / 22050 - 1.5) < 0.1
    # A 220 Hz tone should keep its pitch through encode/decode.
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) * 22050 / len(y) - 440.0) < 5


@pytest.mark.parametrize("case", ["zero_bytes", "text_as_mp3", "missing"])
def test_bad_audio_is_a_data_error_naming_the_file(tmp_path, case):
    path = tmp_path / "bad.mp3"
    if case == "zero_bytes":
        path.write_bytes(b"")
    elif case == "text_as_mp3":
        path.write_text("this is not audio\n" * 50)
    with pytest.raises(DataError) as info:
        audio.load_audio(path, 20500)
    assert str(path) in str(info.value)


def test_non_finite_samples_are_rejected():
    with pytest.raises(DataError, match="NaN"):
        audio.prepare_waveform(np.array([0.0, np.nan], np.float32), 8000, 8000, source="x.wav")
