"""experiments.dispatch.cluster without a cluster: settings, `-S` overrides, sbatch lines."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from experiments.config import REPO_PARAMS, ConfigError, load_params
from experiments.dispatch.cluster import kind_settings, load_cluster, make_executor, sbatch_lines


def _params(tmp_path: Path, cluster: dict | None) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({} if cluster is None else {"cluster": cluster}))
    return path


def test_defaults_are_the_repository_params_cluster_block(tmp_path: Path) -> None:
    repo = load_params(REPO_PARAMS)["cluster"]
    assert load_cluster(REPO_PARAMS, []) == repo
    assert load_cluster(_params(tmp_path, None), []) == repo
    assert load_cluster(_params(tmp_path, {"mem_gb": 64}), []) == {**repo, "mem_gb": 64}


def test_overrides_set_nested_settings_as_yaml_values(tmp_path: Path) -> None:
    settings = load_cluster(_params(tmp_path, {"stages": {}}),
                            ["partition=gpu", "cluster.stages.train.timeout_min=7",
                             "sbatch.qos=normal", "account=null"])
    assert settings["partition"] == "gpu" and settings["account"] is None
    assert settings["stages"] == {"train": {"timeout_min": 7}}
    assert settings["sbatch"] == {"qos": "normal"}
    assert kind_settings(settings, "train")["timeout_min"] == 7


@pytest.mark.parametrize(("overrides", "message"), [
    (["partition"], "-S 'partition': expected key=value"),
    (["partition=gpu", "partition.x=1"], "partition is not a mapping"),
    (["no_such=1"], "unknown setting cluster.no_such"),
    (["stages.train.no_such=1"], "cluster.stages.train.no_such"),
])
def test_errors_name_the_setting(tmp_path: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_cluster(_params(tmp_path, {}), overrides)


def test_sbatch_lines_of_a_job_array(tmp_path: Path) -> None:
    # pins submitit's private _make_sbatch_string, which renders them without submitting
    settings = load_cluster(_params(tmp_path, {"stages": {}}),
                            ["partition=short", "timeout_min=7", "sbatch.qos=normal"])
    ex = make_executor("slurm", tmp_path / "logs", kind_settings(settings, "train"),
                       dependency="afterany:12")
    lines = sbatch_lines(ex, 3)
    for line in ("--array=0-2%3", "--partition=short", "--time=7", "--qos=normal",
                 f"--cpus-per-task={settings['cpus_per_task']}", f"--mem={settings['mem_gb']}GB",
                 "--dependency=afterany:12", "--job-name=s4m"):
        assert f"#SBATCH {line}" in lines, (line, lines)
