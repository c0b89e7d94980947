"""LoRA vs full fine-tuning: training memory and step time; adapter-only vs merged weight pushes into vLLM.

    python bench/lora.py                               # a 4-layer, 512-wide model (~17M parameters), rank 16
    python bench/lora.py --hidden 1024 --layers 8 --rank 32 --steps 5
    python bench/lora.py --only push                   # only the push / generation part

Every variant runs in a fresh process on the same locally built model (no downloads):
- train (full | lora): DeepSpeed (ZeRO-0, fp32, AdamW) on random token batches of --batch x --seq tokens; printed:
  trainable parameters, optimizer state (AdamW's two moments, bytes actually allocated), peak RSS of the whole
  process (VmHWM: weights, activations, gradients, optimizer) and the mean step time after one warm-up step.
- push (merged | adapter): one vLLM engine per variant (built with LoRA support for `adapter`); a policy with a
  trained-looking adapter (B != 0); printed: seconds per push (merged: base + B A for every layer through vLLM's
  full reload; adapter: peft files written + vLLM loads them), the bytes moved, the time to sample
  --prompts x --samples completions of --max-tokens tokens after the push, and the largest |engine - trainer|
  logprob on one sequence (both must be ~0: the engine samples from the adapted policy).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: python bench/lora.py


def peak_rss_mib() -> float:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def build_model(args) -> Path:
    from grpo.runtime.tiny_model import build_tiny_model

    out = Path(args.model_dir) / f"h{args.hidden}_l{args.layers}"
    return build_tiny_model(out, hidden_size=args.hidden, num_layers=args.layers,
                            intermediate_size=args.hidden * 4, seed=0, initializer_range=0.05,
                            max_position_embeddings=max(512, args.seq))


def train_child(args) -> dict:
    import torch

    from grpo.config import EngineConfig, LoraConfig, ModelConfig, OptimConfig
    from grpo.runtime.engine import TrainEngine, init_distributed
    from grpo.runtime.models import load_model

    init_distributed(EngineConfig())
    torch.manual_seed(0)
    model_cfg = ModelConfig(lora=LoraConfig(rank=args.rank, alpha=2 * args.rank) if args.variant == "lora" else None)
    model = load_model(str(build_model(args)), model_cfg)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    engine = TrainEngine(model, EngineConfig(), OptimConfig(lr=1e-4), total_steps=args.steps + 1)
    vocab = model.config.vocab_size
    times = []
    for step in range(args.steps + 1):
        ids = torch.randint(3, vocab, (args.batch, args.seq))
        t0 = time.perf_counter()
        logits = engine.forward(ids)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1))
        engine.backward(loss)
        engine.step()
        if step:  # the first step allocates the optimizer state
            times.append(time.perf_counter() - t0)
    optim_bytes = sum(t.numel() * t.element_size() for state in engine.optimizer.state.values()
                      for t in state.values() if torch.is_tensor(t) and t.dim() > 0)
    return {"variant": args.variant, "parameters": total, "trainable": trainable,
            "optimizer_state_mib": optim_bytes / 2**20, "peak_rss_mib": peak_rss_mib(),
            "step_s": sum(times) / len(times)}


def push_child(args) -> dict:
    import torch

    from grpo.config import LoraConfig, ModelConfig, RolloutConfig
    from grpo.runtime.lora import merged_named_weights, save_adapter, vllm_max_lora_rank
    from grpo.runtime.models import load_model
    from grpo.runtime.rollout import SamplingSpec, VLLMRollout

    model_dir = build_model(args)
    policy = load_model(str(model_dir), ModelConfig(lora=LoraConfig(rank=args.rank, alpha=2 * args.rank)))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    adapter = args.variant == "adapter"
    rollout = VLLMRollout(str(model_dir), RolloutConfig(kv_cache_gb=0.5, max_tokens=args.max_tokens),
                          max_lora_rank=vllm_max_lora_rank(args.rank) if adapter else None)
    push_dir = Path(tempfile.mkdtemp(prefix="bench_lora_push_"))
    pushes, moved = [], 0
    for _ in range(args.pushes):
        t0 = time.perf_counter()
        if adapter:
            save_adapter(policy, push_dir)
            rollout.push_adapter(push_dir)
            moved = sum(f.stat().st_size for f in push_dir.glob("*.safetensors"))
        else:
            weights = list(merged_named_weights(policy))
            rollout.push_weights(weights)
            moved = sum(t.numel() * t.element_size() for _, t in weights)
        pushes.append(time.perf_counter() - t0)
    prompts = [f"{i} + {i * 7 % 100} =" for i in range(args.prompts)]
    spec = SamplingSpec(n=args.samples, temperature=1.0, max_tokens=args.max_tokens)
    rollout.generate(prompts[:2], spec, [0, 1])  # warm-up
    t0 = time.perf_counter()
    groups = rollout.generate(prompts, spec, list(range(len(prompts))))
    gen_s = time.perf_counter() - t0
    tokens = sum(len(c.token_ids) for g in groups for c in g.completions)
    sample = groups[0].completions[0]
    engine_lps = torch.tensor(rollout.token_logprobs(groups[0].prompt_ids, sample.token_ids))
    ids = torch.tensor([groups[0].prompt_ids + sample.token_ids])
    with torch.no_grad():
        logits = policy(input_ids=ids).logits[0, len(groups[0].prompt_ids) - 1:-1].float()
    trainer_lps = torch.log_softmax(logits, -1).gather(-1, ids[0, len(groups[0].prompt_ids):, None]).squeeze(-1)
    return {"variant": args.variant, "push_s": sorted(pushes)[len(pushes) // 2], "push_mib": moved / 2**20,
            "generate_s": gen_s, "tokens": tokens, "tokens_per_s": tokens / gen_s,
            "max_logprob_diff": float((engine_lps - trainer_lps).abs().max())}


def run_child(kind: str, variant: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--variant", variant] + [
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
        if k not in ("child", "variant", "only", "json") and v is not None]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"bench/lora.py: {kind}/{variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--pushes", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--model-dir", default="artifacts/bench_lora_models")
    ap.add_argument("--only", choices=("train", "push"))
    ap.add_argument("--json")
    ap.add_argument("--child", choices=("train", "push"), help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        print(json.dumps((train_child if args.child == "train" else push_child)(args)), flush=True)
        return

    print(f"model: Qwen2 architecture, hidden {args.hidden}, {args.layers} layers, intermediate {4 * args.hidden}; "
          f"LoRA rank {args.rank}, alpha {2 * args.rank}, all linear layers; fp32 on the CPU", flush=True)
    out: dict = {"settings": {k: v for k, v in vars(args).items() if k not in ("child", "variant", "json")}}
    if args.only in (None, "train"):
        full, lo = run_child("train", "full", args), run_child("train", "lora", args)
        out["train"] = {"full": full, "lora": lo}
        print(f"\ntraining: {args.steps} steps of {args.batch} x {args.seq} tokens, DeepSpeed ZeRO-0, AdamW")
        print("| | trainable parameters | optimizer state | peak RSS | step time |")
        print("|---|---:|---:|---:|---:|")
        for r in (full, lo):
            print(f"| {r['variant']} | {r['trainable']:,} of {r['parameters']:,} | {r['optimizer_state_mib']:.1f} MiB "
                  f"| {r['peak_rss_mib']:.0f} MiB | {r['step_s']:.3f} s |")
        print(f"| lora / full | {lo['trainable'] / full['trainable']:.4f} | "
              f"{lo['optimizer_state_mib'] / full['optimizer_state_mib']:.4f} | "
              f"{lo['peak_rss_mib'] / full['peak_rss_mib']:.2f} | {lo['step_s'] / full['step_s']:.2f} |", flush=True)
    if args.only in (None, "push"):
        merged, adapter = run_child("push", "merged", args), run_child("push", "adapter", args)
        out["push"] = {"merged": merged, "adapter": adapter}
        print(f"\npush into vLLM (median of {args.pushes}) and sampling {args.prompts} x {args.samples} completions "
              f"of up to {args.max_tokens} tokens after it")
        print("| push | seconds per push | moved | sampling | tokens/s | max |engine - trainer| logprob |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in (merged, adapter):
            print(f"| {r['variant']} | {r['push_s']:.4f} s | {r['push_mib']:.2f} MiB | {r['generate_s']:.2f} s "
                  f"| {r['tokens_per_s']:.0f} | {r['max_logprob_diff']:.1e} |")
        print(f"| adapter / merged | {adapter['push_s'] / merged['push_s']:.2f} | "
              f"{adapter['push_mib'] / merged['push_mib']:.4f} | {adapter['generate_s'] / merged['generate_s']:.2f} "
              f"| {adapter['tokens_per_s'] / merged['tokens_per_s']:.2f} | |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
