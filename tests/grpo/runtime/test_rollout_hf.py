"""The transformers `generate` rollout backend: same interface as vLLM's, seeded, and its sampler
logprobs equal the trainer's temperature-scaled logprobs of the same tokens."""
import torch
from transformers import AutoTokenizer

from grpo.config import RolloutConfig
from grpo.algorithms.logprobs import gather_logprobs
from grpo.data.prompt_stream import request_seed
from grpo.runtime.rollout import HFRollout, SamplingSpec


def test_hf_rollout_groups_seeds_and_logprobs(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rollout = HFRollout(str(tiny_model_dir), RolloutConfig(backend="hf"), tokenizer=tok)
    prompts = [tok.apply_chat_template([{"role": "user", "content": f"What is {i} + 1?"}], tokenize=False,
                                       add_generation_prompt=True) for i in range(2)]
    spec = SamplingSpec(n=3, temperature=0.7, max_tokens=12)
    seeds = [request_seed(0, i) for i in range(2)]
    groups = rollout.generate(prompts, spec, seeds)
    assert len(groups) == 2 and all(len(g.completions) == 3 for g in groups)
    again = rollout.generate(prompts, spec, seeds)
    assert [c.token_ids for c in groups[0].completions] == [c.token_ids for c in again[0].completions]

    for group in groups:
        for c in group.completions:
            assert len(c.logprobs) == len(c.token_ids) > 0
            assert c.truncated == (tok.eos_token_id not in c.token_ids)
            ids = torch.tensor([group.prompt_ids + c.token_ids])
            with torch.no_grad():
                logits = rollout.model(ids).logits[:, len(group.prompt_ids) - 1:-1]
            trainer = gather_logprobs(logits, ids[:, len(group.prompt_ids):], temperature=0.7)[0]
            assert torch.allclose(trainer, torch.tensor(c.logprobs), atol=1e-4)


def test_hf_rollout_weight_push_changes_outputs(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rollout = HFRollout(str(tiny_model_dir), RolloutConfig(backend="hf"), tokenizer=tok)
    prompt_ids = tok("What is 2 + 2?")["input_ids"]
    before = rollout.token_logprobs(prompt_ids, prompt_ids[:3])
    weights = {k: v * 1.5 for k, v in rollout.model.state_dict().items()}
    rollout.push_weights(weights.items())
    after = rollout.token_logprobs(prompt_ids, prompt_ids[:3])
    assert max(abs(a - b) for a, b in zip(before, after)) > 1e-3
