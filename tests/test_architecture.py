"""The layout's promises: run ids that never change, old stores that still load, no import cycles, a
small deliberate public API, and one exception hierarchy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grimp
import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

import scalescope
from scalescope import config as C
from scalescope.sweep import load_experiment

FIXTURES = Path(__file__).parent / "fixtures"
EXPERIMENTS = Path(scalescope.__file__).parent / "experiments"
PINNED = json.loads((FIXTURES / "run_ids.json").read_text())


@pytest.mark.parametrize("name", sorted(PINNED["experiments"]))
def test_builtin_experiment_run_ids_are_pinned(name: str) -> None:
    # Computed with the v0.1 layout (commit c08ab8b): a refactor that changes any of them would re-train
    # every user's finished runs.
    exp = load_experiment(EXPERIMENTS / f"{name}.toml")
    assert [C.run_id(r) for r in exp.runs] == PINNED["experiments"][name]


def test_every_builtin_experiment_is_pinned() -> None:
    assert sorted(p.stem for p in EXPERIMENTS.glob("*.toml")) == sorted(PINNED["experiments"])


@pytest.mark.parametrize("case", sorted(PINNED["configs"]))
def test_config_run_ids_are_pinned(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The text cases were re-pinned when a corpus's content (not its path) entered the run id (issue 11).
    monkeypatch.chdir(FIXTURES.parent.parent)
    entry = PINNED["configs"][case]
    assert C.run_id(C.from_dict(entry["config"])) == entry["id"]


def test_a_v0_1_store_still_loads(tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(FIXTURES / "store_v0_1", store)
    t = scalescope.load(store)
    assert list(t.runs["id"]) == ["a3b29d1420db"]
    row = t.runs.iloc[0]
    assert row["status"] == "finished" and row["params_nonembedding"] == 3312
    assert row["final_val_loss"] == pytest.approx(2.5225, abs=1e-4)
    assert {"val_loss", "param_norm"} <= set(t.metrics["metric"].str.split("/").str[0])
    # Its stored config still parses and hashes to its directory name.
    cfg = json.loads((store / "runs" / "a3b29d1420db" / "config.json").read_text())
    assert C.run_id(C.from_dict(cfg)) == "a3b29d1420db"


def test_a_v0_1_run_loads_for_offline_probes(tmp_path: Path) -> None:
    from scalescope.offline import load_run

    store = tmp_path / "store"
    shutil.copytree(FIXTURES / "store_v0_1", store)
    run = load_run(store / "runs" / "a3b29d1420db")
    assert run.step == 32 and run.has_optimizer_state  # 2,048 tokens / (4 sequences x 16 tokens)


def _import_graph() -> tuple[list[str], csr_matrix]:
    # grimp reads every import statement, including those inside functions; scalescope loads no module of
    # its own through importlib (only instruments a user names as "package.module:factory").
    g = grimp.build_graph("scalescope", include_external_packages=False)
    mods = sorted(g.modules)
    index = {m: i for i, m in enumerate(mods)}
    rows, cols = [], []
    for m in mods:
        for dep in g.find_modules_directly_imported_by(m):
            if dep in index:
                rows.append(index[m])
                cols.append(index[dep])
    adj = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(mods), len(mods)))
    return mods, adj


def test_no_import_cycles() -> None:
    mods, adj = _import_graph()
    n, labels = connected_components(adj, directed=True, connection="strong")
    cycles = [sorted(m for m, lab in zip(mods, labels) if lab == k) for k in range(n)]
    cycles = [c for c in cycles if len(c) > 1]
    assert cycles == [], f"import cycles (strongly connected modules): {cycles}"


# Data flow one way: experiment file -> run configs -> executor -> worker (train, instruments) -> run directory
# -> store -> analyses -> report, with the command line on top. A package may import only from layers below
# it (directly or through modules outside the list).
LAYERS = [
    "scalescope.cli",
    "scalescope.report",
    "scalescope.analyses",
    "scalescope.forecast",
    "scalescope.lab",
    "scalescope.executors",
    "scalescope.train",
    "scalescope.instruments",
    "scalescope.offline",
    "scalescope.store",
    "scalescope.laws",
    "scalescope.runlock",
    "scalescope.rundir",
    "scalescope.data",
    "scalescope.config",
    "scalescope.errors",
]


def test_data_flows_one_way() -> None:
    g = grimp.build_graph("scalescope", include_external_packages=False)
    illegal = g.find_illegal_dependencies_for_layers(layers=LAYERS, containers=set())
    found = sorted(f"{d.importer} -> {d.imported} via {sorted(r.heads)[0]}" for d in illegal for r in d.routes)
    assert found == []


def test_no_builtin_module_is_loaded_through_importlib() -> None:
    # The registry lines are plain imports, so the static graph above sees every edge.
    pkg = Path(scalescope.__file__).parent
    offenders = [
        str(p.relative_to(pkg))
        for p in pkg.rglob("*.py")
        if "import_module(" in p.read_text() and p.name != "registry.py"
    ]
    assert offenders == []


def test_public_api() -> None:
    assert sorted(scalescope.__all__) == sorted(
        [
            "ConfigError",
            "FitError",
            "RunConfig",
            "ScalescopeError",
            "Store",
            "StoreError",
            "Tables",
            "__version__",
            "laws",
            "load",
            "load_experiment",
            "run_experiment",
            "write_report",
        ]
    )
    for name in scalescope.__all__:
        assert getattr(scalescope, name) is not None


def test_one_exception_hierarchy() -> None:
    from scalescope import errors

    for cls in (errors.ConfigError, errors.StoreError, errors.FitError, errors.NotFittedError):
        assert issubclass(cls, errors.ScalescopeError) and issubclass(cls, ValueError)
    pkg = Path(scalescope.__file__).parent
    defined = [
        f"{p.relative_to(pkg)}: {line.strip()}"
        for p in pkg.rglob("*.py")
        if p.name != "errors.py"
        for line in p.read_text().splitlines()
        if line.startswith("class ") and "Error(" in line
    ]
    assert defined == []
