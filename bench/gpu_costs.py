"""Measure, on one GPU, the costs that bench/async_model.py assumes for its GPU prediction (GPU_7B).

A Qwen2.5-7B-shaped model (random weights: the costs do not depend on their values; nothing is downloaded) in
bf16 with SDPA attention, through transformers and our own loss code:

- training, per token: forward + backward with gradient checkpointing through `gather_logprobs` and
  `policy_loss` (the update), and one no-grad forward (the reference pass);
- the optimizer step of one ZeRO shard: fused AdamW over 1/`--shards` of the parameters in fp32 (what each of
  the training GPUs updates; the ZeRO gathers between GPUs are not measurable on one GPU);
- a decode step, t(B) = a + c x B for B sequences with a KV cache, through transformers' eager loop (no CUDA
  graphs, no paged attention: an upper bound for vLLM's step), beside the floor of reading the weights once;
- the weight push's snapshot (grpo.runtime.weight_transfer, 256 MB buckets) on the GPU, its copy to pinned host
  memory, and the broadcast of it through a ProcessGroupNCCL built as the async bridge builds it (a group of one:
  one GPU has no link to measure, but the calls are the real ones).

    python bench/gpu_costs.py --out costs.json          # on a GPU (about a minute on an H100)
    python bench/gpu_costs.py --shape tiny               # the same code on the CPU, in seconds (a smoke test)
    python bench/async_model.py --gpu-costs costs.json   # the 8-GPU prediction with these costs
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grpo.algorithms.logprobs import gather_logprobs  # noqa: E402
from grpo.algorithms.policy_losses import policy_loss  # noqa: E402
from grpo.runtime import weight_transfer  # noqa: E402

SHAPES = {  # Qwen2.5-7B's config.json (public), and a toy of the same architecture for the CPU smoke test
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, rope_theta=1e6,
                       rms_norm_eps=1e-6, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=4096, tie_word_embeddings=False),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of `fn()` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def build_model(shape: str, device: torch.device, dtype: torch.dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**SHAPES[shape])
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with default_dtype(dtype), device:
        model = Qwen2ForCausalLM(cfg)
    return model


def measure_training(model, device: torch.device, seq_len: int, rows: int, repeats: int) -> dict:
    """Seconds per token of the update (checkpointed forward + backward through our loss) and of a reference
    forward, on `rows` x `seq_len` tokens per micro-batch."""
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (rows, seq_len), device=device, generator=torch.Generator(device).manual_seed(0))
    mask = torch.ones(rows, seq_len - 1, device=device)
    advantages = torch.linspace(-1, 1, rows, device=device)
    tokens = rows * seq_len

    model.config.use_cache = False
    model.gradient_checkpointing_enable()
    model.train()

    def update():
        logits = model(input_ids=ids).logits  # [rows, seq_len, V]
        logprobs = gather_logprobs(logits[:, :-1], ids[:, 1:])  # [rows, seq_len - 1]
        loss, _ = policy_loss(logprobs, None, advantages, mask)
        loss.backward()
        model.zero_grad(set_to_none=False)

    def reference():
        with torch.no_grad():
            logits = model(input_ids=ids).logits
            gather_logprobs(logits[:, :-1], ids[:, 1:])

    t_update = timed(update, device, repeats)
    t_ref = timed(reference, device, repeats)
    model.zero_grad(set_to_none=True)
    model.gradient_checkpointing_disable()
    n = sum(p.numel() for p in model.parameters())
    return {"tokens_per_micro_batch": tokens, "seq_len": seq_len, "update_s": t_update, "reference_s": t_ref,
            "u_update_per_token_s": t_update / tokens, "u_reference_per_token_s": t_ref / tokens,
            "u_per_token_s": (t_update + t_ref) / tokens,
            "update_tflops_6N": 6 * n * tokens / t_update / 1e12, "reference_tflops_2N": 2 * n * tokens / t_ref / 1e12}


def measure_optimizer(numel: int, device: torch.device, repeats: int) -> dict:
    """One fused AdamW step over `numel` fp32 parameters (one ZeRO shard's update), in 8 tensors."""
    pieces = [torch.zeros(numel // 8, device=device, requires_grad=True) for _ in range(8)]
    for p in pieces:
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(pieces, lr=1e-6, fused=device.type == "cuda")
    t = timed(opt.step, device, repeats)
    del opt, pieces
    return {"shard_params": numel, "optimizer_step_s": t}


def line_fit(points: dict[int, float]) -> tuple[float, float]:
    """Least-squares intercept and slope of y = a + c x over {x: y}."""
    xs, ys = list(points), list(points.values())
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    c = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(1e-12, sum((x - mx) ** 2 for x in xs))
    return my - c * mx, c


def measure_decode(model, device: torch.device, batches: list[int], context: int, steps: int) -> dict:
    """Seconds per decode step for each batch size, with a KV cache of `context` prompt tokens; a + c x B fit."""
    from transformers import DynamicCache

    model.config.use_cache = True
    model.eval()
    vocab = model.config.vocab_size
    per_batch, kernels_s = {}, {}
    with torch.no_grad():
        for b in batches:
            ids = torch.randint(0, vocab, (b, context), device=device, generator=torch.Generator(device).manual_seed(b))
            cache = DynamicCache()
            for start in range(0, context, 256):  # prefill in pieces: B x context at once would not fit at B=256
                out = model(input_ids=ids[:, start:start + 256], past_key_values=cache, use_cache=True,
                            logits_to_keep=1)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)  # [b, 1]
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True)  # warm-up step
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            sync(device)
            per_batch[b] = (time.perf_counter() - t0) / steps
            if device.type == "cuda":  # the GPU's own time per step: what a CUDA-graph replay (vLLM) approaches
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(3):
                        out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
                    sync(device)
                kernels_s[b] = sum(e.self_device_time_total for e in prof.key_averages()) / 3 / 1e6
            del cache, out
            if device.type == "cuda":
                torch.cuda.empty_cache()
    a, c = line_fit(per_batch)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    probe_elems = min(weight_bytes // 2, 2**31)  # bf16: up to 4 GB read
    probe = torch.ones(probe_elems, dtype=torch.bfloat16, device=device)
    read_s = timed(lambda: probe.sum(), device, 5)
    del probe
    read_bytes_per_s = probe_elems * 2 / read_s
    fit = {}
    if kernels_s:
        a_kernels, c_kernels = line_fit(kernels_s)
        fit = {"kernel_s_by_batch": kernels_s, "a_kernels_s": a_kernels, "c_kernels_s": c_kernels}
    return {"context": context, "step_s_by_batch": per_batch, "a_s": a, "c_s": c, **fit,
            "weight_bytes": weight_bytes, "read_bytes_per_s": read_bytes_per_s,
            "weight_read_floor_s": weight_bytes / read_bytes_per_s}


def measure_transfer(model, device: torch.device, bucket_mb: int) -> dict:
    """The push's snapshot on the device, a copy of it to pinned host memory, and its broadcast through a
    one-rank bridge group built the way grpo.runtime.inference.split_world builds the NCCL bridge."""
    named = [(n, p.detach()) for n, p in model.named_parameters()]
    t0 = time.perf_counter()
    snap = weight_transfer.snapshot(named, bucket_mb * 2**20, device)
    sync(device)
    snapshot_s = time.perf_counter() - t0
    host = [torch.empty(f.shape, dtype=f.dtype, pin_memory=device.type == "cuda") for f in snap.flats]
    sync(device)
    t0 = time.perf_counter()
    for h, f in zip(host, snap.flats):
        h.copy_(f, non_blocking=True)
    sync(device)
    to_host_s = time.perf_counter() - t0
    del host
    store = torch.distributed.HashStore()
    timeout = timedelta(seconds=120)
    if device.type == "cuda":
        opts = torch.distributed.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        bridge = torch.distributed.ProcessGroupNCCL(store, 0, 1, opts)
        backend = "nccl"
    else:
        bridge = torch.distributed.ProcessGroupGloo(store, 0, 1, timeout)
        backend = "gloo"
    weight_transfer.send(bridge, snap, timeout_s=120)  # warm-up: the communicator is made on first use
    sync(device)
    t0 = time.perf_counter()
    returned = weight_transfer.send(bridge, snap, timeout_s=120)
    sync(device)
    broadcast_s = time.perf_counter() - t0
    received = weight_transfer.unpack(torch.cat(snap.flats), snap.metas) if len(snap.flats) < 4 else None
    intact = received is None or all(torch.equal(r, dict(named)[n]) for n, r in received)
    return {"bytes": snap.nbytes, "buckets": len(snap.flats), "bucket_mb": bucket_mb, "snapshot_s": snapshot_s,
            "to_pinned_host_s": to_host_s, "bridge_backend": backend, "broadcast_one_rank_s": broadcast_s,
            "send_returned_s": returned, "intact": intact}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None, help="default: qwen2.5-7b on a GPU, tiny on CPU")
    ap.add_argument("--seq-len", type=int, default=None, help="training row length (default 4096; tiny 256)")
    ap.add_argument("--rows", type=int, default=2, help="rows per training micro-batch")
    ap.add_argument("--shards", type=int, default=6, help="training GPUs the optimizer state is split over")
    ap.add_argument("--batches", default="1,16,64,128,256", help="decode batch sizes")
    ap.add_argument("--context", type=int, default=512, help="KV cache length during the decode steps")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the figures here as JSON")
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shape = args.shape or ("qwen2.5-7b" if device.type == "cuda" else "tiny")
    seq_len = args.seq_len or (4096 if shape != "tiny" else 256)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    result: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "shape": shape, "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__}

    def save() -> None:
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1))

    model = build_model(shape, device, dtype)
    n = sum(p.numel() for p in model.parameters())
    result["params"] = n
    print(f"{result['device']}: {shape}, {n / 1e9:.2f} B parameters in {result['dtype']}", flush=True)
    for name, fn in (("training", lambda: measure_training(model, device, seq_len, args.rows, args.repeats)),
                     ("decode", lambda: measure_decode(model, device, [int(b) for b in args.batches.split(",")],
                                                       args.context, steps=16)),
                     ("transfer", lambda: measure_transfer(model, device, bucket_mb=256))):
        t0 = time.perf_counter()
        try:
            result[name] = fn()
        except Exception as exc:  # one part failing must not lose the others' figures
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"{name} ({time.perf_counter() - t0:.0f} s): {json.dumps(result[name])}", flush=True)
        save()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    try:
        result["optimizer"] = measure_optimizer(n // args.shards, device, args.repeats)
    except Exception as exc:
        result["optimizer"] = {"error": f"{type(exc).__name__}: {exc}"}
    print(f"optimizer: {json.dumps(result['optimizer'])}", flush=True)
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    save()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
