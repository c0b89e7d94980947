"""A plug-in reward used by the end-to-end GRPO tests, loaded as `reward_plugins:digit_fraction`
(the tests put this folder on PYTHONPATH). It gives a random model a varied reward, so groups
have signal and the weights really move."""


def digit_fraction(completion: str, example: dict) -> float:
    return sum(ch.isdigit() for ch in completion) / max(len(completion), 1)
