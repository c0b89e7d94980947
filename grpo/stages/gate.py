"""Eval gates between the stages of `grpo run` (`eval.gate`): a stage that makes the model worse on the
held-out problems must not silently feed the next one.

After each stage the pipeline compares the stage's held-out `metric` with that of the model it started
from (the base model's for the first stage; after a fallback, the model the run fell back to). A fall of
more than `max_drop` fails the gate: the run stops there (`action: stop`, exit status 3), or the next stage
starts from the model before the failing stage (`action: fallback`). Either way summary.json records, under
the stage, `gate` = {metric, before, after, drop, max_drop, passed, action, from_stage}, and the summary
table marks the stage.
"""
from __future__ import annotations


class GateStopped(RuntimeError):
    """A stage failed its eval gate with `eval.gate.action: stop`; the summary is written."""

    def __init__(self, stage: str, verdict: dict):
        self.stage, self.verdict = stage, verdict
        super().__init__(f"eval gate failed after stage {stage}: {describe(verdict)}; the run stopped "
                         "(eval.gate.action=stop)")


def verdict(gate, before: dict | None, after: dict, from_stage: str) -> dict | None:
    """The gate's verdict on a stage (None when no gate is set or a figure is missing)."""
    if gate.metric is None or before is None or gate.metric not in before or gate.metric not in after:
        return None
    b, a = float(before[gate.metric]), float(after[gate.metric])
    drop = b - a
    return {"metric": gate.metric, "before": b, "after": a, "drop": round(drop, 6), "max_drop": gate.max_drop,
            "passed": drop <= gate.max_drop + 1e-12, "action": gate.action, "from_stage": from_stage}


def describe(v: dict) -> str:
    """One line: 'pass@1 0.784 (after sft) -> 0.702: a drop of 0.082 > the allowed 0.020'."""
    return (f"{v['metric']} {v['before']:.3f} (after {v['from_stage']}) -> {v['after']:.3f}: a drop of "
            f"{v['drop']:.3f} {'<=' if v['passed'] else '>'} the allowed {v['max_drop']:.3f}")
