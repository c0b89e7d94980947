"""Shared-prompt forward passes vs padded rows: time of one forward + backward of a GRPO micro-batch.

    python bench/shared_prompt.py                    # tiny and small presets, a few prompt/answer shapes
    python bench/shared_prompt.py --presets small --repeats 7

For each shape (prompt length P, completion length C, group size G, groups per micro-batch) the same
random token ids go through the model as right-padded rows (one per completion) and as shared-prompt
rows (grpo.algorithms.packing: each prompt once, its completions after it, tree attention mask), with the cost model
that decides which completions share a prompt and without it (every completion of a group in one row),
and the policy loss's backward runs. Ratios above 1 mean faster than padded rows. Completion lengths vary +-25% around C. Prints the median time of each, the token
slots of each layout (rows x width), and the ratio. The model is a randomly initialised preset of the
embedded tiny architecture (built locally); threads: one, unless --threads says otherwise.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from grpo.stages.grpo import Sample, micro_batch_tensors, sequence_logprobs
from grpo.algorithms.policy_losses import policy_loss
from grpo.algorithms.packing import PromptSharing
from grpo.runtime.attention import attention_cost_ratio
from grpo.runtime.tiny_model import TINY_PRESETS, build_preset

SHAPES = [  # (prompt tokens, mean completion tokens, group size, groups per micro-batch)
    (20, 28, 8, 8),     # the embedded arithmetic task
    (200, 60, 8, 2),    # long prompt, short answers (few-shot math)
    (100, 400, 8, 1),   # short prompt, long answers (reasoning)
]


def samples_for(P: int, C: int, G: int, groups: int, gen: torch.Generator) -> list[Sample]:
    out = []
    for _ in range(groups):
        prompt = torch.randint(5, 250, (P,), generator=gen).tolist()
        for j in range(G):
            n = max(1, int(C * (0.75 + 0.5 * torch.rand((), generator=gen).item())))
            out.append(Sample(prompt, torch.randint(5, 250, (n,), generator=gen).tolist(), [-1.0] * n, False, 0.0,
                              advantage=float(j - G / 2)))
    return out


def time_update(model, samples: list[Sample], sharing: PromptSharing | None, repeats: int) -> tuple[float, int]:
    forward = (lambda i, att, pos=None: model(input_ids=i, attention_mask=att, position_ids=pos,
                                              use_cache=False).logits)
    n_tokens = float(sum(len(s.completion_ids) for s in samples))
    times = []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        t = micro_batch_tensors(samples, pad_id=0, sharing=sharing)
        logps, _ = sequence_logprobs(forward, t, 1.0)
        loss, _ = policy_loss(logps, None, t["advantages"], t["mask"], aggregation="token_mean",
                              batch_num_tokens=n_tokens, sampler_logprobs=t["sampler_logprobs"])
        loss.backward()
        times.append(time.perf_counter() - t0)
    slots = t["packed"].input_ids.numel() if "packed" in t else t["input_ids"].numel()
    return statistics.median(times[1:] if len(times) > 2 else times), slots


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=sorted(TINY_PRESETS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--row-tokens", type=int, default=4096, help="grpo.shared_row_tokens")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}, shared_row_tokens {args.row_tokens}")
    print("| model | P | C | G x groups | padded: slots, s | shared (cost model): slots, s | vs padded "
          "| shared (rho = 0, all of a group in one row): slots, s | vs padded |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            path = build_preset(Path(tmp) / preset, preset, max_position_embeddings=2048)
            model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").float()
            n_params = sum(p.numel() for p in model.parameters()) / 1e6
            for P, C, G, groups in SHAPES:
                samples = samples_for(P, C, G, groups, torch.Generator().manual_seed(0))
                rho = attention_cost_ratio(model)
                t_pad, s_pad = time_update(model, samples, None, args.repeats)
                t_sh, s_sh = time_update(model, samples, PromptSharing(args.row_tokens, rho), args.repeats)
                t_all, s_all = time_update(model, samples, PromptSharing(args.row_tokens, 0.0), args.repeats)
                print(f"| {preset} ({n_params:.2f}M, rho {rho:.2g}) | {P} | {C} | {G} x {groups} | {s_pad:,}, "
                      f"{t_pad:.3f} | {s_sh:,}, {t_sh:.3f} | {t_pad / t_sh:.2f}x | {s_all:,}, {t_all:.3f} | "
                      f"{t_pad / t_all:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
