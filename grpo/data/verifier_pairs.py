"""On-policy preference pairs labelled by the verifiers (`dpo.pairs: verifier`).

For each prompt: sample k answers with the rollout engine, score them with the configured
verifiers, and pair one correct answer (chosen) with one wrong answer (rejected). Prompts where all
k answers are right, or all wrong, carry no contrast and are skipped; the report counts them.

Choice rules:
- chosen   `shortest`: the correct answer with the fewest tokens (DPO then also favours brevity
           among right answers); `random`: any correct answer.
- rejected `most_frequent`: an answer giving the wrong final answer the model produces most often
           (the mistake most worth unlearning); `longest`: the wrong answer with the most tokens
           (often rambling or truncated); `random`: any wrong answer.
A correct answer cut off by max_tokens is never chosen (the model would learn to stop mid-answer
without an end-of-turn token). The pairs keep the sampled token ids as they are: no re-tokenization.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from grpo.data.preferences import TokenizedPair
from grpo.data.prompt_stream import request_seed

if TYPE_CHECKING:  # types only: data does not depend on the runtime
    from grpo.runtime.rollout import Completion, SamplingSpec

CORRECT = 1.0 - 1e-6  # a reward at least this is a correct answer (as in grpo.stages.evaluation)
CHOSEN_RULES = ("shortest", "random")
REJECTED_RULES = ("most_frequent", "random", "longest")


@dataclass
class PairReport:
    prompts: int = 0
    samples: int = 0
    pairs: int = 0
    skipped_all_correct: int = 0
    skipped_all_wrong: int = 0
    skipped_only_truncated_correct: int = 0
    correct_fraction: float = 0.0  # of all samples: the sampling policy's accuracy

    @property
    def skipped(self) -> int:
        return self.skipped_all_correct + self.skipped_all_wrong + self.skipped_only_truncated_correct

    def as_dict(self) -> dict:
        return {**asdict(self), "skipped": self.skipped}

    def summary(self) -> str:
        return (f"{self.pairs} pairs from {self.prompts} prompts x {self.samples // max(self.prompts, 1)} samples; "
                f"skipped {self.skipped} (all correct {self.skipped_all_correct}, all wrong {self.skipped_all_wrong}, "
                f"correct only when truncated {self.skipped_only_truncated_correct}); "
                f"sample accuracy {self.correct_fraction:.1%}")


def answer_key(score: Any, text: str) -> str:
    """What a completion answered, for counting equal wrong answers: the verifier's extraction when
    it reports one (`Score.extracted_answer`), else the stripped text."""
    extracted = score.extracted_answer() if hasattr(score, "extracted_answer") else None
    return extracted if extracted is not None else text.strip()


def choose_pair(completions: Sequence[Completion], scores: Sequence[Any], *, chosen_rule: str = "shortest",
                rejected_rule: str = "most_frequent", rng: random.Random | None = None) -> tuple[int, int] | str:
    """(chosen index, rejected index), or the reason there is no pair: "all_correct", "all_wrong",
    "only_truncated_correct"."""
    if chosen_rule not in CHOSEN_RULES:
        raise ValueError(f"dpo.chosen_rule must be one of {list(CHOSEN_RULES)}, got {chosen_rule!r}")
    if rejected_rule not in REJECTED_RULES:
        raise ValueError(f"dpo.rejected_rule must be one of {list(REJECTED_RULES)}, got {rejected_rule!r}")
    rng = rng or random.Random(0)
    correct = [i for i, s in enumerate(scores) if s.reward >= CORRECT]
    wrong = [i for i, s in enumerate(scores) if s.reward < CORRECT]
    if not wrong:
        return "all_correct"
    if not correct:
        return "all_wrong"
    candidates = [i for i in correct if not completions[i].truncated]
    if not candidates:
        return "only_truncated_correct"
    if chosen_rule == "shortest":
        chosen = min(candidates, key=lambda i: (len(completions[i].token_ids), i))
    else:
        chosen = rng.choice(candidates)
    if rejected_rule == "longest":
        rejected = max(wrong, key=lambda i: (len(completions[i].token_ids), -i))
    elif rejected_rule == "random":
        rejected = rng.choice(wrong)
    else:
        keys = {i: answer_key(scores[i], completions[i].text) for i in wrong}
        counts = Counter(keys.values())
        # The most frequent wrong answer (ties: the one seen first); of its completions, the shortest.
        top = max(wrong, key=lambda i: (counts[keys[i]], -wrong.index(i)))
        same = [i for i in wrong if keys[i] == keys[top]]
        rejected = min(same, key=lambda i: (len(completions[i].token_ids), i))
    return chosen, rejected


def sampled_and_scored(rollout, verifier, examples: Sequence[Any], *, spec: SamplingSpec, seed: int,
                       batch_size: int = 64, progress_bar=None) -> Iterator[tuple[int, Any, list]]:
    """(example index, sampled group, the group's scores) for every example, `spec.n` answers each, sampled and
    scored a batch at a time. Seeds depend on (seed, example index) only, so the same prompts give the same
    samples: the DPO pairs and the KTO labels are both built on this."""
    for start in range(0, len(examples), batch_size):
        batch = list(examples[start:start + batch_size])
        idx = list(range(start, start + len(batch)))
        groups = rollout.generate([e.prompt for e in batch], spec, [request_seed(seed, 4099, i) for i in idx])
        texts = [c.text for g in groups for c in g.completions]
        rows = [e.row for e, g in zip(batch, groups) for _ in g.completions]
        scores = verifier.score_batch(texts, rows)
        offset = 0
        for i, g in zip(idx, groups):
            k = len(g.completions)
            yield i, g, scores[offset:offset + k]
            offset += k
        if progress_bar is not None:
            progress_bar.update(len(batch))


def build_verifier_pairs(rollout, verifier, examples: Sequence[Any], *, spec: SamplingSpec, seed: int,
                         chosen_rule: str = "shortest", rejected_rule: str = "most_frequent",
                         batch_size: int = 64, progress_bar=None) -> tuple[list[TokenizedPair], PairReport]:
    """Sample `spec.n` answers per example (`examples[i].prompt`, `.row`), score and pair them.
    Sampling seeds depend on (seed, example index) only, so the same prompts give the same pairs."""
    report = PairReport()
    pairs: list[TokenizedPair] = []
    n_correct = 0
    rng = random.Random(seed)
    for i, g, group_scores in sampled_and_scored(rollout, verifier, examples, spec=spec, seed=seed,
                                                 batch_size=batch_size, progress_bar=progress_bar):
        report.prompts += 1
        report.samples += len(g.completions)
        n_correct += sum(s.reward >= CORRECT for s in group_scores)
        choice = choose_pair(g.completions, group_scores, chosen_rule=chosen_rule, rejected_rule=rejected_rule,
                             rng=rng)
        if isinstance(choice, str):
            setattr(report, f"skipped_{choice}", getattr(report, f"skipped_{choice}") + 1)
            continue
        c, r = choice
        pairs.append(TokenizedPair(list(g.prompt_ids), list(g.completions[c].token_ids),
                                   list(g.completions[r].token_ids), row=i))
        report.pairs += 1
    report.correct_fraction = n_correct / max(report.samples, 1)
    return pairs, report
