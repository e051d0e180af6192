"""ONNX export: S4M-family graphs (frozen SSM kernels, framed input) match eager PyTorch under
ONNX Runtime at any batch and length; models that cannot export are reported with a blocker."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import soundfile as sf
import torch

from experiments.deploy.onnx import (
    export_onnx,
    grouped_convs,
    parity_db,
    quantize_int8,
    separate,
    session,
)
from experiments.registry import REGISTRY, build_model, save_model
from experiments.stages import export as export_stage
from experiments.stages.separate import main
from s4m.blocks import GlobLN
from s4m.export import TwoLevelGroupNorm, with_two_level_norms

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["s4m_tiny", "s4m", "tdanet", "convtasnet", "dprnn", "sepformer"])
def test_exports_and_matches_eager(name: str, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(name, **REGISTRY[name].tiny).eval()
    info = export_onnx(model, tmp_path / "m.onnx", max_seconds=3)
    assert info["exported"], info
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert meta["sample_rate"] == "8000"
    # S4M-family graphs take the framed waveform; asteroid's the waveform (gLN as GroupNorm)
    assert ("frame_multiple" in meta) == (REGISTRY[name].cls == "S4M")
    sess = session(tmp_path / "m.onnx")
    for batch, length in ((1, 8000), (3, 4321), (2, 24000)):  # 24000: the longest allowed
        wav = torch.randn(batch, length)
        with torch.no_grad():
            expected = model(wav)
        got = separate(sess, wav)
        assert got.shape == expected.shape
        assert parity_db(expected, got) >= 60
    quantize_int8(tmp_path / "m.onnx", tmp_path / "m8.onnx")
    wav = torch.randn(1, 8000)
    assert separate(session(tmp_path / "m8.onnx"), wav).shape == (1, 2, 8000)
    # grouped convolutions stay float (ONNX Runtime's ConvInteger is slow on them)
    int8 = onnx.load(str(tmp_path / "m8.onnx")).graph.node
    kept = {n.name for n in int8 if n.op_type == "Conv"}
    assert set(grouped_convs(tmp_path / "m.onnx")) <= kept


def test_two_level_norms_compute_the_same_norm_and_keep_precision_in_onnx_runtime(
        tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.GroupNorm(1, 128, eps=1e-8), GlobLN(128))
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(0.5, 1.5)
    two_level = with_two_level_norms(copy.deepcopy(model))
    assert all(isinstance(m, TwoLevelGroupNorm) for m in two_level)
    x = torch.randn(2, 128, 16000) * 3 + 1.5  # 16 s of frames at S4M-tiny's 1 kHz frame rate
    reference = model.double()(x.double())
    torch.testing.assert_close(copy.deepcopy(two_level).double()(x.double()), reference)
    # 4-D maps (SpeechBrain's dual-path norms): statistics over every non-batch dim
    x4 = torch.randn(2, 8, 5, 7)
    norm4 = torch.nn.Sequential(torch.nn.GroupNorm(1, 8))
    torch.testing.assert_close(with_two_level_norms(copy.deepcopy(norm4))(x4), norm4(x4))
    db = {}
    for name, module in (("group_norm", model.float()), ("two_level", two_level)):
        program = torch.onnx.export(module, (x[..., :1000],), dynamo=True, verbose=False,
                                    dynamic_shapes=({2: torch.export.Dim("t", max=20000)},))
        program.save(str(tmp_path / f"{name}.onnx"))
        sess = session(tmp_path / f"{name}.onnx")
        out = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
        db[name] = parity_db(reference, out)  # the lowest over channels
    assert db["two_level"] >= 110 and db["two_level"] >= db["group_norm"] + 20, db


def test_a_model_that_does_not_export_gets_a_blocker(tmp_path: Path) -> None:
    # asteroid's SuDoRM-RF pads to its resampling factor with Python ints taken from the shape
    model = build_model("sudormrf", **REGISTRY["sudormrf"].tiny).eval()
    info = export_onnx(model, tmp_path / "c.onnx", max_seconds=2)
    assert info["exported"] is False and "fixed input sizes" in info["blocker"]
    assert not (tmp_path / "c.onnx").exists()


def test_separate_with_the_onnx_backend_matches_torch(tmp_path: Path, capsys) -> None:
    """`separate --backend onnx` on a 16 kHz stereo file, from a model package (exported on the
    fly) and from an .onnx file, against `--backend torch`; windows of 2 s over 5 s."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("s4m_tiny", **REGISTRY["s4m_tiny"].tiny).eval()
    save_model(model, tmp_path / "model.pt")
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "talk.wav", 0.1 * rng.standard_normal((5 * 16000, 2)), 16000,
             subtype="PCM_16")
    common = [str(tmp_path / "talk.wav"), "--window-s", "2", "--float", "--quiet",
              "--threads", "1"]

    def sources(out: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([sf.read(tmp_path / out / "talk" / f"s{i}.wav")[0]
                                          for i in (1, 2)]))[None]

    assert main(["--model", str(tmp_path / "model.pt"), "--out", str(tmp_path / "torch"),
                 *common]) == 0
    assert main(["--model", str(tmp_path / "model.pt"), "--backend", "onnx",
                 "--out", str(tmp_path / "onnx"), *common]) == 0
    assert sf.info(tmp_path / "onnx" / "talk" / "s1.wav").samplerate == 16000
    assert parity_db(sources("torch"), sources("onnx")) >= 60
    assert export_onnx(model, tmp_path / "m.onnx", max_seconds=2)["exported"]
    onnx_file = ["--model", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "file"), *common]
    assert main(onnx_file) == 2
    assert capsys.readouterr().err.endswith(f"error: {tmp_path / 'm.onnx'}: an ONNX file; "
                                            "pass --backend onnx\n")
    assert main([*onnx_file, "--backend", "onnx"]) == 0
    assert parity_db(sources("torch"), sources("file")) >= 60
    assert main([*onnx_file, "--backend", "onnx", "--window-s", "4"]) == 2
    assert "m.onnx: takes inputs up to 2 s, --window-s is 4" in capsys.readouterr().err
    save_model(build_model("sudormrf", **REGISTRY["sudormrf"].tiny), tmp_path / "c.pt")
    assert main(["--model", str(tmp_path / "c.pt"), "--backend", "onnx",
                 "--out", str(tmp_path / "c"), *common]) == 2
    assert "c.pt: does not export to ONNX (" in capsys.readouterr().err


