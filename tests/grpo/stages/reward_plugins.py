"""A plug-in reward used by the end-to-end GRPO tests, loaded as `reward_plugins:digit_fraction`
(the tests put this folder on PYTHONPATH). It gives a random model a varied reward, so groups
have signal and the weights really move."""


def digit_fraction(completion: str, example: dict) -> float:
    return sum(ch.isdigit() for ch in completion) / max(len(completion), 1)


def unreliable(completion: str, example: dict) -> float:
    """A badly behaved plug-in, deterministic per completion: NaN for a third of them, an exception for
    another third, 1.0 otherwise. Training must go on with those items scored 0 and counted."""
    kind = len(completion) % 3
    if kind == 0:
        return float("nan")
    if kind == 1:
        raise RuntimeError("plug-in failure on purpose")
    return 1.0
