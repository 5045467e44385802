import json
import os
import subprocess

import pytest

from scalescope.cli import main

from .conftest import ROOT, cli_cmd


def run_cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cli_cmd(*args), env=env, cwd=ROOT, capture_output=True, text=True)


def test_run_then_runs_json_and_export(tiny_toml, tmp_path, capsys):
    exp = tiny_toml(
        """
    [sweep]
    "model.d_model" = [8, 16]
    """,
        tokens=8 * 16 * 12,
    )
    store = tmp_path / "store"
    assert main(["run", str(exp), "--store", str(store), "--workers", "2", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["runs", "--store", str(store), "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert len(runs) == 2
    for r in runs:
        assert r["status"] == "finished"
        assert r["tokens"] == 8 * 16 * 12
        assert r["params_total"] > r["params_nonembedding"] > 0
        assert r["flops"] > 0 and r["final_val_loss"] > 0
        assert r["entropy_rate"] > 0
        assert r["config"]["model"]["d_model"] in (8, 16)
    # Running again skips both.
    assert main(["run", str(exp), "--store", str(store), "--quiet"]) == 0
    assert "2 already done, skipped" in capsys.readouterr().err
    for fmt in ("csv", "parquet"):
        assert main(["export", "--store", str(store), "--format", fmt]) == 0
        paths = capsys.readouterr().out.split()
        assert [os.path.basename(p) for p in paths] == [f"runs.{fmt}", f"metrics.{fmt}"]
    import pandas as pd

    assert len(pd.read_parquet(store / "export" / "runs.parquet")) == 2
    assert set(pd.read_csv(store / "export" / "metrics.csv")["metric"]) >= {"val_loss", "train_loss"}


def test_runs_table_text(tiny_toml, tmp_path, capsys):
    exp = tiny_toml(tokens=8 * 16 * 3)
    store = tmp_path / "s"
    main(["run", str(exp), "--store", str(store), "--quiet"])
    capsys.readouterr()
    main(["runs", "--store", str(store)])
    out = capsys.readouterr().out
    assert "finished" in out and "val loss" in out


@pytest.mark.parametrize(
    "toml, expected",
    [
        ("[model]\nd_model = 30\nn_head = 4\n", "model.d_model: d_model (30) must be divisible by n_head (4)"),
        ("[model\n", "malformed TOML"),
        ("[model]\nn_layer = 0\n", "model.n_layer: expected a positive number, got 0"),
        ("[train]\nbatch_size = 'x'\n", "train.batch_size: expected an integer, got 'x'"),
    ],
)
def test_bad_input_is_one_line(tmp_path, toml, expected):
    p = tmp_path / "bad.toml"
    p.write_text(toml)
    r = run_cli("run", str(p), "--store", str(tmp_path / "s"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0] and "bad.toml" in lines[0]


@pytest.mark.parametrize(
    "toml, expected",
    [
        ("[instruments.param_nrm]\n", "instruments.param_nrm: unknown instrument; did you mean 'param_norm'"),
        ("[instruments.task_id]\n", "instruments.task_id: task_id needs a discrete_tasks source"),
        ("[instruments.fewshot]\n", "instruments.fewshot: fewshot needs a bursty_classification source"),
        ("[instruments.icl_regression]\n", "icl_regression needs a linear_regression source"),
        (
            "[model]\nseq_len = 16\n[instruments.icl]\nlate = 40\n",
            "instruments.icl: the context (seq_len 16) is too short",
        ),
        ("[instruments.icl]\nn_batches = 0\n", "instruments.icl.n_batches"),
        (
            '[data]\nkind = "linear_regression"\n[instruments.induction]\n',
            "instruments.induction: induction needs token data, but data.kind = 'linear_regression' gives the model",
        ),
    ],
)
def test_instrument_mistakes_fail_before_any_run(tmp_path, capsys, toml, expected):
    """Each is one line naming the file, exit 2, and no run directory: checked when the experiment loads
    (scalescope.instruments.check), not in the worker after the run has started."""
    p = tmp_path / "bad.toml"
    p.write_text('name = "x"\n' + toml)
    assert main(["run", str(p), "--store", str(tmp_path / "s"), "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0] and "bad.toml" in lines[0]
    assert not (tmp_path / "s" / "runs").exists()


def test_missing_and_empty_data_files(tmp_path, capsys):
    for path, expected in ((tmp_path / "none.txt", "no such file or directory"), (tmp_path / "empty.txt", "no text")):
        if path.name == "empty.txt":
            path.write_text("")
        p = tmp_path / "exp.toml"
        p.write_text(f"[data]\nkind = 'text'\npath = '{path}'\n")
        assert main(["run", str(p), "--store", str(tmp_path / "s"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "data.path" in err and expected in err and "exp.toml" in err


def test_unwritable_store(tiny_toml, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["run", str(tiny_toml()), "--store", str(blocker / "store"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "store is not writable" in err and str(blocker) in err


def test_threads_option(tiny_toml, tmp_path, capsys):
    for flag in ("--threads", "--workers"):
        assert main(["run", str(tiny_toml()), "--store", str(tmp_path / "s"), flag, "0", "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{flag}: expected a positive integer, got 0" in err
    exp = tiny_toml(tokens=8 * 16 * 3)
    # One worker alone would get every core; --threads 1 must win (on a 1-core machine both give 1).
    assert main(["run", str(exp), "--store", str(tmp_path / "s"), "--workers", "1", "--threads", "1", "--quiet"]) == 0
    meta = json.loads(next((tmp_path / "s" / "runs").glob("*/meta.json")).read_text())
    assert meta["hardware"]["threads"] == 1


def test_runs_on_missing_store(tmp_path, capsys):
    assert main(["runs", "--store", str(tmp_path / "nope")]) == 2
    assert "no such store directory" in capsys.readouterr().err


def test_bench_train_json():
    r = run_cli(
        "bench",
        "train",
        "--n-layer",
        "1",
        "--d-model",
        "32",
        "--n-head",
        "2",
        "--seq-len",
        "16",
        "--batch",
        "4",
        "--steps",
        "2",
        "--repeats",
        "1",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["tokens_per_s"] > 0 and out["flops_per_s"] > 0 and out["matmul_flops_per_s"] > 0
    assert out["flops_per_s"] == pytest.approx(out["tokens_per_s"] * out["flops_per_token_counted"])


@pytest.mark.slow  # 30-90 s (trains 9 runs); `fit chinchilla` on a store is also tested in test_laws_cli
def test_fit_chinchilla_from_store(tiny_toml, tmp_path, capsys):
    exp = tiny_toml("""
    [sweep]
    "model.d_model" = [8, 16, 32]
    "train.tokens" = [1024, 2048, 4096]
    """)
    store = tmp_path / "s"
    assert main(["run", str(exp), "--store", str(store), "--workers", "2", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["fit", "chinchilla", "--store", str(store), "--bootstrap", "20", "--grid", "coarse", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_points"] == 9 and out["source"]["n"] == "params_nonembedding"
    assert {"E", "A", "B", "alpha", "beta"} <= set(out["ci"])
    where = "`train.tokens` >= 2048"
    assert (
        main(
            [
                "fit",
                "chinchilla",
                "--store",
                str(store),
                "--where",
                where,
                "--bootstrap",
                "20",
                "--grid",
                "coarse",
                "--count",
                "total",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["n_points"] == 6 and out["source"]["n"] == "params_total"


def test_builtin_experiments_run_by_name(capsys):
    from scalescope.cli.run import builtin_experiments, resolve_experiment

    assert {"demo", "sgd_vs_adamw", "critical_batch", "entropy_check"} <= set(builtin_experiments())
    assert resolve_experiment("sgd_vs_adamw").name == "sgd_vs_adamw.toml"
    assert resolve_experiment("sgd_vs_adamw").is_file()
    assert main(["run", "no_such_experiment", "--store", "unused", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no_such_experiment: ") and "sgd_vs_adamw" in err and "\n" not in err


def _all_parsers():
    import argparse

    from scalescope.cli import build_parser

    todo = [("scalescope", build_parser())]
    while todo:
        name, p = todo.pop()
        yield name, p
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                todo += [(f"{name} {k}", sub) for k, sub in a.choices.items()]


def test_every_option_has_plain_help_and_the_store_is_named_one_way():
    import argparse

    for name, p in _all_parsers():
        for a in p._actions:
            if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert a.help and a.help.strip(), f"{name} {a.option_strings or a.dest}: no help line"
            assert "``" not in a.help and ":func:" not in a.help, f"{name} {a.dest}: markup in help"
            if a.dest == "store":
                assert "--store" in a.option_strings, f"{name}: the store is not given as --store"
        assert "``" not in (p.description or "") and ":class:" not in (p.description or ""), name


def test_version(capsys):
    from scalescope import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"scalescope {__version__}"
