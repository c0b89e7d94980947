"""Format verifier: think/answer shapes, custom patterns, DAPO soft overlong punishment."""
import time

import pytest

import verifiers
from verifiers.format import FormatVerifier, soft_overlong_punishment


@pytest.mark.parametrize("completion, ok", [
    ("<think>2+2 is 4</think>The answer is 4.", True),
    ("  <think>\nreason\n</think>\n\n\\boxed{4}\n", True),
    ("The answer is 4.", False),  # no reasoning block
    ("<think>reason</think>", False),  # no answer after it
    ("<think>reason</think>   \n", False),
    ("<think>   </think>4", False),  # empty reasoning
    ("intro <think>reason</think>4", False),  # text before <think>
    ("<think>a</think><think>b</think>4", False),  # two blocks
    ("<think>reason 4", False),  # never closed (truncated)
    ("<think>a</think>4</think>", False),
])
def test_think_preset(completion, ok):
    score = FormatVerifier().score(completion, {})
    assert score.reward == (1.0 if ok else 0.0)
    assert score.info["format_ok"] is ok
    assert ("reason" in score.info) is (not ok)


@pytest.mark.parametrize("completion, ok", [
    ("<think>r</think><answer>4</answer>", True),
    ("<think>r</think>\n<answer>\n4\n</answer>\n", True),
    ("<think>r</think>4", False),
    ("<think>r</think><answer>4</answer> and more", False),
    ("<think>r</think><answer> </answer>", False),
    ("<think>r</think><answer>4</answer><answer>5</answer>", False),
])
def test_think_answer_preset(completion, ok):
    assert FormatVerifier("think_answer").score(completion, {}).reward == (1.0 if ok else 0.0)


def test_prefilled_think_tag():
    verifier = FormatVerifier(think_prefilled=True)
    assert verifier.score("reasoning here</think>42", {}).reward == 1.0
    repeated = verifier.score("<think>reasoning</think>42", {})
    assert repeated.reward == 0.0 and "repeats <think>" in repeated.info["reason"]


def test_custom_pattern_and_rewards():
    verifier = FormatVerifier(pattern=r".*\\boxed\{[^{}]+\}\s*", reward_ok=0.5, reward_bad=-0.5)
    assert verifier.score("so \\boxed{4}", {}).reward == 0.5
    assert verifier.score("so 4", {}).reward == -0.5
    with pytest.raises(ValueError, match="not a valid regex"):
        FormatVerifier(pattern="(")


def test_checks_are_fast_on_long_adversarial_text():
    text = "<think>" + "<thin" * 200_000 + "</think>" + " x" * 200_000
    start = time.perf_counter()
    FormatVerifier("think_answer").score(text, {})
    assert time.perf_counter() - start < 0.5


def test_soft_overlong_punishment_matches_dapo():
    # L_max = 20, L_cache = 4: free up to 16, then linear down to -1 at 20, -1 beyond.
    values = {length: soft_overlong_punishment(length, 20, 4) for length in (0, 16, 17, 18, 20, 21, 1000)}
    assert values == {0: 0.0, 16: 0.0, 17: -0.25, 18: -0.5, 20: -1.0, 21: -1.0, 1000: -1.0}
    assert soft_overlong_punishment(20, 20, 0) == 0.0 and soft_overlong_punishment(21, 20, 0) == -1.0


def test_overlong_in_tokens_reads_the_example():
    verifier = FormatVerifier(preset="none", max_length=100, overlong_buffer=20, overlong_penalty_factor=0.5)
    score = verifier.score("whatever", {"completion_tokens": 90})
    assert score.reward == pytest.approx(-0.25)
    assert score.info == {"length": 90, "overlong_penalty": pytest.approx(-0.25)}
    with pytest.raises(ValueError, match=r"example\['completion_tokens'\]"):
        verifier.score("whatever", {})
    custom_key = FormatVerifier(preset="none", max_length=10, length_key="n_tokens")
    assert custom_key.score("x", {"n_tokens": 11}).reward == -1.0


def test_overlong_in_chars_adds_to_format_reward():
    verifier = FormatVerifier(max_length=30, overlong_buffer=10, length_unit="chars")
    short = "<think>r</think>4"
    assert verifier.score(short, {}).reward == 1.0
    long = "<think>" + "r" * 18 + "</think>4"  # 34 chars: past max_length
    score = verifier.score(long, {})
    assert score.reward == 0.0 and score.info["format_ok"] and score.info["overlong_penalty"] == -1.0


@pytest.mark.parametrize("kwargs, message", [
    ({"preset": "xml"}, "preset"),
    ({"preset": "none"}, "checks nothing"),
    ({"max_length": 0}, "max_length"),
    ({"max_length": 10, "overlong_buffer": 10}, "overlong_buffer"),
    ({"max_length": 10, "length_unit": "words"}, "length_unit"),
])
def test_option_errors_name_the_option(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FormatVerifier(**kwargs)


def test_registered_as_format():
    assert isinstance(verifiers.get("format", preset="think_answer"), FormatVerifier)
