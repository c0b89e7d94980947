"""The run's plot: GRPO's accuracy panel is framed by the pipeline's own evaluations."""
import json

from grpo.report import _grpo_eval_points, write_plots

ROWS = [{"stage": "sft", "step": 1, "loss": 2.0}, {"stage": "sft", "step": 2, "loss": 1.0}]
ROWS += [{"stage": "grpo", "step": s, "reward/mean": 0.5 + s / 100} for s in range(1, 81)]
ROWS += [{"stage": "grpo", "step": 20, "eval/pass@1": 0.85}, {"stage": "grpo", "step": 40, "eval/pass@1": 0.87}]
SUMMARY = {"stages": {"base": {"pass@1": 0.0}, "sft": {"pass@1": 0.81}, "dpo": {"pass@1": 0.82},
                      "grpo": {"pass@1": 0.886}}}


def test_grpo_eval_points_start_at_the_previous_stage_and_end_at_the_final_model():
    assert _grpo_eval_points(ROWS, SUMMARY) == [(0, 0.82), (20, 0.85), (40, 0.87), (80, 0.886)]
    assert _grpo_eval_points(ROWS, None) == [(20, 0.85), (40, 0.87)]
    only_grpo = {"stages": {"grpo": {"pass@1": 0.9}}}
    assert _grpo_eval_points(ROWS, only_grpo) == [(20, 0.85), (40, 0.87), (80, 0.9)]


def test_write_plots_writes_a_png(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    out = write_plots(tmp_path, SUMMARY)
    assert out == tmp_path / "plots" / "curves.png" and out.read_bytes()[:4] == b"\x89PNG"
