import pytest

from scalescope import config as C
from scalescope.sweep import expand, load_experiment


def write(tmp_path, text, name="exp.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


BASE = """
[data]
kind = "markov"
[model]
d_model = 32
n_head = 4
[train]
tokens = 10000
"""


def test_grid_product_and_zipped_axes(tmp_path):
    p = write(
        tmp_path,
        BASE
        + """
[sweep]
"(model.n_layer, model.d_model, model.n_head)" = [[1, 16, 2], [2, 32, 4]]
"train.tokens" = [1000, 2000, 4000]
seed = [0, 1]
""",
    )
    exp = load_experiment(p)
    assert len(exp.runs) == 2 * 3 * 2
    shapes = {(r.model.n_layer, r.model.d_model, r.model.n_head) for r in exp.runs}
    assert shapes == {(1, 16, 2), (2, 32, 4)}
    assert len({C.run_id(r) for r in exp.runs}) == 12


def test_run_id_is_content_hash():
    a = C.from_dict({"model": {"d_model": 32}})
    b = C.from_dict({"model": {"d_model": 32, "n_head": 4}})  # n_head=4 is the default: same config
    c = C.from_dict({"model": {"d_model": 32}, "seed": 1})
    assert C.run_id(a) == C.run_id(b) != C.run_id(c)
    d = C.from_dict({"model": {"d_model": 32}, "train": {"device": "cpu"}})
    assert C.run_id(d) == C.run_id(a)  # where it runs is not what it is


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[model]\nd_modle = 32\n", "exp.toml: model.d_modle: unknown key; did you mean 'd_model'?"),
        ("[model]\nd_model = 'big'\n", "exp.toml: model.d_model: expected an integer, got 'big'"),
        ("[model]\nd_model = -8\n", "exp.toml: model.d_model: expected a positive number, got -8"),
        (
            "[model]\nd_model = 30\nn_head = 4\n",
            "exp.toml: model.d_model: d_model (30) must be divisible by n_head (4)",
        ),
        ("[trian]\n", "exp.toml: trian: unknown key; did you mean 'train'?"),
        ("[train]\noptimizer = 'adam'\n", "exp.toml: train.optimizer: expected one of 'adamw', 'sgd', got 'adam'"),
        ('[sweep]\n"model.d_modl" = [1]\n', "exp.toml: sweep.model.d_modl: unknown key; did you mean 'd_model'?"),
        ('[sweep]\n"model.d_model" = [32, 0]\n', "exp.toml: sweep.model.d_model: expected a positive number, got 0"),
        (
            '[sweep]\n"model.d_model" = 32\n',
            "exp.toml: sweep.model.d_model: expected a non-empty list of values, got 32",
        ),
        (
            "[train]\ntokens = 100\nflops = 1e9\n",
            "exp.toml: train.tokens: give one budget, train.tokens, train.flops or train.steps, not tokens and flops",
        ),
        ("[data]\nkind = 'text'\n", "exp.toml: data.path: a text source needs a path to a file or directory"),
    ],
)
def test_bad_files_give_one_line_naming_file_and_field(tmp_path, text, expected):
    p = write(tmp_path, text)
    with pytest.raises(C.ConfigError) as e:
        load_experiment(p)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.endswith(expected.split("exp.toml: ", 1)[1])
    assert msg.startswith(str(p))


def test_malformed_and_missing_files(tmp_path):
    p = write(tmp_path, "[model\nd_model = 3")
    with pytest.raises(C.ConfigError, match="malformed TOML"):
        load_experiment(p)
    with pytest.raises(C.ConfigError, match="no such experiment file"):
        load_experiment(tmp_path / "nope.toml")


def test_flops_budget_and_integers_as_floats():
    cfg = C.from_dict({"train": {"flops": 1e12, "batch_size": 8.0}})
    assert cfg.train.batch_size == 8 and isinstance(cfg.train.batch_size, int)
    assert cfg.train.tokens is None
    assert C.from_dict({}).train.tokens == 1_000_000


def test_duplicate_configs_collapse():
    runs = expand({"model": {"n_head": 4}, "sweep": {"model.n_head": [4, 4, 2]}})
    assert len(runs) == 2
