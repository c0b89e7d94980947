"""User tools for the tool tests, loaded as `tool_plugins:<name>` (the test directory is on sys.path)."""
import time


def reverse(text: str) -> str:
    """Reverse the text of the block."""
    return text.strip()[::-1]


def hang(text: str) -> str:
    """Never answers (the runner must kill it at tools.timeout_s)."""
    time.sleep(3600)
    return ""


def boom(text: str) -> str:
    raise ValueError("bad input: " + text.strip())


def huge(text: str) -> str:
    return "y" * 5_000_000


def add(a: int, b: int = 0) -> int:
    """Add two integers."""
    return a + b
