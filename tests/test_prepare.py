"""The `prepare` stage: params in, dataset out under data.out_dir, clear errors otherwise."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml

from experiments.config import ConfigError, load_profile
from experiments.data import make_dataset
from experiments.data.prepare import prepare
from experiments.stages.prepare import main

REPO = Path(__file__).resolve().parent.parent


def _cfg(out_dir: Path, **data) -> dict:
    base = {"source": "synthetic", "out_dir": str(out_dir), "sample_rate": 8000, "mode": "min",
            "task": "sep_clean", "types": ["mix_clean"], "num_workers": 2,
            "synthetic": {"n_train": 2, "n_dev": 2, "n_test": 2, "n_speakers": 6,
                          "speech_seconds": [1.0, 2.0]}}
    return {"profile": "test", "seed": 0, "data": {**base, **data}}


def test_stage_builds_from_a_params_file(tmp_path):
    params = {"profile": "tiny", "seed": 3, "threads": 1,
              "profiles": {"tiny": {"data": _cfg(tmp_path / "prepared")["data"]}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    main(["--params", str(tmp_path / "params.yaml")])
    out = tmp_path / "prepared"
    summary = json.loads((out / "prepare_summary.json").read_text())
    assert summary["source"] == "synthetic" and summary["seed"] == 3 and summary["files"] > 0
    assert sorted(p.name for p in out.iterdir()) == [
        "Libri2Mix", "metadata", "prepare_summary.json", "synthetic.json"]
    assert sorted(p.name for p in (out / "Libri2Mix/wav8k/min/dev").iterdir()) == [
        "mix_clean", "s1", "s2"]
    data_cfg = load_profile(tmp_path / "params.yaml")["data"]
    for split, n in (("train", 2), ("dev", 2), ("test", 2)):
        assert len(make_dataset(data_cfg, split, segment=None)) == n
    with pytest.raises(FileNotFoundError, match="mix_both.csv.*sep_noisy"):
        make_dataset({**data_cfg, "task": "sep_noisy"}, "dev", segment=None)
    # Same settings again: nothing to redo (no audio or metadata file rewritten); another seed
    # on the same folder: refused.
    def stamps() -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in out.rglob("*")
                if p.is_file() and p.suffix in (".wav", ".csv")}
    before = stamps()
    main(["--params", str(tmp_path / "params.yaml")])
    assert before and stamps() == before
    # A moved folder (e.g. restored from the DVC cache elsewhere) still loads.
    moved = tmp_path / "moved"
    out.rename(moved)
    mixture, sources = make_dataset({**data_cfg, "out_dir": str(moved)}, "test", segment=None)[0]
    assert sources.shape == (2, mixture.shape[0])
    moved.rename(out)
    with pytest.raises(ConfigError, match="other settings"):
        prepare({**_cfg(out), "seed": 4}, progress=False)


def test_asteroid_opens_the_prepared_csvs_from_any_directory(tmp_path, monkeypatch):
    # Prepared in two checkouts (relative out_dir, as under DVC): the same bytes, so the DVC
    # hash does not depend on the machine's paths.
    trees = []
    for checkout in ("a", "b"):
        (tmp_path / checkout).mkdir()
        monkeypatch.chdir(tmp_path / checkout)
        prepare(_cfg(Path("data/prepared")), progress=False)
        out = tmp_path / checkout / "data/prepared"
        trees.append({p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()})
    assert trees[0] == trees[1]
    local = tmp_path / "a/data/prepared_local"
    assert set(json.loads((local / "prepare_metrics.json").read_text())) == {
        "build_seconds", "workers"}
    test_csvs = local / "Libri2Mix/wav8k/min/metadata/test"
    paths = pd.read_csv(test_csvs / "mixture_test_mix_clean.csv")
    assert all(Path(p).is_absolute() for p in paths.mixture_path)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # asteroid.data imports pkg_resources
        from asteroid.data import LibriMix
    ds = LibriMix(csv_dir=str(test_csvs), task="sep_clean", sample_rate=8000, n_src=2,
                  segment=None)
    mixture, sources = ds[0]
    assert len(ds) == 2 and sources.shape == (2, mixture.shape[0])
    # The data moved with its absolute CSVs (another machine, restored from the DVC cache):
    # reading it rewrites them for the new place.
    (tmp_path / "a/data").rename(tmp_path / "c")
    ds = make_dataset(_cfg(tmp_path / "c/prepared")["data"], "test", segment=None)
    assert ds.df.mixture_path[0].startswith(str(tmp_path / "c/prepared/"))
    assert ds[0][1].shape[0] == 2
    paths = pd.read_csv(tmp_path / "c/prepared_local" / test_csvs.relative_to(local)
                        / "mixture_test_mix_clean.csv")
    assert list(paths.mixture_path) == list(ds.df.mixture_path)


def test_repo_params_profiles_have_the_data_settings():
    for profile in ("default", "smoke", "libri2mix", "wham"):
        data = load_profile(REPO / "params.yaml", profile)["data"]
        for key in ("source", "out_dir", "sample_rate", "mode", "task"):
            assert key in data, (profile, key)
        assert data["out_dir"].startswith("data/")
    default = load_profile(REPO / "params.yaml", "default")["data"]
    assert default["source"] == "synthetic" and default["sample_rate"] == 8000
    assert set(default["types"]) == {"mix_clean", "mix_both"}


def test_bad_settings_name_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="data.source"):
        prepare(_cfg(tmp_path, source="timit"), progress=False)
    cfg = _cfg(tmp_path)
    del cfg["data"]["synthetic"]["n_train"]
    with pytest.raises(ConfigError, match="data.synthetic.n_train"):
        prepare(cfg, progress=False)
    cfg = _cfg(tmp_path)
    cfg["data"]["synthetic"]["speech_seconds"] = 2.0
    with pytest.raises(ConfigError, match="data.synthetic.speech_seconds"):
        prepare(cfg, progress=False)
    with pytest.raises(FileNotFoundError, match="data.librispeech_root"):
        prepare(_cfg(tmp_path, source="librimix", librispeech_root=str(tmp_path / "none"),
                     wham_noise_root=str(tmp_path)), progress=False)
    with pytest.raises(ConfigError, match="data.sample_rate"):
        prepare(_cfg(tmp_path, sample_rate=11025), progress=False)


def test_make_dataset_errors(tmp_path):
    data = _cfg(tmp_path / "empty")["data"]
    with pytest.raises(FileNotFoundError, match="empty.*run `python -m experiments.stages.prepare"):
        make_dataset(data, "dev", segment=None)
    with pytest.raises(ValueError, match="split"):
        make_dataset(data, "valid", segment=None)
    with pytest.raises(ConfigError, match="data.task"):
        make_dataset({**data, "task": "enh_single"}, "dev", segment=None)
    with pytest.raises(ConfigError, match="data.source"):
        make_dataset({**data, "source": "timit"}, "dev", segment=None)
    del data["out_dir"]
    with pytest.raises(ConfigError, match="data.out_dir"):
        make_dataset(data, "dev", segment=None)
