"""What DVC says is pending, and recording finished stages: every query goes through DVC's
Python API (`dvc.repo.Repo`), so a stage's command is exactly the one `dvc repro` would run,
with dvc.yaml's templates resolved by DVC."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import networkx as nx
from dvc.repo import Repo

KINDS = ("train", "evaluate", "ablate")  # stage groups that dispatch sends to the cluster
GROUPED = {"ablate_global": "ablate"}  # dvc.yaml stages dispatched as another kind's cells


class PlanError(RuntimeError):
    """The pipeline cannot be dispatched as it is; the message says what to run first."""


@dataclass(frozen=True)
class StageSpec:
    """One stage as DVC resolves it: its address (`train@s4m`), command lines, working folder,
    outputs and the dispatchable stages it depends on."""

    name: str
    kind: str
    cmd: tuple[str, ...]
    wdir: str
    outs: tuple[str, ...]
    upstream: tuple[str, ...]


def kind_of(name: str) -> str:
    """`train@s4m_tiny` -> `train` (the dvc.yaml stage a matrix entry belongs to);
    `ablate_global@s6` -> `ablate` (the global-layer axis runs as ablation cells)."""
    stage = name.rpartition(":")[2].partition("@")[0]
    return GROUPED.get(stage, stage)


def _spec(stage, graph: nx.DiGraph) -> StageSpec:
    cmd = stage.cmd if isinstance(stage.cmd, list) else str(stage.cmd).splitlines()
    upstream = tuple(sorted(s.addressing for s in graph.successors(stage)
                            if kind_of(s.addressing) in KINDS))
    return StageSpec(name=stage.addressing, kind=kind_of(stage.addressing),
                     cmd=tuple(line for line in cmd if line.strip()), wdir=str(stage.wdir),
                     outs=tuple(str(out.fs_path) for out in stage.outs), upstream=upstream)


def pending(root: str | Path, kinds: tuple[str, ...] = KINDS) -> list[StageSpec]:
    """The stages of `kinds` that `dvc repro` would run: those `dvc status` lists, and those
    downstream of them (an evaluation whose training reruns). Upstream stages of other kinds
    (prepare) must be up to date: they are not dispatched."""
    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges run from a stage to the stages it depends on
        by_name = {stage.addressing: stage for stage in repo.index.stages}
        changed = set(repo.status())
        selected = {name for name in changed if kind_of(name) in kinds}
        for name in list(selected):
            selected |= {s.addressing for s in nx.ancestors(graph, by_name[name])
                         if kind_of(s.addressing) in kinds}
        for name in sorted(selected):
            blocking = sorted(s.addressing for s in nx.descendants(graph, by_name[name])
                              if s.addressing in changed and kind_of(s.addressing) not in KINDS)
            if blocking:
                raise PlanError(
                    f"stage {name} needs {', '.join(blocking)}, which is not up to date: run "
                    f"`dvc repro {' '.join(blocking)}` first (dispatch sends only "
                    f"{', '.join(KINDS)} stages)")
        order = list(nx.topological_sort(graph.reverse(copy=False)))
        return [_spec(stage, graph) for stage in order if stage.addressing in selected]


def outputs_complete(spec: StageSpec) -> str | None:
    """None when every output exists and holds no partial file (experiments.atomic writes
    `.<name>.<pid>.tmp` until a file is complete); else what is missing."""
    for out in map(Path, spec.outs):
        if not out.exists():
            return f"missing output {out}"
        if out.is_dir():
            if not any(out.iterdir()):
                return f"empty output folder {out}"
            partial = next((p for p in out.rglob("*.tmp") if p.name.startswith(".")), None)
            if partial is not None:
                return f"partial file {partial}"
    return None


def changed(root: str | Path, names: list[str]) -> set[str]:
    """Which of the stages `names` `dvc status` lists as not up to date."""
    if not names:
        return set()
    with Repo(str(root)) as repo:
        return set(repo.status(targets=names))


def commit(root: str | Path, name: str) -> None:
    """`dvc commit <name>`: records the stage's current outputs and dependencies in dvc.lock."""
    with Repo(str(root)) as repo:
        repo.commit(name, force=True)
