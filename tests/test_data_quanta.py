"""The quanta source (issue 14): multitask sparse parity with Zipf skill frequencies."""

import math

import numpy as np
import pytest
import torch

from scalescope import config as C
from scalescope.cli import main
from scalescope.data import build_source
from scalescope.data.quanta import QuantaSource, binary_entropy, zipf_probs


def _cfg(data=None, model=None):
    return C.from_dict(
        {
            "data": {"kind": "quanta", "n_skills": 30, "n_bits": 10, "bits_per_skill": 3, **(data or {})},
            "model": {"n_layer": 1, "d_model": 16, "n_head": 2, "seq_len": 11, **(model or {})},
        }
    )


def test_layout_mask_answers_and_purity():
    src = QuantaSource(30, 0.5, 10, 3, label_noise=0.1, seed=1, stream_seed=2)
    b = src.batch("train", 3, 64, 11)
    skills, bits, answers = src.sample("train", 3, 64)
    assert b.inputs.shape == (64, 11) and b.targets.shape == (64, 11) and b.inputs.dtype == torch.int64
    np.testing.assert_array_equal(b.inputs[:, 10].numpy(), 2 + skills)  # the skill token last, before the answer
    np.testing.assert_array_equal(b.inputs[:, :10].numpy(), bits)
    np.testing.assert_array_equal(b.targets[:, -1].numpy(), answers)
    # Only the answer counts; answers are the skill's parity up to the flipped labels.
    assert b.loss_mask.sum() == 64 and b.loss_mask[:, 10].all()
    clean = (bits[np.arange(64)[:, None], src.subsets[skills]].sum(axis=1)) % 2
    assert 0 < (clean != answers).sum() < 20  # ε = 0.1 of 64: about 6 flips
    assert torch.equal(src.batch("train", 3, 64, 11).inputs, b.inputs)
    assert not torch.equal(src.batch("val", 3, 64, 11).inputs, b.inputs)
    assert not torch.equal(src.with_stream_seed(5).batch("train", 3, 64, 11).inputs, b.inputs)
    # A longer context is padding after the answer, never counted.
    long = src.batch("train", 3, 64, 15)
    assert torch.equal(long.inputs[:, :11], b.inputs) and long.loss_mask.sum() == 64 and long.loss_mask[:, 10].all()


def test_frequencies_and_noise_match_the_language():
    src = QuantaSource(8, 1.0, 12, 2, label_noise=0.2, seed=0)
    skills, bits, answers = src.sample("train", 0, 200_000)
    freq = np.bincount(skills, minlength=8) / len(skills)
    # Binomial standard error <= sqrt(0.25 / 2e5) = 0.0011; 5 of them.
    np.testing.assert_allclose(freq, src.skill_probs, atol=0.006)
    flips = (src.parity(skills, bits) != answers).mean()
    assert abs(flips - 0.2) < 0.005  # standard error 0.0009


def test_probabilities_entropy_and_describe():
    p = zipf_probs(100, 0.4)
    assert math.isclose(p.sum(), 1.0) and (np.diff(p) < 0).all()
    assert math.isclose(p[0] / p[9], 10**1.4)  # p_k ∝ k^-(alpha+1)
    assert binary_entropy(0.0) == 0.0 and math.isclose(binary_entropy(0.5), math.log(2))
    src = build_source(_cfg({"alpha": 0.4, "label_noise": 0.05}).data, seed=0)
    assert isinstance(src, QuantaSource) and src.vocab_size == 32
    assert math.isclose(src.entropy_rate, -(0.05 * math.log(0.05) + 0.95 * math.log(0.95)))
    d = src.describe()
    assert d["alpha_N"] == 0.4 and math.isclose(d["alpha_D"], 0.4 / 1.4) and d["entropy_rate"] == src.entropy_rate
    assert d["n_skills"] == 30 and d["alpha"] == 0.4


def test_subsets_are_distinct_and_a_function_of_the_data_seed():
    a, b = QuantaSource(120, 0.4, 10, 3, seed=0), QuantaSource(120, 0.4, 10, 3, seed=1)
    assert a.subsets.shape == (120, 3) and len({tuple(s) for s in a.subsets}) == 120
    assert (np.diff(a.subsets, axis=1) > 0).all() and a.subsets.max() < 10
    assert not np.array_equal(a.subsets, b.subsets)
    assert np.array_equal(a.subsets, a.with_stream_seed(9).subsets)
    # All C(10, 3) = 120 subsets: the most the language allows. A huge family takes the rejection path.
    big = QuantaSource(500, 0.4, 200, 4, seed=0)
    assert len({tuple(s) for s in big.subsets}) == 500
    # The masks agree with the subsets: parity of a one-hot bit vector is 1 exactly on the skill's bits.
    eye = np.eye(10, dtype=np.int64)
    for k in (0, 57):
        on = [i for i in range(10) if a.parity(np.array([k]), eye[i : i + 1])[0] == 1]
        assert on == list(a.subsets[k])


def test_skill_batch_is_fixed_clean_and_independent_of_the_run_seed():
    src = QuantaSource(30, 0.5, 10, 3, label_noise=0.3, seed=1, stream_seed=2)
    skills = np.array([0, 5, 5, 29])
    b = src.skill_batch(skills, 7, 11)
    np.testing.assert_array_equal(b.inputs[:, 10].numpy(), 2 + skills)
    np.testing.assert_array_equal(b.targets[:, 10].numpy(), src.parity(skills, b.inputs[:, :10].numpy()))
    assert torch.equal(src.with_stream_seed(3).skill_batch(skills, 7, 11).inputs, b.inputs)
    assert not torch.equal(src.skill_batch(skills, 8, 11).inputs, b.inputs)
    assert b.loss_mask[:, 10].all() and b.loss_mask.sum() == 4