def test_export_stage_keeps_finished_rows(tmp_path: Path, monkeypatch) -> None:
    """A model's row is redone only when what it depends on changed (here: its weights)."""
    calls = []

    def fake_row(name: str, *_) -> dict:
        calls.append(name)
        return {"model": name, "trained": False, "exported": False, "blocker": "b"}

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(export_stage, "parity_audio", lambda cfg: ([], torch.zeros(1)))
    monkeypatch.setattr(export_stage, "export_row", fake_row)
    args = ["--params", str(REPO / "params.yaml"), "--models", "s4m_tiny", "convtasnet",
            "--reports", str(tmp_path / "reports")]
    assert export_stage.main(args) == 0 and calls == ["s4m_tiny", "convtasnet"]
    assert export_stage.main(args) == 0 and calls == ["s4m_tiny", "convtasnet"]
    (tmp_path / "runs" / "convtasnet").mkdir(parents=True)
    (tmp_path / "runs" / "convtasnet" / "model.pt").write_bytes(b"trained weights")
    assert export_stage.main(args) == 0 and calls == ["s4m_tiny", "convtasnet", "convtasnet"]
    table = pd.read_csv(tmp_path / "reports" / "onnx.csv")
    assert list(table["model"]) == ["s4m_tiny", "convtasnet"]
    assert "## Environment of this report" in (tmp_path / "reports" / "onnx.md").read_text()


