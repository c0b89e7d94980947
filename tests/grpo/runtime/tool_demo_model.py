"""A tiny model taught, in a few seconds, to answer with tool calls: the tool-rollout tests need a policy that really
writes ```python blocks and the ```output marker (an untrained model never does)."""
from __future__ import annotations

from pathlib import Path

import torch

PROMPT = "What is 6 * 7?"
# Two calls: the second uses a name the first defined (the session), then the boxed answer.
DEMO = ("```python\nx = 6 * 7\n```\n```output\n\n```\n"
        "```python\nprint(x)\n```\n```output\n42\n```\n\\boxed{42}")


def chat_prompt(tokenizer, question: str = PROMPT) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)


def teach_tool_calls(model_dir: str | Path, out_dir: str | Path, steps: int = 150) -> Path:
    """Overfit `model_dir` on DEMO (loss on the demonstration, tool outputs included: it only has to write them
    here) and save the result to `out_dir`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prompt = tok(chat_prompt(tok), add_special_tokens=False)["input_ids"]
    answer = tok(DEMO + tok.eos_token, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + answer])
    labels = ids.clone()
    labels[0, : len(prompt)] = -100
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ~7 ms a step on one thread; two threads on a busy 2-core machine were 100x slower
    try:
        for _ in range(steps):
            loss = model(input_ids=ids, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir
