"""On-policy labelled answers for KTO (`kto.data: verifier`): every sampled answer, labelled by the verifiers.

For each prompt: sample k answers with the rollout engine, score them with the configured verifiers, and
keep every one of them: a correct answer (reward >= CORRECT) is desirable, any other undesirable. Unlike
DPO's verifier pairs (grpo.data.verifier_pairs), nothing is skipped for lack of contrast: a prompt whose k
answers are all right gives k desirable examples, one whose answers are all wrong k undesirable ones.

One exception to the verifier's word, on by default (`truncated_correct="undesirable"`): a correct answer
cut off by max_tokens is labelled undesirable, since it never ended (as DPO never chooses one, the model
would otherwise learn to keep going past its answer); "desirable" keeps the verifier's label. The report
counts them.

Optional balancing (`balance`): "downsample" drops examples of the larger side (seeded) until both sides
are equal; "none" keeps everything (the KTO stage can instead weight the sides, `kto.balance: weights`).
The answers keep the sampled token ids as they are: no re-tokenization.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

from grpo.data.unpaired import TokenizedAnswer
from grpo.data.verifier_pairs import CORRECT, sampled_and_scored

if TYPE_CHECKING:  # types only: data does not depend on the runtime
    from grpo.runtime.rollout import SamplingSpec

TRUNCATED_CORRECT = ("undesirable", "desirable")


@dataclass
class LabelReport:
    prompts: int = 0
    samples: int = 0  # every sampled answer; all of them are examples before any balancing
    desirable: int = 0
    undesirable: int = 0
    truncated_correct: int = 0  # correct but cut off by max_tokens (labelled as truncated_correct says)
    prompts_all_correct: int = 0  # prompts DPO's pairs would skip (here their answers are all used)
    prompts_all_wrong: int = 0
    dropped_by_balance: int = 0
    kept: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        k = self.samples // max(self.prompts, 1)
        return (f"{self.kept} labelled answers from {self.prompts} prompts x {k} samples "
                f"({self.desirable} desirable, {self.undesirable} undesirable"
                + (f"; {self.truncated_correct} correct but truncated" if self.truncated_correct else "")
                + (f"; {self.dropped_by_balance} dropped to balance" if self.dropped_by_balance else "")
                + f"); prompts all correct {self.prompts_all_correct}, all wrong {self.prompts_all_wrong} "
                f"(used too); sample accuracy {self.desirable / max(self.samples, 1):.1%}")


def label_group(completions: Sequence[Any], scores: Sequence[Any], *,
                truncated_correct: str = "undesirable") -> list[bool]:
    """The label of every answer of one prompt."""
    if truncated_correct not in TRUNCATED_CORRECT:
        raise ValueError(f"kto.truncated_correct must be one of {list(TRUNCATED_CORRECT)}, got {truncated_correct!r}")
    return [s.reward >= CORRECT and (truncated_correct == "desirable" or not c.truncated)
            for c, s in zip(completions, scores)]


def balance_answers(answers: list[TokenizedAnswer], seed: int) -> list[TokenizedAnswer]:
    """Downsample the larger side to the size of the smaller (seeded); the order of the kept ones is kept."""
    pos = [i for i, a in enumerate(answers) if a.label]
    neg = [i for i, a in enumerate(answers) if not a.label]
    small, large = sorted((pos, neg), key=len)
    keep = set(small) | set(random.Random(seed).sample(large, len(small)))
    return [a for i, a in enumerate(answers) if i in keep]


def build_verifier_labels(rollout, verifier, examples: Sequence[Any], *, spec: SamplingSpec, seed: int,
                          truncated_correct: str = "undesirable", batch_size: int = 64,
                          progress_bar=None) -> tuple[list[TokenizedAnswer], LabelReport]:
    """Sample `spec.n` answers per example (`examples[i].prompt`, `.row`) and label every one. Sampling
    seeds depend on (seed, example index) only, as for the DPO pairs. No balancing here (see
    `balance_answers`: on several ranks it must see every rank's answers)."""
    report = LabelReport()
    out: list[TokenizedAnswer] = []
    for i, g, group_scores in sampled_and_scored(rollout, verifier, examples, spec=spec, seed=seed,
                                                 batch_size=batch_size, progress_bar=progress_bar):
        k = len(g.completions)
        labels = label_group(g.completions, group_scores, truncated_correct=truncated_correct)
        correct = [s.reward >= CORRECT for s in group_scores]
        report.prompts += 1
        report.samples += k
        report.desirable += sum(labels)
        report.undesirable += k - sum(labels)
        report.truncated_correct += sum(ok and c.truncated for ok, c in zip(correct, g.completions))
        report.prompts_all_correct += all(correct)
        report.prompts_all_wrong += not any(correct)
        for c, label in zip(g.completions, labels):
            if c.token_ids:  # an empty answer has no token to score (never seen: EOS is a token)
                out.append(TokenizedAnswer(list(g.prompt_ids), list(c.token_ids), label, row=i))
    report.kept = len(out)
    return out, report