def test_export_stage_takes_the_results_weights_and_labels_si_sdri_by_the_quality_rule(
        tmp_path: Path, monkeypatch) -> None:
    """`--results` exports the results models with their first seed's weights into the results
    report folder; SI-SDRi reads "training check" until the quality rule holds, and the report
    names the models whose int8 keeps float32's SI-SDRi."""
    from experiments.config import load_profile

    weights, steps = {}, {"value": 50}

    def fake_row(name: str, cfg: dict, out_dir: Path, mixtures: list, audio: torch.Tensor,
                 path: Path) -> dict:
        weights[name] = path
        cost = 0.1 if name.startswith("s4m") else 0.5
        return {"model": name, "trained": True, "steps": steps["value"], "exported": True,
                "si_sdri_eager": 9.0, "si_sdri_onnx": 9.0, "si_sdri_int8": 9.0 - cost}

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(export_stage, "parity_audio", lambda cfg: ([], torch.zeros(1)))
    monkeypatch.setattr(export_stage, "export_row", fake_row)
    params = str(REPO / "params.yaml")
    results = load_profile(params)["results"]
    args = ["--params", params, "--results", "--reports", str(tmp_path / "reports")]
    assert export_stage.main(args) == 0
    assert weights == {m: Path(results["runs_dir"]) / m / f"seed{results['seeds'][m][0]}" /
                       "model.pt" for m in results["models"]}
    text = (tmp_path / "reports" / "onnx.md").read_text()
    assert "training check, not a result" in text and "fewest training steps 50 < 1000" in text
    keeps = [m for m in results["models"] if m.startswith("s4m")]  # fake_row's cost 0.1 dB
    loses = [m for m in results["models"] if m not in keeps]
    assert f"(within 0.2 dB): {', '.join(keeps)}; does not: {', '.join(loses)}." in text
    steps["value"] = 5000
    for row in Path("runs/onnx").glob("*.json"):
        row.unlink()
    assert export_stage.main(args) == 0
    text = (tmp_path / "reports" / "onnx.md").read_text()
    assert "training check" not in text and "SI-SDRi of trained weights (best" in text


def _readme_table(anchor: str) -> dict[str, list[str]]:
    """The first markdown table after the README line containing `anchor`: model -> cells."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if anchor in line)
    rows = {}
    for line in lines[start:]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
        elif rows:
            break
    return {model: cells for model, cells in list(rows.items())[2:]}  # header, rule


@pytest.mark.parametrize("report, anchor, si_sdri", [
    ("onnx.csv", "`reports/onnx.md` holds", False),
    ("cpu/onnx.csv", "`reports/cpu/onnx.md` holds", True)])
def test_readme_quotes_the_committed_onnx_tables(report: str, anchor: str, si_sdri: bool) -> None:
    """Every row of the committed export tables is in the README's table, rounded as shown."""
    table = pd.read_csv(REPO / "reports" / report)
    quoted = _readme_table(anchor)
    assert sorted(quoted) == sorted(table["model"])

    def joined(row: pd.Series, columns: list[str], digits: int) -> str:
        return " / ".join(f"{row[c]:.{digits}f}" for c in columns)

    for _, row in table.iterrows():
        cells = quoted[row["model"]]
        if not row["exported"]:
            assert cells[0].startswith("no: "), row["model"]
            continue
        expected = ["yes", f"{row['file_mb']:.1f}",
                    joined(row, ["parity_db_1s", "parity_db_4s", "parity_db_16s"], 1),
                    f"{row['int8_vs_fp32_db']:.1f}", f"{row['int8_file_mb']:.1f}"]
        if si_sdri:
            expected.append(joined(row, ["si_sdri_eager", "si_sdri_onnx", "si_sdri_int8"], 2))
        assert cells == expected, row["model"]
