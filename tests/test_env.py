"""The environment block's commit: `+dirty` for changed code, not for regenerated outputs."""

from __future__ import annotations

import subprocess

from experiments.env import git_commit


def test_dirty_means_changed_code_not_regenerated_reports(tmp_path, monkeypatch):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    (tmp_path / "reports").mkdir()
    for name in ("code.py", "dvc.lock", "reports/results.md"):
        (tmp_path / name).write_text("v1\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "c"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    clean = git_commit()
    assert len(clean) >= 7 and not clean.endswith("+dirty")

    (tmp_path / "dvc.lock").write_text("v2\n")
    (tmp_path / "reports/results.md").write_text("v2\n")
    assert git_commit() == clean
    (tmp_path / "code.py").write_text("v2\n")
    assert git_commit() == clean + "+dirty"
