"""A tiny model taught, in a few seconds, to answer with tool calls: the tool-rollout tests need a policy that really
writes ```python blocks and the ```output marker, or JSON calls in <tool_call> tags (an untrained model never
does)."""
from __future__ import annotations

from pathlib import Path

import torch

PROMPT = "What is 6 * 7?"
# Two calls: the second uses a name the first defined (the session), then the boxed answer.
DEMO = ("```python\nx = 6 * 7\n```\n```output\n\n```\n"
        "```python\nprint(x)\n```\n```output\n42\n```\n\\boxed{42}")


# The same episode in the tool_call format: (model text, tool outputs) per turn, then the boxed answer.
JSON_TURNS = [('<tool_call>\n{"name": "python", "arguments": {"code": "x = 6 * 7"}}\n</tool_call>', [""]),
              ('<tool_call>\n{"name": "python", "arguments": {"code": "print(x)"}}\n</tool_call>', ["42"])]
JSON_FINAL = "\\boxed{42}"


def json_format(tokenizer):
    from grpo.config import ToolsConfig
    from grpo.runtime.tools import make_format

    return make_format(ToolsConfig(format="tool_call"), tokenizer)


def json_prompt(fmt, question: str = PROMPT) -> str:
    return fmt.render([{"role": "user", "content": question}], add_generation_prompt=True)


def json_answer(fmt) -> str:
    """The tool_call episode as a rollout holds it: each call, the answer the format renders for it, the boxed
    answer and the end of the turn."""
    text = "".join(JSON_TURNS[i][0] + fmt.response(JSON_TURNS[: i + 1]) for i in range(len(JSON_TURNS)))
    return text + JSON_FINAL + fmt.tokenizer.eos_token


def chat_prompt(tokenizer, question: str = PROMPT) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)


def teach_tool_calls(model_dir: str | Path, out_dir: str | Path, steps: int = 150, json: bool = False) -> Path:
    """Overfit `model_dir` on DEMO, or with `json` on the tool_call episode (loss on the demonstration, tool outputs
    included: it only has to write them here) and save the result to `out_dir`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if json:
        fmt = json_format(tok)
        prompt = tok(json_prompt(fmt), add_special_tokens=False)["input_ids"]
        answer = tok(json_answer(fmt), add_special_tokens=False)["input_ids"]
    else:
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
