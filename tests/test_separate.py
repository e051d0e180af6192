"""Separating users' recordings: resampling, channels, windowing with speaker alignment, bad
input, skipping, published model files and the CLI. Models are small registry models, asteroid
and SpeechBrain files made here, and a fixed FIR band-split separator (a real linear model with a
finite receptive field, whose outputs are exactly predictable)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from asteroid.dsp.overlap_add import LambdaOverlapAdd
from asteroid.models import ConvTasNet
from scipy.optimize import linear_sum_assignment
from scipy.signal import firwin, resample_poly

from experiments.registry import build_model, load_model, save_model
from experiments.separation import find_inputs, separate_file, separate_files
from experiments.stages.separate import main

REPO = Path(__file__).resolve().parents[1]
# Conv-TasNet with channel-wise LN (per frame): a registry model whose output at a sample
# depends only on ~80 samples around it, so windowing can reproduce its whole-file output.
SMALL_CONVTASNET = dict(n_filters=64, bn_chan=32, hid_chan=64, skip_chan=32, n_blocks=2,
                        n_repeats=1, norm_type="cLN")


class BandSplit(torch.nn.Module):
    """One linear-phase FIR filter per source (scipy firwin, `taps` long); with `sort` the
    outputs come loudest first, so their order changes with the input as a PIT-trained
    model's does."""

    def __init__(self, bands: list[tuple[float | None, float | None]], sample_rate: int = 8000,
                 taps: int = 129, sort: bool = False):
        super().__init__()
        filters = []
        for low, high in bands:
            if low is None:
                h = firwin(taps, high, fs=sample_rate)
            elif high is None:
                h = firwin(taps, low, pass_zero=False, fs=sample_rate)
            else:
                h = firwin(taps, [low, high], pass_zero=False, fs=sample_rate)
            filters.append(torch.tensor(h, dtype=torch.float32))
        self.register_buffer("weight", torch.stack(filters)[:, None])  # (n_src, 1, taps)
        self.sample_rate, self.n_src, self.sort = sample_rate, len(bands), sort

    def forward(self, mix: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, n_src, T)
        taps, length = self.weight.shape[-1], mix.shape[-1]
        n = length + taps - 1  # linear convolution by FFT (F.conv1d is slow at 129 taps)
        spec = torch.fft.rfft(mix, n)[:, None] * torch.fft.rfft(self.weight[:, 0], n)
        est = torch.fft.irfft(spec, n)[..., taps // 2: taps // 2 + length]  # "same" alignment
        if self.sort:
            order = est.pow(2).sum(-1).argsort(dim=-1, descending=True)
            est = est.gather(1, order[..., None].expand_as(est))
        return est


TWO_BANDS = [(None, 1400.0), (2000.0, None)]  # an 8 kHz model: low band, high band


def tone(freq: float, seconds: float, rate: int, amp: float = 0.3) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(
        np.float32)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def best_perm(est: np.ndarray, ref: np.ndarray) -> list[int]:
    """The order of `est` that best matches `ref` (largest summed |correlation|)."""
    score = np.array([[abs(corr(e, r)) for e in est] for r in ref])
    return list(linear_sum_assignment(score, maximize=True)[1])


@pytest.mark.parametrize(("rate", "subtype"), [(16000, "PCM_16"), (44100, "PCM_24")])
def test_resampled_to_the_model_and_back(rate: int, subtype: str, tmp_path: Path) -> None:
    low, high = tone(600, 2.0, rate), tone(2800, 2.0, rate)
    sf.write(tmp_path / "in.wav", low + high, rate, subtype=subtype)
    model = BandSplit(TWO_BANDS)
    sep = separate_file(model, tmp_path / "in.wav")
    assert sep.sample_rate == rate and sep.sources.shape == (2, low.size)
    assert sep.input_subtype == subtype
    inner = slice(rate // 10, -rate // 10)
    # Fed unresampled, the 8 kHz model would hear 110/508 Hz (44.1k) or 300/1400 Hz (16k):
    # both tones in the low band.
    assert corr(sep.sources[0][inner], low[inner]) > 0.99
    assert corr(sep.sources[1][inner], high[inner]) > 0.99
    kept = separate_file(model, tmp_path / "in.wav", keep_model_rate=True)
    assert kept.sample_rate == 8000
    assert kept.sources.shape == (2, -(-low.size * 8000 // rate))


def test_stereo_downmix_or_one_channel(tmp_path: Path) -> None:
    left, right = tone(600, 1.0, 8000), tone(2800, 1.0, 8000)
    sf.write(tmp_path / "stereo.flac", np.stack([left, right], 1), 8000, subtype="PCM_16")
    model = BandSplit(TWO_BANDS)
    mixed = separate_file(model, tmp_path / "stereo.flac")
    assert mixed.notes == (f"{tmp_path / 'stereo.flac'}: 2 channels downmixed to mono "
                           "(--channel picks one instead)",)
    inner = slice(800, -800)
    np.testing.assert_allclose(mixed.sources[0][inner], left[inner] / 2, atol=0.01)
    np.testing.assert_allclose(mixed.sources[1][inner], right[inner] / 2, atol=0.01)
    right_only = separate_file(model, tmp_path / "stereo.flac", channel=1)
    assert right_only.notes == ()
    assert np.abs(right_only.sources[0][inner]).max() < 0.01
    np.testing.assert_allclose(right_only.sources[1][inner], right[inner], atol=0.01)
    with pytest.raises(ValueError, match=r"stereo.flac: has 2 channel\(s\), no channel 2"):
        separate_file(model, tmp_path / "stereo.flac", channel=2)


def test_windows_reproduce_the_whole_file_result(tmp_path: Path) -> None:
    """A registry model with a local receptive field: 30 s in 4 s windows, 2 s hop."""
    model = build_model("convtasnet", **SMALL_CONVTASNET).eval()
    calls: list[int] = []
    model.register_forward_hook(lambda _m, args, _out: calls.append(args[0].shape[-1]))
    rng = np.random.default_rng(0)
    mix = (0.1 * rng.standard_normal(30 * 8000) + tone(300, 30, 8000)).astype(np.float32)
    sf.write(tmp_path / "long.wav", mix, 8000, subtype="FLOAT")
    with torch.no_grad():
        whole = model(torch.from_numpy(mix)[None])[0].numpy()
    calls.clear()
    windowed = separate_file(model, tmp_path / "long.wav", window_s=4.0, hop_s=2.0).sources
    assert calls == [4 * 8000] * 14  # starts 0, 2, ..., 24 s and 26 s (ending at the end)
    # Stated tolerance: 1e-4 of the output's peak, at every sample including the file's
    # edges (the first window starts at the first sample, the last ends at the last). A
    # sample's estimates differ from the whole-file ones only within ~80 samples of a window
    # edge, where its Hann weight is below 1e-4.
    assert np.abs(windowed - whole).max() <= 1e-4 * np.abs(whole).max()


def test_speaker_order_is_kept_across_windows(tmp_path: Path) -> None:
    """Three tones whose loudness ranking rotates: a loudest-first separator's output order
    changes from window to window; the aligned windows keep each tone in one output."""
    rate, seconds = 8000, 60
    t = np.arange(seconds * rate) / rate
    sources = np.stack([
        (1 + 0.9 * np.sin(2 * np.pi * t / 20 + 2 * np.pi * k / 3)) * 0.2
        * np.sin(2 * np.pi * f * t) for k, f in enumerate((400, 1500, 3000))
    ]).astype(np.float32)
    mix = sources.sum(0)
    sf.write(tmp_path / "rotating.wav", mix, rate, subtype="FLOAT")
    model = BandSplit([(None, 900.0), (1000.0, 2200.0), (2500.0, None)], sort=True)
    blocks = [slice(s, s + rate) for s in range(rate, (seconds - 1) * rate, rate)]

    def assignments(est: np.ndarray) -> set[tuple[int, ...]]:
        return {tuple(best_perm(est[:, b], sources[:, b])) for b in blocks}

    window, hop = 4 * rate, 2 * rate
    with torch.no_grad():
        whole = model(torch.from_numpy(mix)[None])[0].numpy()
        naive = LambdaOverlapAdd(model, 3, window, hop, reorder_chunks=False)(
            torch.from_numpy(mix)[None, None])[0].numpy()
    assert len(assignments(naive)) > 1  # unaligned windows swap the tones between outputs
    with torch.no_grad():  # asteroid 0.7.0's alignment applies the inverse permutation
        asteroid = LambdaOverlapAdd(model, 3, window, hop, reorder_chunks=True)(
            torch.from_numpy(mix)[None, None])[0].numpy()
    assert len(assignments(asteroid)) > 1  # (why experiments.separation aligns windows itself)
    aligned = separate_file(model, tmp_path / "rotating.wav", window_s=4.0, hop_s=2.0).sources
    assert len(assignments(aligned)) == 1  # each tone stays in one output
    aligned = aligned[best_perm(aligned, whole)]
    assert np.abs(aligned - whole).max() <= 1e-3 * np.abs(whole).max()


def test_bad_inputs_fail_alone_and_leave_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "good.wav", tone(600, 0.5, 8000), 8000, subtype="PCM_16")
    sf.write(folder / "empty.wav", np.zeros(0, np.float32), 8000, subtype="PCM_16")
    (folder / "text.wav").write_text("not audio\n")
    (folder / "cut.flac").write_bytes(b"fLaC" + bytes(40))  # unreadable: a broken FLAC
    sf.write(folder / "nan.wav", np.array([0.1, np.nan], np.float32), 8000, subtype="FLOAT")
    lines: list[str] = []
    out = tmp_path / "out"
    summary = separate_files(BandSplit(TWO_BANDS), [folder, tmp_path / "missing.wav"], out,
                             progress=False, log=lines.append)
    expected = {
        "empty.wav": "empty (no samples)",
        "text.wav": "not readable as audio (Format not recognised.)",
        "cut.flac": "not readable as audio",
        "nan.wav": "contains NaN or infinite samples",
    }
    assert len(lines) == 5 and all(line.count("\n") == 0 for line in lines)
    for name, reason in expected.items():
        assert any(line.startswith(f"error: {folder / name}: {reason}") for line in lines), name
    assert f"error: {tmp_path / 'missing.wav'}: no such file" in lines
    assert (summary.count("separated"), summary.count("failed")) == (1, 5)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "good", "good/s1.wav", "good/s2.wav"]


def test_model_errors_exit_2_and_n_src_mismatch(tmp_path: Path, capsys) -> None:
    sf.write(tmp_path / "a.wav", tone(600, 0.5, 8000), 8000)
    assert main(["--model", str(tmp_path / "none.pt"), str(tmp_path / "a.wav")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'none.pt'}: no such file\n"
    (tmp_path / "notes.pt").write_text("not a model")
    assert main(["--model", str(tmp_path / "notes.pt"), str(tmp_path / "a.wav")]) == 2
    assert "notes.pt: not loadable with weights_only=True" in capsys.readouterr().err
    save_model(build_model("convtasnet", **SMALL_CONVTASNET), tmp_path / "two.pt")
    args = ["--model", str(tmp_path / "two.pt"), str(tmp_path / "a.wav"), "--quiet",
            "--out", str(tmp_path / "out")]
    assert main([*args, "--n-src", "3"]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'two.pt'}: the model separates 2 "
                                       "sources, --n-src asks for 3\n")
    assert main([*args, "--window-s", "2", "--hop-s", "1.5"]) == 2
    assert "hop_s=1.5 must be positive and at most half of window_s=2.0" in (
        capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
    # a model returning another number of sources than asked: an error naming the file
    with pytest.raises(ValueError, match=r"a.wav: model returned shape \(1, 2, 4000\) for a "
                                         r"\(1, 4000\) input, expected \(1, 3, 4000\)"):
        separate_file(BandSplit(TWO_BANDS), tmp_path / "a.wav", n_src=3)


def test_skip_overwrite_and_all_or_nothing(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", tone(600, 1.0, 8000, amp=0.5) + tone(2800, 1.0, 8000, amp=0.1),
             8000, subtype="PCM_16")
    model, out = BandSplit(TWO_BANDS), tmp_path / "out"

    def run(**kwargs) -> str:
        summary = separate_files(model, [tmp_path / "a.wav"], out, progress=False,
                                 log=lambda _: None, **kwargs)
        return summary.results[0].status

    assert run() == "separated"
    stamps = [p.stat().st_mtime_ns for p in (out / "a").iterdir()]
    assert run(normalize=True) == "skipped"
    assert [p.stat().st_mtime_ns for p in (out / "a").iterdir()] == stamps
    assert abs(sf.read(out / "a" / "s2.wav")[0]).max() < 0.15
    assert run(normalize=True, overwrite=True) == "separated"
    peak = abs(sf.read(tmp_path / "a.wav")[0]).max()
    for name in ("s1.wav", "s2.wav"):  # each scaled to the input's peak
        assert abs(sf.read(out / "a" / name)[0]).max() == pytest.approx(peak, abs=1e-4)
    (out / "a" / "s2.wav").unlink()
    assert run() == "separated"  # an incomplete set is redone
    # a write that fails (s2.wav is a folder) leaves neither s1.wav nor a temporary file
    (out / "a" / "s1.wav").unlink()
    (out / "a" / "s2.wav").unlink()
    (out / "a" / "s2.wav").mkdir()
    assert run(overwrite=True) == "failed"
    assert [p.name for p in (out / "a").iterdir()] == ["s2.wav"]


def test_input_discovery(tmp_path: Path) -> None:
    for rel in ("a/x.wav", "b/x.wav", "b/deep/y.flac", "b/notes.txt", "b/.x.wav.1.tmp",
                "b/out/a/s1.wav"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    jobs, errors = find_inputs([tmp_path / "b", tmp_path / "a" / "x.wav", tmp_path / "b/x.wav"],
                               exclude=tmp_path / "b" / "out")
    assert [(p.relative_to(tmp_path).as_posix(), n.as_posix()) for p, n in jobs] == [
        ("b/deep/y.flac", "deep/y"), ("b/x.wav", "x")]
    assert errors == [(tmp_path / "a/x.wav", f"{tmp_path / 'a/x.wav'}: its output folder x is "
                                             f"already {tmp_path / 'b/x.wav'}'s; separate one "
                                             "of them in another run")]
    jobs, errors = find_inputs([tmp_path / "b"], glob="*.txt")
    assert [n.as_posix() for _, n in jobs] == ["notes"] and not errors
    assert find_inputs([tmp_path / "a"], glob="*.ogg")[1] == [
        (tmp_path / "a", f"{tmp_path / 'a'}: no audio files in this folder match '*.ogg'")]


def test_published_asteroid_file(tmp_path: Path) -> None:
    library = ConvTasNet(2, **{k: v for k, v in SMALL_CONVTASNET.items()
                               if k != "norm_type"}).eval()
    torch.save(library.serialize(), tmp_path / "pytorch_model.bin")  # as asteroid publishes
    mix = np.random.default_rng(1).uniform(-0.5, 0.5, 2 * (16 + 8 * 500)).astype(np.float32)
    sf.write(tmp_path / "in.wav", mix, 16000, subtype="FLOAT")
    sep = separate_file(load_model(tmp_path / "pytorch_model.bin").eval(), tmp_path / "in.wav")
    with torch.no_grad():  # the library model on the file resampled by hand, and back
        at_8k = torch.from_numpy(resample_poly(mix, 1, 2).astype(np.float32))
        expected = resample_poly(library(at_8k[None])[0].numpy(), 2, 1, axis=-1)
    assert sep.sample_rate == 16000
    np.testing.assert_allclose(sep.sources, expected[:, : mix.size], atol=1e-5)


def test_speechbrain_folder(tmp_path: Path, speechbrain_folder, recipe_separation) -> None:
    hparams = speechbrain_folder(tmp_path / "sepformer")  # a 16 kHz model
    model = load_model(tmp_path / "sepformer").eval()
    mix = np.random.default_rng(2).uniform(-0.5, 0.5, 8 + 4 * 150).astype(np.float32)
    sf.write(tmp_path / "in16.wav", mix, 16000, subtype="FLOAT")
    sep = separate_file(model, tmp_path / "in16.wav")
    with torch.no_grad():
        expected = recipe_separation(hparams, torch.from_numpy(mix)[None])[0].numpy()
    np.testing.assert_allclose(sep.sources, expected, atol=1e-5)
    sf.write(tmp_path / "in8.wav", mix, 8000, subtype="PCM_16")
    sep = separate_file(model, tmp_path / "in8.wav")
    assert (sep.sample_rate, sep.sources.shape) == (8000, (2, mix.size))


def test_cli_exit_status_and_subtypes(tmp_path: Path, capsys) -> None:
    """The module as users run it: a registry package of S4M, mixed formats, one bad file."""
    save_model(build_model("s4m_tiny", num_blocks=1), tmp_path / "model.pt")
    folder = tmp_path / "rec"
    (folder / "day2").mkdir(parents=True)
    sf.write(folder / "talk.wav", tone(600, 1.0, 16000), 16000, subtype="PCM_16")
    stereo = np.stack([tone(600, 1.0, 44100), tone(900, 1.0, 44100)], 1)
    sf.write(folder / "day2" / "talk.flac", stereo, 44100, subtype="PCM_24")
    sf.write(folder / "phone.ogg", tone(600, 1.0, 8000), 8000, format="OGG", subtype="VORBIS")
    (folder / "readme.wav").write_text("not audio")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "experiments.stages.separate", "--model",
           str(tmp_path / "model.pt"), str(folder), "--out", str(out), "--threads", "1",
           "--quiet"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {folder / 'readme.wav'}: not readable as audio "
                      "(Format not recognised.)"]
    assert f"{folder / 'day2' / 'talk.flac'}: 2 channels downmixed" in proc.stderr
    assert proc.stdout.startswith("3 separated, 0 skipped, 1 failed: 3.0 s of audio in ")
    assert "real-time factor" in proc.stdout
    for name, rate, subtype in (("talk", 16000, "PCM_16"), ("day2/talk", 44100, "PCM_24"),
                                ("phone", 8000, "FLOAT")):
        for source in ("s1.wav", "s2.wav"):
            info = sf.info(out / name / source)
            assert (info.samplerate, info.frames, info.subtype) == (rate, rate, subtype), name
    (folder / "readme.wav").unlink()  # in-process from here: the same main()
    assert main(cmd[3:] + ["--float"]) == 0
    assert capsys.readouterr().out.startswith("0 separated, 3 skipped, 0 failed")
    assert main(cmd[3:] + ["--float", "--overwrite", "--glob", "*.wav"]) == 0
    assert capsys.readouterr().out.startswith("1 separated, 0 skipped, 0 failed")
    assert sf.info(out / "talk" / "s1.wav").subtype == "FLOAT"
