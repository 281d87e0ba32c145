import math

import pytest

from megatron_s1.rl import rewards as R


def test_extract_boxed_nested():
    assert R.extract_boxed(r"so \boxed{\frac{1}{2}} and finally \boxed{\frac{3}{4}}.") == r"\frac{3}{4}"
    assert R.extract_boxed("no box") is None
    assert R.extract_answer("The answer is 42.") == "42"
    assert R.extract_answer("we get 3 then 7") == "7"


@pytest.mark.parametrize("pred,ref", [
    (r"\frac{1}{2}", "0.5"), (r"\dfrac12", "1/2"), ("2\\sqrt{2}", "\\sqrt{8}"), ("x = 3", "3"),
    ("(1, 2)", "(1,2)"), ("1,000", "1000"), ("2x+2", "2(x+1)"), (r"\pi/2", r"\frac{\pi}{2}"), ("50\\%", "50"),
])
def test_math_equal_true(pred, ref):
    assert R.math_equal(pred, ref)


@pytest.mark.parametrize("pred,ref", [("0.49", "1/2"), ("2x", "2x+1"), ("(1,3)", "(1,2)"), (None, "1"), ("{{", "1")])
def test_math_equal_false(pred, ref):
    assert not R.math_equal(pred, ref)


def test_math_reward_boxed():
    assert R.get_reward("math")("q", r"... thus \boxed{\dfrac{6}{8}}", "3/4") == 1.0
    assert R.get_reward("math")("q", r"... thus \boxed{0.7}", "3/4") == 0.0


def test_choice_smiles_numeric():
    assert R.choice_reward("q", "The answer is (C).", "C") == 1.0
    assert R.choice_reward("q", r"\boxed{B}", "C") == 0.0
    assert R.smiles_reward("q", "The molecule is OCC", "CCO") == 1.0
    assert R.smiles_reward("q", r"\boxed{c1ccccc1}", "C1=CC=CC=C1") == 1.0
    assert R.smiles_reward("q", "CCN", "CCO") == 0.0
    assert R.smiles_reward("q", "not-a-smiles((", "CCO") == 0.0
    assert R.numeric_reward("q", "about 3.02", "3.0", rel_tol=0.01) == 1.0
    assert R.numeric_reward("q", "about 3.1", "3.0", rel_tol=0.01) == 0.0
    with pytest.raises(KeyError):
        R.get_reward("nope")


def test_compass_verifier_and_polar_over_http(fake_server):
    judge = R.CompassVerifierClient(fake_server)
    assert judge.judge("1+1?", "so it is 2", "2") == "A"
    assert judge("1+1?", "so it is 3", "2") == 0.0
    assert judge.judge("1+1?", "", "2") == "C"
    polar = R.PolarClient(fake_server)
    scores = polar.score_batch([("p", "abcd", "abcd"), ("p", "abxx", "abcd")])
    assert scores == [1.0, 0.5]
    R.register_reward("polar_demo", polar)
    assert R.get_reward("polar_demo")("p", "abcd", "abcd") == 1.0


def test_combine_rewards_per_task_norm():
    samples = [{"task": "chat", "scores": {"polar": 2.0, "format": 1.0}},
               {"task": "chat", "scores": {"polar": 4.0, "format": 0.0}},
               {"task": "math", "scores": {"rule": 1.0}}]
    norms = {("chat", "polar"): R.RunningNorm()}
    out = R.combine_rewards(samples, weights={"format": 0.5}, norms=norms)
    # polar z-scores: mean 3, std 1 -> -1, +1 (format weighted 0.5, rule raw)
    assert out == pytest.approx([-1 + 0.5, 1.0, 1.0], abs=1e-5)


def test_combine_rewards_task_weights():
    samples = [{"task": "math", "scores": {"math": 1.0}}, {"task": "chat", "scores": {"polar": 0.5, "fmt": 1.0}}]
    # math x 2; chat: (0.5 + 0.25 * 1.0) x 4
    assert R.combine_rewards(samples, weights={"fmt": 0.25}, task_weights={"math": 2.0, "chat": 4.0}) == \
        pytest.approx([2.0, 3.0])


def test_reward_mixer_hand_computed():
    mixer = R.RewardMixer({"toy_add": 2.0}, {"toy_copy": "running"})
    batch1 = [{"task": "toy_add", "scores": R.as_scores("toy_add", 1.0)},
              {"task": "toy_add", "scores": R.as_scores("toy_add", 0.0)},
              {"task": "toy_copy", "scores": R.as_scores("toy_copy", 1.0)},
              {"task": "toy_copy", "scores": R.as_scores("toy_copy", 0.0)},
              {"task": "toy_copy", "scores": R.as_scores("toy_copy", 0.0)},
              {"task": "toy_copy", "scores": R.as_scores("toy_copy", 1.0)}]
    # toy_add: raw x 2. toy_copy: mean 0.5, std 0.5 (population) -> z = +-1 (eps 1e-6 in the denominator).
    assert mixer(batch1) == pytest.approx([2.0, 0.0, 1.0, -1.0, -1.0, 1.0], abs=1e-5)
    # The toy_copy normaliser persists: after [1, 0, 0, 1, 1, 1] mean 2/3, std sqrt(2)/3 -> 1 = (1/3)/(sqrt2/3).
    batch2 = [{"task": "toy_copy", "scores": {"toy_copy": 1.0}}, {"task": "toy_copy", "scores": {"toy_copy": 1.0}}]
    assert mixer(batch2) == pytest.approx([1 / math.sqrt(2)] * 2, abs=1e-5)
    # "running" for every task: a single value per (task, score) stays raw until a second one arrives.
    everyone = R.RewardMixer(normalisation="running")
    assert everyone([{"task": "math", "scores": {"math": 3.0}}]) == [3.0]


def test_reward_mixer_rejects_bad_config():
    with pytest.raises(ValueError, match="rl.reward_weights names task 'maths'"):
        R.RewardMixer({"maths": 1.0})
    with pytest.raises(ValueError, match="must be none or running"):
        R.RewardMixer(normalisation={"math": "zscore"})
    with pytest.raises(ValueError, match="must be a number"):
        R.RewardMixer({"math": "high"})
    with pytest.raises(TypeError, match="returns a number"):
        R.as_scores("math", "1")
    assert R.as_scores("chat", {"polar": 1, "fmt": 0.5}) == {"polar": 1.0, "fmt": 0.5}
