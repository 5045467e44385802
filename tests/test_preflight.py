"""Configs checked before any run (issue 12, item 5): each bad config of the issue is one ConfigError naming the
file and the field, raised when the experiment loads (warmup, empty file, instrument options) or by the
preflight against the machine (budget, memory), before any run directory exists."""

from __future__ import annotations

import time

import pytest

from scalescope import config as C
from scalescope import preflight
from scalescope.cli import main
from scalescope.instruments import Option, build, check_options, register
from scalescope.schedule import check_warmup, eval_count, eval_steps, warmup_steps
from scalescope.sweep import Experiment, expand, load_experiment

# --- failing at load: through `scalescope run`, exit 2, one line, no store ----------------------------------


@pytest.mark.parametrize(
    "toml, expected",
    [
        # warmup = 1.5 used to be read as 1 step.
        ("[train]\nwarmup = 1.5\n", "train.warmup: expected a fraction of the run in [0, 1) or a whole number"),
        # warmup >= the run's steps used to train at a fraction of train.lr and end `finished`.
        (
            "[train]\nbatch_size = 8\ntokens = 1280\nwarmup = 10\n[model]\nseq_len = 16\n",
            "train.warmup: warmup of 10 steps is not shorter than the run (10 steps)",
        ),
        (
            "[train]\nbatch_size = 8\ntokens = 1280\nwarmup = 0.99\n[model]\nseq_len = 16\n",
            "train.warmup: warmup of 10 steps is not shorter than the run (10 steps)",
        ),
        # An empty TOML used to train the default config.
        ("", "empty experiment: expected at least a [model], [data] or [train] table"),
        ("# only a comment\n\n", "empty experiment"),
        ("seed = 3\n", "empty experiment"),
        # batch_size = -3 used to fail mid-run; param_norm used to accept anything.
        ("[instruments.param_norm]\nbatch_size = -3\n", "instruments.param_norm.batch_size: expected an integer >= 1"),
        ("[instruments.param_norm]\nfoo = 1\n", "instruments.param_norm.foo: unknown option"),
        ("[instruments.param_norm]\nevery = true\n", "instruments.param_norm.every: expected an integer >= 1"),
        ("[instruments.attention]\nindex = -1\n", "instruments.attention.index: expected an integer >= 0"),
        ("[instruments.noise_scale]\nema = 1.5\n", "instruments.noise_scale.ema: expected a number in [0, 1)"),
        ("[instruments.task_id]\nks = [1, -2]\n", "instruments.task_id.ks: expected a list, each item an integer"),
    ],
)
def test_bad_configs_fail_at_load_before_any_run(tmp_path, capsys, toml, expected):
    p = tmp_path / "bad.toml"
    p.write_text(toml)
    store = tmp_path / "s"
    assert main(["run", str(p), "--store", str(store), "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {p}: ") and expected in lines[0], lines
    assert not store.exists()


def test_warmup_keeps_its_meaning_for_valid_values():
    # Run ids of existing configs do not change (tests/test_run_identity.py); neither does what they train.
    assert warmup_steps(C.TrainConfig(warmup=0.05), 100) == 5
    assert warmup_steps(C.TrainConfig(warmup=20), 100) == 20
    assert warmup_steps(C.TrainConfig(warmup=1.0), 100) == 1  # an integer written as a float
    check_warmup(C.TrainConfig(warmup=0), 1)
    check_warmup(C.TrainConfig(warmup=0.05), 1)  # rounds to 0 steps of a 1-step run
    check_warmup(C.TrainConfig(warmup=99), 100)
    for w in (1.5, -0.1, float("inf")):
        with pytest.raises(C.ConfigError, match="train.warmup"):
            check_warmup(C.TrainConfig(warmup=w), 100)


def test_a_swept_warmup_or_budget_names_the_field_and_both_numbers():
    with pytest.raises(C.ConfigError) as e:
        expand({"train": {"tokens": 2048 * 10}, "sweep": {"train.warmup": [5, 10]}}, "f.toml")
    assert str(e.value).startswith("f.toml: sweep.train.warmup: warmup of 10 steps") and "(10 steps)" in str(e.value)
    with pytest.raises(C.ConfigError) as e:
        expand({"train": {"warmup": 50}, "sweep": {"train.tokens": [2048 * 100, 2048 * 10]}}, "f.toml")
    assert e.value.field == "train.warmup" and "warmup of 50 steps" in str(e.value) and "(10 steps)" in str(e.value)
    # A FLOP budget: the steps are known at load (6N + 12 L T d does not involve the vocabulary).
    with pytest.raises(C.ConfigError, match="train.warmup: warmup of 100 steps"):
        expand({"train": {"flops": 1e9, "warmup": 100}})


def test_eval_count_matches_the_schedule():
    for every in range(1, 40):
        for total in range(0, 150):
            assert eval_count(every, total) == len(eval_steps(every, total)), (every, total)
    assert eval_count(100, 10**15) > 10**12  # no list of 1e15 steps


# --- instrument options: one declaration per option, in the registry ----------------------------------------


def test_every_builtin_declares_its_options_and_user_factories_use_their_signature():
    build({"param_norm": {"every": 2, "batch_size": 4}, "attention": {"index": 1}})
    check_options("tests.helpers_instruments:make_step_echo", {"scale": 2.0, "every": 3})
    with pytest.raises(C.ConfigError, match="make_step_echo.scal: unknown option; did you mean 'scale'"):
        check_options("tests.helpers_instruments:make_step_echo", {"scal": 2.0})
    with pytest.raises(C.ConfigError, match="make_step_echo.batch_size: expected an integer >= 1"):
        check_options("tests.helpers_instruments:make_step_echo", {"batch_size": 0})
    # A declaration that drifts from the factory's signature is refused when the module registers it.
    with pytest.raises(TypeError, match="do not match"):

        @register("_drifted", options={"n": Option(int, ge=1)})
        def make(m: int = 1):  # pragma: no cover - never registered
            return lambda ctx: {}


def test_option_ranges_and_messages():
    assert Option(float, gt=0, le=1).describe() == "a number in (0, 1]"
    assert Option(int, ge=2).describe() == "an integer >= 2"
    assert Option(str, choices=("a", "b")).describe() == "one of 'a', 'b'"
    opt = Option(int, ge=1, optional=True)
    assert opt.accepts(None) and opt.accepts(3)
    assert not any(opt.accepts(v) for v in (0, True, 2.0, "3"))


# --- the preflight: budget and memory against the machine ---------------------------------------------------


def _experiment(raw: dict) -> Experiment:
    return Experiment("x", "x.toml", expand(raw, "x.toml"))


@pytest.mark.parametrize(
    "raw, field",
    [
        ({"train": {"tokens": 1e18}}, "train.tokens"),  # used to start without a word and never end
        ({"train": {"flops": 1e30}}, "train.flops"),
        ({"train": {"eval_batches": 1e8}}, "train.eval_batches"),
    ],
)
def test_implausible_budgets_need_yes(raw, field):
    exp = _experiment(raw)
    with pytest.raises(C.ConfigError) as e:
        preflight.check_experiment(exp, device="cpu")
    msg = str(e.value)
    assert e.value.field == field and msg.startswith(f"x.toml: {field}: the run needs an estimated ")
    assert " h on cpu" in msg and "--yes" in msg
    # assume_yes lets the valid-but-implausible budget through (nothing is trained here), with the estimate.
    notes = preflight.check_experiment(exp, device="cpu", assume_yes=True)
    assert any(n.startswith(f"{field}: ") and "running anyway" in n for n in notes)
    assert any(n.startswith("estimated compute: at least ") for n in notes)


def test_a_plausible_experiment_passes_quietly(tiny_toml):
    exp = load_experiment(tiny_toml())
    assert preflight.check_experiment(exp, device="cpu") == []
    # The estimate counts what training does: steps x tokens per step, and each evaluation.
    est = preflight.estimate(exp.runs[0])
    assert est.train_forwards == 30 * preflight.STEP_FORWARDS
    assert est.eval_forwards == len(eval_steps(10, 30)) * 2


@pytest.mark.parametrize("field", ["model.d_model", "model.n_layer"])
def test_sizes_beyond_memory_fail_at_once_naming_the_field(tmp_path, field):
    # Used to fail after 5 s with the allocator's message. 1e9 is a float in TOML: read as an integer.
    section, key = field.split(".")
    p = tmp_path / "big.toml"
    p.write_text(f"[{section}]\n{key} = 1e9\n")
    t0 = time.perf_counter()
    exp = load_experiment(p)
    assert getattr(exp.runs[0].model, key) == 10**9 and isinstance(getattr(exp.runs[0].model, key), int)
    with pytest.raises(C.ConfigError) as e:
        preflight.check_experiment(exp, device="cpu", assume_yes=True)  # parameters alone: --yes cannot help
    assert time.perf_counter() - t0 < 0.5
    assert e.value.field == field and "GB of memory" in str(e.value) and "parameters x 16 bytes" in str(e.value)
    assert str(e.value).startswith(str(p))


def test_activation_memory_is_refused_unless_yes(monkeypatch):
    exp = _experiment({"train": {"batch_size": 1e7, "tokens": 1e9}})
    monkeypatch.setattr(preflight, "available_memory", lambda device: 64e9)
    with pytest.raises(C.ConfigError) as e:
        preflight.check_experiment(exp, device="cpu")
    assert e.value.field == "train.batch_size" and "pass --yes to try anyway" in str(e.value)
    notes = preflight.check_experiment(exp, device="cpu", assume_yes=True)
    assert any(n.startswith("train.batch_size: ") and "trying anyway" in n for n in notes)


def test_sgd_counts_fewer_bytes_per_parameter():
    adam = preflight.estimate(C.from_dict({"model": {"d_model": 256}}))
    sgd = preflight.estimate(C.from_dict({"model": {"d_model": 256}, "train": {"optimizer": "sgd"}}))
    assert sgd.param_bytes / adam.param_bytes == pytest.approx(12 / 16)


def test_runs_already_done_are_left_out(tmp_path, monkeypatch):
    from scalescope.store import Store

    exp = _experiment({"train": {"tokens": 1e18}})
    store = Store(tmp_path / "store")
    rd = store.add(exp.runs[0], experiment="x")
    monkeypatch.setattr(type(rd), "is_done", lambda self: True)
    assert preflight.check_experiment(exp, device="cpu", store=store) == []


@pytest.mark.parametrize(
    "toml, field",
    [("[train]\ntokens = 1e18\n", "train.tokens"), ("[model]\nd_model = 1e9\n", "model.d_model")],
)
def test_scalescope_run_refuses_an_implausible_plan_before_any_run(tmp_path, capsys, toml, field):
    # Through the command line: one line naming the file and field, exit 2, and no store left behind.
    from scalescope.cli import main

    p = tmp_path / "huge.toml"
    p.write_text(toml)
    store = tmp_path / "store"
    assert main(["run", str(p), "--store", str(store), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {p}: {field}: ") and err.count("\n") == 1
    assert not store.exists()
