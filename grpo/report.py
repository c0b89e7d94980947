"""End-of-run report: the summary table on the terminal and a PNG of reward and accuracy."""
from __future__ import annotations

from pathlib import Path

from grpo.metrics import read_metrics


def summary_table(summary: dict) -> str:
    stages = summary.get("stages", {})
    keys = sorted({k for r in stages.values() for k in r if k.startswith(("pass@", "maj@"))},
                  key=lambda k: (k[:4], int(k.split("@")[1])))
    gated = any("gate" in r for r in stages.values())
    head = ["stage", *keys, "wall_s", *(["gate"] if gated else [])]
    rows = [[name, *[f"{r[k]:.3f}" if k in r else "-" for k in keys], f"{r.get('wall_s', 0):.0f}",
             *([gate_cell(r.get("gate"))] if gated else [])]
            for name, r in stages.items()]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep, *[line(r) for r in rows]])


def gate_cell(v: dict | None) -> str:
    """The summary table's mark for a stage under eval.gate: 'ok', or 'GATED' with the figures and what the
    run did ('-' where no gate applied)."""
    if not v:
        return "-"
    figures = f"{v['metric']} {v['before']:.3f} -> {v['after']:.3f}, drop {v['drop']:.3f} / allowed {v['max_drop']:.3f}"
    if v["passed"]:
        return f"ok ({figures})"
    outcome = "run stopped" if v["action"] == "stop" else f"next stage from the {v['from_stage']} model"
    return f"GATED ({figures}): {outcome}"


def print_summary(summary: dict) -> None:
    n = next((r.get("n") for r in summary.get("stages", {}).values() if r.get("n")), None)
    print(f"\nHeld-out evaluation ({n} problems, greedy pass@1):" if n else "\nSummary:")
    print(summary_table(summary))


def _grpo_eval_points(rows: list[dict], summary: dict | None) -> list[tuple[float, float]]:
    """GRPO's periodic eval/pass@1, framed by the held-out pass@1 of the model it started from (step 0) and
    of its final model (last step), both taken from the pipeline summary."""
    pts = [(r["step"], r["eval/pass@1"]) for r in rows if r.get("stage") == "grpo" and "eval/pass@1" in r]
    stages = list((summary or {}).get("stages", {}).items())
    names = [name for name, _ in stages]
    if "grpo" in names and "pass@1" in stages[names.index("grpo")][1]:
        i = names.index("grpo")
        last = max((r["step"] for r in rows if r.get("stage") == "grpo"), default=0)
        j = i - 1
        while j > 0 and stages[j][1].get("gate", {}).get("passed") is False:  # fell back past a gated stage
            j -= 1
        if j >= 0 and "pass@1" in stages[j][1]:
            pts.insert(0, (0, stages[j][1]["pass@1"]))
        pts.append((last, stages[i][1]["pass@1"]))
    return pts


def write_plots(run_dir: str | Path, summary: dict | None = None) -> Path | None:
    """reward (GRPO), loss (SFT, DPO) and eval accuracy over steps -> run_dir/plots/curves.png.
    With the pipeline `summary`, the GRPO accuracy panel starts and ends at the stage's own evaluations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    if not rows:
        return None
    panels = [("grpo", "reward/mean", "GRPO mean reward"), ("grpo", "eval/pass@1", "GRPO eval pass@1"),
              ("sft", "loss", "SFT train loss"), ("sft", "eval/loss", "SFT eval loss"),
              ("dpo", "loss", "DPO loss"), ("dpo", "rewards/accuracy", "DPO pair accuracy"),
              ("kto", "loss", "KTO loss"), ("kto", "kl", "KTO reference point z_ref (batch KL)")]
    present = [(s, k, t) for s, k, t in panels if any(r.get("stage") == s and k in r for r in rows)]
    if not present:
        return None
    fig, axes = plt.subplots(len(present), 1, figsize=(7, 2.4 * len(present)), squeeze=False)
    for ax, (stage, key, title) in zip(axes[:, 0], present):
        pts = [(r["step"], r[key]) for r in rows if r.get("stage") == stage and isinstance(r.get(key), (int, float))]
        if (stage, key) == ("grpo", "eval/pass@1"):
            pts = _grpo_eval_points(rows, summary)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 50 else None,
                alpha=0.4 if len(pts) >= 50 else 1.0)
        if len(pts) >= 50:  # noisy per-step curves: add a moving average over 10 steps
            ys = [p[1] for p in pts]
            avg = [sum(ys[max(0, i - 9):i + 1]) / len(ys[max(0, i - 9):i + 1]) for i in range(len(ys))]
            ax.plot([p[0] for p in pts], avg, color="C1", label="10-step average")
            ax.legend(fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(run_dir) / "plots" / "curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
