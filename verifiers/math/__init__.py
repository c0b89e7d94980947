"""The `math` verifier: extract the final answer, normalize it, parse it without eval, and
compare it with the reference exactly where possible (see docs/verifiers_math.md)."""
from .equivalence import Options, Verdict, equivalent
from .extract import ALL_SOURCES, EXTRACTION_MODES, Extraction, extract_answer
from .normalize import normalize_answer
from .parse import parse_answer
from .verifier import MathVerifier, answer_key, canonical_key

__all__ = [
    "ALL_SOURCES", "EXTRACTION_MODES", "Extraction", "MathVerifier", "Options", "Verdict",
    "answer_key", "canonical_key", "equivalent", "extract_answer", "normalize_answer", "parse_answer",
]
