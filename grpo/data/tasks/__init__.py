"""Built-in task generators: synthetic, verifiable problems made locally (no downloads)."""

from grpo.data.tasks.arithmetic import (
    SOLUTION_STYLES,
    ArithmeticProblem,
    ArithmeticSpec,
    generate_arithmetic,
    generate_problems,
    make_pools,
    make_splits,
)

__all__ = ["SOLUTION_STYLES", "ArithmeticProblem", "ArithmeticSpec", "generate_arithmetic", "generate_problems", "make_pools", "make_splits"]
