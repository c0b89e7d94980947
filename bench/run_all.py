"""Run every benchmark and write one markdown report: bench/results.md (`make bench` calls this).

    python bench/run_all.py                      # sandbox, verifiers, vs_trl at their default sizes
    python bench/run_all.py --quick              # smaller sizes for a first look
    python bench/run_all.py --only vs_trl --vs-trl-args "--steps 10 --repeats 3"

Each benchmark runs as its own process (one failing does not stop the others); its full output goes to
artifacts/bench_logs/<name>.log and its tables into the report. The report starts with the date, the
machine and the commit, then a summary table (one headline figure per benchmark), then each benchmark's
own tables. The ours-vs-TRL section is also copied into bench/README.md between the `results` markers,
so the README carries the latest figures.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "bench" / "README.md"
MARK_START, MARK_END = "<!-- results:start -->", "<!-- results:end -->"


@dataclass
class Bench:
    name: str
    script: str
    args: list[str]
    quick_args: list[str]
    returncode: int | None = None
    wall_s: float = 0.0
    output: str = ""
    extra: dict = field(default_factory=dict)  # files the benchmark wrote (markdown, json)

    def command(self, quick: bool) -> list[str]:
        return [sys.executable, self.script, *(self.quick_args if quick else self.args)]


def benches(work: Path, vs_trl_args: list[str]) -> list[Bench]:
    md, js = (work / "vs_trl.md").relative_to(ROOT), (work / "vs_trl.json").relative_to(ROOT)
    return [
        Bench("sandbox", "bench/sandbox.py", [], ["--jobs", "100"]),
        Bench("verifiers", "bench/verifiers.py", ["--show", "0"],
              ["--pairs", "500", "--show", "0", "--code-solutions", "20"]),
        Bench("vs_trl", "bench/vs_trl.py", ["--markdown", str(md), "--json", str(js), *vs_trl_args],
              ["--markdown", str(md), "--json", str(js), "--repeats", "1", "--dpo-repeats", "1", *vs_trl_args],
              extra={"markdown": md, "json": js}),
        Bench("shared_prompt", "bench/shared_prompt.py", [], ["--presets", "tiny", "--repeats", "3"]),
    ]


def run_one(b: Bench, quick: bool, log_dir: Path, timeout_s: float | None) -> None:
    cmd = b.command(quick)
    print(f"[run_all] {b.name}: {' '.join(shlex.quote(c) for c in cmd[1:])}", flush=True)
    for path in b.extra.values():
        (ROOT / path).unlink(missing_ok=True)  # never report a previous run's figures
    log = log_dir / f"{b.name}.log"
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
        b.returncode, b.output = proc.returncode, proc.stdout + (f"\n[stderr]\n{proc.stderr}" if proc.stderr else "")
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        b.returncode, b.output = -1, out + f"\n[run_all] timed out after {timeout_s:.0f}s"
    b.wall_s = time.time() - t0
    log.write_text("$ " + " ".join(cmd) + "\n" + b.output)
    status = "ok" if b.returncode == 0 else f"FAILED (exit {b.returncode})"
    print(f"[run_all] {b.name}: {status} in {b.wall_s:.0f}s; log {log.relative_to(ROOT)}", flush=True)


# ---------------------------------------------------------------------------------------------
# Report pieces


def stdout_of(b: Bench) -> str:
    return b.output.split("\n[stderr]\n", 1)[0]


def table_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("|")]


def sandbox_section(b: Bench) -> tuple[list[str], str]:
    out = stdout_of(b)
    lines = [ln for ln in out.splitlines() if ln.startswith(("|", "load average")) or "usable cores" in ln]
    headline = "see below"
    for ln in table_lines(out):
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if len(cells) >= 4 and cells[0] == "ten asserts" and cells[1].startswith("pool") and headline == "see below":
            headline = f"ten-assert program: warm pool {cells[2]} exec/s, {cells[3]} one bwrap per job"
    return _with_blank_lines(lines), headline


def verifiers_section(b: Bench) -> tuple[list[str], str]:
    out = stdout_of(b)
    keep = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith("    [")]
    m = re.search(r"throughput ratio ours / math-verify: inline ([\d.]+x)", out)
    acc = re.search(r"ours\s+accuracy ([\d.]+%)", out)
    headline = ", ".join(x for x in (f"math: {m.group(1)} math-verify's rate (inline)" if m else "",
                                     f"labeled-table accuracy {acc.group(1)}" if acc else "") if x) or "see below"
    return ["```text", *keep, "```"], headline


def vs_trl_section(b: Bench) -> tuple[list[str], str]:
    md = ROOT / b.extra["markdown"]
    if not md.exists():
        return ["```text", *stdout_of(b).splitlines()[-30:], "```"], "no report (see log)"
    lines = md.read_text().splitlines()
    if lines and lines[0].startswith("## "):  # its own title; the report's section title replaces it
        lines = lines[1:]
    while lines and not lines[0].strip():
        lines = lines[1:]
    headline = "see below"
    js = ROOT / b.extra["json"]
    if js.exists():
        data = json.loads(js.read_text())
        parts = []
        for task in ("grpo", "dpo"):
            if task in data:
                parts.append(f"{task.upper()} {data[task]['speedup']:.2f}x TRL's step throughput")
        headline = "; ".join(parts) or headline
    return lines, headline


def shared_prompt_section(b: Bench) -> tuple[list[str], str]:
    out = stdout_of(b)
    lines = [ln for ln in out.splitlines() if ln.startswith(("|", "threads"))]
    ratios = []
    for ln in table_lines(out)[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if len(cells) >= 7 and cells[0].startswith("tiny"):
            ratios.append(cells[6])
    headline = (f"tiny model, update vs padded rows: {', '.join(ratios)} (short answers, long prompt, long answers)"
                if ratios else "see below")
    return _with_blank_lines(lines), headline


def _with_blank_lines(lines: list[str]) -> list[str]:
    """A blank line between a table and the text around it (markdown needs it)."""
    out: list[str] = []
    for ln in lines:
        if out and (ln.startswith("|") != out[-1].startswith("|")) and out[-1] != "":
            out.append("")
        out.append(ln)
    return out


def machine_line() -> str:
    cpu = "unknown CPU"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    return (f"{dt.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}; {os.cpu_count()} CPUs ({cpu}), "
            f"{mem:.1f} GiB; load average {os.getloadavg()[0]:.2f}; commit {commit}; Python {sys.version.split()[0]}")


def build_report(ran: list[Bench], quick: bool, started: str) -> tuple[str, list[str]]:
    sections = {"sandbox": sandbox_section, "verifiers": verifiers_section, "vs_trl": vs_trl_section,
                "shared_prompt": shared_prompt_section}
    titles = {"sandbox": "Sandbox executions per second", "verifiers": "Verifiers: ours vs math-verify",
              "vs_trl": "Trainer: ours vs TRL", "shared_prompt": "GRPO update: shared prompts vs padded rows"}
    summary = ["| benchmark | command | status | wall (s) | headline |", "|---|---|---|---:|---|"]
    body: list[str] = []
    vs_trl_lines: list[str] = []
    for b in ran:
        lines, headline = sections[b.name](b)
        status = "ok" if b.returncode == 0 else f"failed (exit {b.returncode})"
        cmd = " ".join(["python", *b.command(quick)[1:]])
        summary.append(f"| {b.name} | `{cmd}` | {status} | {b.wall_s:.0f} | {headline} |")
        body += [f"## {titles[b.name]}", "", f"`{cmd}` ({status}, {b.wall_s:.0f}s; full output "
                 f"artifacts/bench_logs/{b.name}.log)", "", *lines, ""]
        if b.name == "vs_trl" and b.returncode == 0:
            vs_trl_lines = lines
    head = ["# Benchmark results", "", f"Started {started}. Machine: {machine_line()}.",
            "Written by `bench/run_all.py` (`make bench`)" + (" with --quick" if quick else "") + ".", ""]
    return "\n".join(head + summary + [""] + body), vs_trl_lines


def update_readme(lines: list[str], when: str) -> bool:
    """Replace the text between the results markers of bench/README.md; False when there are no markers."""
    if not README.exists():
        return False
    text = README.read_text()
    if MARK_START not in text or MARK_END not in text:
        return False
    start, end = text.index(MARK_START) + len(MARK_START), text.index(MARK_END)
    block = "\n".join(["", f"_Latest run: {when}, written by `bench/run_all.py`._", "", *lines, ""])
    README.write_text(text[:start] + block + text[end:])
    return True


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="sandbox,verifiers,vs_trl,shared_prompt",
                    help="comma-separated: sandbox, verifiers, vs_trl, shared_prompt")
    ap.add_argument("--quick", action="store_true", help="smaller sizes (fewer jobs, pairs and repeats)")
    ap.add_argument("--vs-trl-args", default="", help="extra arguments for bench/vs_trl.py, one quoted string")
    ap.add_argument("--output", default="bench/results.md")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per benchmark (default: none)")
    ap.add_argument("--no-readme", action="store_true", help="leave bench/README.md untouched")
    args = ap.parse_args(argv)

    work = ROOT / "artifacts" / "bench_logs"
    work.mkdir(parents=True, exist_ok=True)
    wanted = [p.strip() for p in args.only.split(",") if p.strip()]
    known = {b.name: b for b in benches(work, shlex.split(args.vs_trl_args))}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise SystemExit(f"--only: unknown benchmark(s) {unknown}; choose from {sorted(known)}")
    started = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    ran = []
    for name in wanted:
        run_one(known[name], args.quick, work, args.timeout)
        ran.append(known[name])
    report, vs_trl_lines = build_report(ran, args.quick, started)
    out = ROOT / args.output if not Path(args.output).is_absolute() else Path(args.output)
    out.write_text(report + "\n")
    print(f"[run_all] wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}", flush=True)
    if vs_trl_lines and not args.no_readme:
        if update_readme(vs_trl_lines, started):
            print("[run_all] updated the results section of bench/README.md", flush=True)
    print("\n" + report)
    return 0 if all(b.returncode == 0 for b in ran) else 1


if __name__ == "__main__":
    raise SystemExit(main())