@pytest.mark.parametrize(
    "data, model, field, text",
    [
        ({"alpha": 0.0}, None, "data.alpha", "Zipf exponent must be > 0"),
        ({"alpha": -1.0}, None, "data.alpha", "> 0"),
        ({"n_skills": 121}, None, "data.n_skills", "C(10, 3) = 120"),
        ({"bits_per_skill": 11}, None, "data.bits_per_skill", "n_bits = 10"),
        ({"label_noise": 0.5}, None, "data.label_noise", "[0, 0.5)"),
        ({"label_noise": -0.1}, None, "data.label_noise", "[0, 0.5)"),
        ({"vocab_size": 31}, None, "data.vocab_size", "need 32 tokens"),
        (None, {"seq_len": 10}, "model.seq_len", "shorter than a sequence"),
        ({"seq_len": 12}, None, "data.seq_len", "must equal model.seq_len"),
    ],
)
def test_bad_input_is_one_line_naming_the_field(data, model, field, text):
    with pytest.raises(C.ConfigError) as e:
        _cfg(data, model)
    assert e.value.field == field and text in str(e.value) and "\n" not in str(e.value)


def test_bad_experiment_exits_before_any_run(tmp_path, capsys):
    p = tmp_path / "bad.toml"
    p.write_text('name = "x"\n[data]\nkind = "quanta"\nalpha = -0.5\n[model]\nseq_len = 32\n')
    assert main(["run", str(p), "--store", str(tmp_path / "s"), "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "bad.toml" in lines[0] and "data.alpha" in lines[0]
    assert not (tmp_path / "s" / "runs").exists()


def test_digit_code_layout_vocab_and_answer_position():
    # 300 skills on 16 bits: more skills than one-bit subsets (allowed with digits: each bit dealt evenly).
    src = QuantaSource(300, 0.5, 16, 1, label_noise=0.0, skill_code="digits", n_digits=3, seed=1)
    assert src.base == 7 and src.vocab_size == 9 and src.answer_pos == 18 and src.seq_len_needed == 19  # 6^3 < 300
    assert len({tuple(c) for c in src.codes}) == 300 and src.codes.min() >= 2 and src.codes.max() <= 8
    assert np.bincount(src.subsets[:, 0], minlength=16).tolist() == [19] * 12 + [18] * 4  # 300 = 16 x 18 + 12
    skills, bits, answers = src.sample("train", 0, 64)
    b = src.batch("train", 0, 64, 20)
    np.testing.assert_array_equal(b.inputs[:, 16:19].numpy(), src.codes[skills])
    np.testing.assert_array_equal(b.targets[:, 18].numpy(), answers)
    np.testing.assert_array_equal(answers, bits[np.arange(64), src.subsets[skills, 0]])  # ε = 0: copy the bit
    assert b.loss_mask.sum() == 64 and b.loss_mask[:, 18].all()
    sb = src.skill_batch(np.array([0, 299]), 0, 19)
    np.testing.assert_array_equal(sb.inputs[:, 16:19].numpy(), src.codes[[0, 299]])
    # The code is a function of the data seed only.
    assert np.array_equal(src.with_stream_seed(4).codes, src.codes)
    assert not np.array_equal(QuantaSource(300, 0.5, 16, 1, skill_code="digits", n_digits=3, seed=2).codes, src.codes)
    d = src.describe()
    assert d["skill_code"] == "digits" and d["n_digits"] == 3


def test_digit_code_config_resolves_and_rejects_bad_input():
    cfg = _cfg({"skill_code": "digits", "n_skills": 200, "bits_per_skill": 1}, {"seq_len": 12})
    assert cfg.data.vocab_size == 2 + 15  # ceil(sqrt(200)) = 15
    src = build_source(cfg.data, seed=0)
    assert src.answer_pos == 11 and src.n_skills == 200
    for data, model, field in [
        ({"skill_code": "bytes"}, None, "data.skill_code"),
        ({"skill_code": "digits", "n_digits": 0}, None, "data.n_digits"),
        ({"skill_code": "digits"}, {"seq_len": 11}, "model.seq_len"),  # 10 bits + 2 digits
        ({"skill_code": "digits", "vocab_size": 7}, {"seq_len": 12}, "data.vocab_size"),  # 30 skills: base 6
    ]:
        with pytest.raises(C.ConfigError) as e:
            _cfg(data, model)
        assert e.value.field == field and "\n" not in str(e.value)


def test_instrument_reads_the_answer_after_the_digits():
    from scalescope.instruments.quanta import skill_metrics

    src = QuantaSource(40, 0.5, 8, 1, label_noise=0.1, skill_code="digits", n_digits=2, seed=3)
    lookup = {tuple(c): k for k, c in enumerate(src.codes.tolist())}

    class Oracle(torch.nn.Module):
        """Certain of the clean answer at the answer position only; uniform elsewhere."""

        def forward(self, idx):
            out = torch.zeros(*idx.shape, src.vocab_size)
            a = src.answer_pos
            skills = np.array([lookup[tuple(r)] for r in idx[:, src.n_bits : a + 1].tolist()])
            clean = src.parity(skills, idx[:, : src.n_bits].numpy())
            out[torch.arange(len(idx)), a, torch.as_tensor(clean)] = 30.0
            return out

    loss, acc = skill_metrics(Oracle(), src, seq_len=10, examples_per_skill=4)
    assert acc.shape == (40,) and (acc == 1).all()
    # Certain and right: -(1-ε) ln q - ε ln r with q -> 1, r -> e^-30 (up to the other vocab entries), so ≈ 3.0.
    assert np.allclose(loss, 0.1 * 30, rtol=0.01)
