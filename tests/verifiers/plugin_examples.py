"""Plug-ins used by the verifier tests, named as "plugin_examples:<attr>".

They live in a real module (not in the test files) so that worker processes started with
"spawn" can import them by name, exactly as a third-party plug-in would be imported.
"""
import os
import time

from verifiers import BaseVerifier, Score


def contains_answer(completion, example):
    """The smallest possible plug-in: a function returning a float."""
    return float(str(example["answer"]) in completion)


def length_bonus(completion, example, per_char=0.01, cap=1.0):
    """A function with options: `get("plugin_examples:length_bonus", per_char=0.1)`."""
    return Score(min(cap, per_char * len(completion)), {"chars": len(completion)})


class ExactMatch(BaseVerifier):
    """A class plug-in with an option."""

    name = "exact"

    def __init__(self, strip=True):
        self.strip = strip

    def score(self, completion, example):
        text = completion.strip() if self.strip else completion
        return Score(float(text == example["answer"]), {"text": text})


def make_exact(strip=True):
    """A factory (no required positional arguments) returning a verifier."""
    return ExactMatch(strip=strip)


exact_instance = ExactMatch(strip=False)


class OnlyScore:
    """An object with score() but no score_batch() or name: the registry completes it."""

    def score(self, completion, example):
        return 0.5


def moody(completion, example):
    """Misbehaves on request, for pool and composition tests."""
    if completion == "hang":
        time.sleep(3600)
    if completion == "raise":
        raise ValueError("moody verifier refuses")
    if completion == "die":
        os._exit(3)
    if completion == "nan":
        return float("nan")
    if completion == "pid":
        return Score(1.0, {"pid": os.getpid()})
    return 1.0


def broken_factory():
    raise RuntimeError("this plug-in cannot be built")
