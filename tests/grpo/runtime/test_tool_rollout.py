"""Multi-turn tool episodes end to end: a tiny model taught to call the python tool (tool_demo_model), real
sampling (transformers here, vLLM in the slow test), the real sandbox. What the trainer sees must be what was
sampled: token ids, the loss mask (model tokens in, tool answers out), sampler logprobs on model tokens equal to
the trainer's own (padded rows and shared-prompt packing alike), and the turn and token limits."""
import gc
import re
import sys
from pathlib import Path

import pytest
import torch

from grpo.config import RolloutConfig, ToolsConfig
from grpo.data.tool_format import CALL_END, render_response, split_segments
from grpo.runtime.rollout import HFRollout, SamplingSpec
from grpo.runtime.tool_rollout import ToolRollout, model_turns, tool_metrics

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def demo():
    sys.path.insert(0, str(HERE))
    try:
        import tool_demo_model
    finally:
        sys.path.remove(str(HERE))
    return tool_demo_model


@pytest.fixture(scope="module")
def taught_dir(tiny_model_dir, tmp_path_factory, demo):
    return demo.teach_tool_calls(tiny_model_dir, tmp_path_factory.mktemp("taught") / "model")


@pytest.fixture(scope="module")
def tokenizer(taught_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(taught_dir)


@pytest.fixture(scope="module")
def hf(taught_dir, tokenizer):
    return HFRollout(str(taught_dir), RolloutConfig(backend="hf"), tokenizer=tokenizer)


def episodes(engine, tokenizer, demo, n=4, max_tokens=96, **tools):
    rollout = ToolRollout(engine, tokenizer, ToolsConfig(**tools))
    try:
        [group] = rollout.generate([demo.chat_prompt(tokenizer)], SamplingSpec(n=n, temperature=1.0,
                                                                              max_tokens=max_tokens), [7])
    finally:
        rollout.close()
    return group


def trainer_logprobs(model, prompt_ids, ids):
    """log p(token | everything before it) at temperature 1, for the completion tokens [T]."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + ids])).logits[0, len(prompt_ids) - 1:-1]
    return torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(ids)[:, None]).squeeze(-1)


def check_episode_lines_up(group, completion, tokenizer):
    """Token ids, mask, logprobs and tool records of one episode agree with each other and with the tool format."""
    ids, mask, lps = completion.token_ids, completion.loss_mask, completion.logprobs
    assert len(ids) == len(mask) == len(lps)
    # every tool segment is exactly the tokenized answer of one call; everything else was sampled
    tool_runs, run = [], []
    for t, m in zip(ids, mask):
        if not m:
            run.append(t)
        elif run:
            tool_runs.append(run)
            run = []
    if run:
        tool_runs.append(run)
    assert len(tool_runs) == len(completion.tool_calls)
    for run in tool_runs:
        text = tokenizer.decode(run)
        assert text.startswith("\n") and text.endswith("```\n")
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == run
    assert all(lp == 0.0 for lp, m in zip(lps, mask) if not m)
    assert all(lp < 0.0 or lp == pytest.approx(0.0, abs=1e-6) for lp, m in zip(lps, mask) if m)
    # the transcript's own segmentation (as SFT reads demonstrations) finds the same tool segments
    segs = [s for s, by_model in split_segments(tokenizer.decode(ids)) if not by_model]
    assert segs == [tokenizer.decode(r) for r in tool_runs]


def test_an_episode_calls_python_twice_with_a_session_and_everything_lines_up(hf, tokenizer, demo):
    group = episodes(hf, tokenizer, demo)
    model = hf.model
    for c in group.completions:
        check_episode_lines_up(group, c, tokenizer)
        m = torch.tensor(c.loss_mask)
        diff = (trainer_logprobs(model, group.prompt_ids, c.token_ids) - torch.tensor(c.logprobs))[m].abs().max()
        assert diff < 1e-4
    # the taught model's episode: two calls, the second printing a name the first defined (session replay)
    best = [c for c in group.completions if "\\boxed{42}" in c.text]
    assert best, [c.text for c in group.completions]
    c = best[0]
    assert [call["status"] for call in c.tool_calls] == ["ok", "ok"]
    assert render_response("42") in c.text and model_turns(c.loss_mask) == 3 and not c.truncated
    stats = tool_metrics(group.completions)
    assert stats["tools/episodes_with_call"] > 0 and stats["tools/error_rate"] == 0.0


def test_the_trainer_masks_tool_tokens_on_padded_rows_and_shared_prompts_alike(hf, tokenizer, demo):
    from grpo.algorithms.packing import PromptSharing
    from grpo.stages.grpo import Sample, micro_batch_tensors, sequence_logprobs

    group = episodes(hf, tokenizer, demo)
    samples = [Sample(group.prompt_ids, c.token_ids, c.logprobs, c.truncated, 1.0, loss_mask=c.loss_mask)
               for c in group.completions]
    model = hf.model

    def forward(ids, att, pos=None):
        return model(input_ids=ids, attention_mask=att, position_ids=pos, use_cache=False).logits

    results = []
    for sharing in (None, PromptSharing(4096, 0.0)):
        t = micro_batch_tensors(samples, tokenizer.pad_token_id, sharing)
        assert ("packed" in t) == (sharing is not None)
        with torch.no_grad():
            lp = sequence_logprobs(forward, t, 1.0)[0]  # [b, S-1]
        for i, (s, c) in enumerate(zip(samples, group.completions)):
            start = len(s.prompt_ids) - 1
            assert t["mask"][i, start:start + len(c.token_ids)].tolist() == c.loss_mask
            assert int(t["mask"][i].sum()) == sum(c.loss_mask)
        assert (lp - t["sampler_logprobs"])[t["mask"]].abs().max() < 1e-4
        results.append(lp[t["mask"]])
    assert torch.allclose(results[0], results[1], atol=1e-5)


def test_max_turns_leaves_a_further_call_unanswered(hf, tokenizer, demo):
    group = episodes(hf, tokenizer, demo, max_turns=1)
    for c in group.completions:
        assert len(c.tool_calls) <= 1
        check_episode_lines_up(group, c, tokenizer)
    over = [c for c in group.completions if c.text.count(CALL_END) == 2]
    assert over, [c.text for c in group.completions]
    for c in over:  # the second call is the episode's last text: never answered
        assert c.text.rstrip().endswith(CALL_END) and not c.truncated and c.loss_mask[-1]


@pytest.mark.parametrize("budget", [30, 36, 75])
def test_the_token_budget_holds_and_cuts_tool_answers(hf, tokenizer, demo, budget):
    """The taught episode: 33 model tokens, a 6-token answer, 32 model tokens, an 8-token answer, 11 model tokens.
    30 ends mid-turn; 36 and 75 end inside a tool answer, which is cut to fit."""
    group = episodes(hf, tokenizer, demo, max_tokens=budget)
    for c in group.completions:
        assert len(c.token_ids) <= budget
        assert len(c.token_ids) == len(c.loss_mask) == len(c.logprobs)
        if len(c.token_ids) == budget:
            assert c.truncated
    if budget > 30:
        cut = [c for c in group.completions if not c.loss_mask[-1]]
        assert cut and all(c.truncated and len(c.token_ids) == budget for c in cut)


def test_sft_demonstrations_mask_tool_outputs_like_rollouts_do(tokenizer, demo):
    from datasets import Dataset

    from grpo.config import RunConfig
    from grpo.stages.sft import build_row, tokenize_demos

    cfg = RunConfig()
    cfg.tools.enabled = True
    ds = Dataset.from_dict({"prompt": [demo.PROMPT, "What is 1 + 1?"], "solution": [demo.DEMO, "\\boxed{2}"]})
    demos, cut = tokenize_demos(ds, cfg, tokenizer, 512)
    assert cut == 0
    d = demos[0]
    masked = [t for t, m in zip(d.answer_ids, d.answer_mask) if not m]
    assert tokenizer.decode(masked) == render_response("") + render_response("42")
    assert tokenizer.decode(d.answer_ids) == demo.DEMO + tokenizer.eos_token
    assert demos[1].answer_mask == [True] * len(demos[1].answer_ids)
    row = build_row([d])
    assert row.loss_mask == [False] * len(d.prompt_ids) + d.answer_mask
    cfg.tools.enabled = False
    plain, _ = tokenize_demos(ds, cfg, tokenizer, 512)
    assert plain[0].answer_ids == d.answer_ids and plain[0].answer_mask is None  # char tokenizer: same ids


@pytest.mark.slow
def test_vllm_episodes_continue_from_token_ids_and_match_the_trainer(vllm_llm, taught_dir, tiny_model_dir, tokenizer,
                                                                      hf, demo):
    """The session's vLLM engine with the taught weights pushed in (the originals pushed back after)."""
    from grpo.runtime.models import load_weights
    from grpo.runtime.rollout import VLLMRollout

    engine = VLLMRollout.__new__(VLLMRollout)  # the shared engine, without building another
    engine.llm, engine.tokenizer, engine._lora_request = vllm_llm, vllm_llm.get_tokenizer(), None
    engine._gen_threads = engine._train_threads = torch.get_num_threads()
    engine.push_weights(load_weights(str(taught_dir)))
    try:
        group = episodes(engine, tokenizer, demo, n=8, max_turns=2)
        calls = 0
        for c in group.completions:
            check_episode_lines_up(group, c, tokenizer)
            m = torch.tensor(c.loss_mask)
            diff = (trainer_logprobs(hf.model, group.prompt_ids, c.token_ids) - torch.tensor(c.logprobs))[m]
            assert diff.abs().max() < 1e-4
            assert len(c.tool_calls) <= 2 and len(c.token_ids) <= 96
            calls += len(c.tool_calls)
        assert calls > 0 and any("\\boxed{42}" in c.text for c in group.completions)
        budget = episodes(engine, tokenizer, demo, n=4, max_tokens=40)
        assert all(len(c.token_ids) <= 40 for c in budget.completions)
    finally:
        engine.push_weights(load_weights(str(tiny_model_dir)))
        gc.collect()


# ---------------------------------------------------------------------------------------------
# The tool_call format: JSON calls, answers rendered by the chat template


@pytest.fixture(scope="module")
def json_taught_dir(tiny_model_dir, tmp_path_factory, demo):
    return demo.teach_tool_calls(tiny_model_dir, tmp_path_factory.mktemp("json_taught") / "model", steps=200, json=True)


@pytest.fixture(scope="module")
def json_hf(json_taught_dir, tokenizer):
    return HFRollout(str(json_taught_dir), RolloutConfig(backend="hf"), tokenizer=tokenizer)


def json_episodes(engine, tokenizer, demo, n=4, max_tokens=256, **tools):
    cfg = ToolsConfig(format="tool_call", **tools)
    fmt = demo.json_format(tokenizer)
    rollout = ToolRollout(engine, tokenizer, cfg, fmt)
    try:
        [group] = rollout.generate([demo.json_prompt(fmt)], SamplingSpec(n=n, temperature=1.0, max_tokens=max_tokens),
                                   [11])
    finally:
        rollout.close()
    return group, fmt


TOOL_RESPONSE = re.compile(r"<\|eos\|><\|user\|><tool_response>\n(.*)\n</tool_response><\|assistant\|>", re.DOTALL)


def check_json_episode_lines_up(group, c, tokenizer, fmt):
    """Ids, mask and logprobs agree; every tool segment is what the chat template renders for the turns so far
    (tokenized once); an episode that ended is exactly the conversation the chat template renders."""
    ids, mask, lps = c.token_ids, c.loss_mask, c.logprobs
    assert len(ids) == len(mask) == len(lps)
    assert all(lp == 0.0 for lp, m in zip(lps, mask) if not m)
    segments = []  # (ids, by_model) runs
    for t, m in zip(ids, mask):
        if segments and segments[-1][1] == m:
            segments[-1][0].append(t)
        else:
            segments.append(([t], m))
    assert len([s for s in segments if not s[1]]) == len(c.tool_calls)
    turns, final = [], None
    for seg, by_model in segments:
        text = tokenizer.decode(seg, skip_special_tokens=False)
        if by_model:
            assert segments[0][1], "an episode starts with the model's tokens"
            final = text
            if text.endswith("</tool_call>"):
                turns.append((text, []))
            continue
        match = TOOL_RESPONSE.fullmatch(text)
        if match is None:  # cut by the token budget
            assert c.truncated and seg is segments[-1][0]
            continue
        turns[-1][1].append(match.group(1))
        assert text == fmt.response(turns) and tokenizer(text, add_special_tokens=False)["input_ids"] == seg
        final = None
    if final is not None and final.endswith(tokenizer.eos_token):
        messages = [{"role": "user", "content": demo_question(tokenizer, group.prompt)}]
        for text, outputs in turns:
            messages += [{"role": "assistant", "content": text}] + [{"role": "tool", "content": o} for o in outputs]
        messages.append({"role": "assistant", "content": final[: -len(tokenizer.eos_token)]})
        assert tokenizer.decode(group.prompt_ids + ids, skip_special_tokens=False) == fmt.render(messages, False)


def demo_question(tokenizer, prompt):
    return prompt.split("<|user|>")[1].split("<|assistant|>")[0]


def test_a_tool_call_episode_lines_up_with_the_chat_template_and_the_trainer(json_hf, tokenizer, demo):
    group, fmt = json_episodes(json_hf, tokenizer, demo)
    assert "tools: python(code: string)" in group.prompt
    for c in group.completions:
        check_json_episode_lines_up(group, c, tokenizer, fmt)
        m = torch.tensor(c.loss_mask)
        diff = (trainer_logprobs(json_hf.model, group.prompt_ids, c.token_ids) - torch.tensor(c.logprobs))[m].abs().max()
        assert diff < 1e-4
    # the taught episode: two JSON calls, the second printing a name the first defined (session replay)
    best = [c for c in group.completions if "\\boxed{42}" in c.text]
    assert best, [c.text for c in group.completions]
    assert [call["status"] for call in best[0].tool_calls] == ["ok", "ok"] and model_turns(best[0].loss_mask) == 3
    assert tool_metrics(group.completions)["tools/episodes_with_call"] == 1.0
    for c in group.completions:  # a sampled call that is not valid (temperature 1) got its error as the answer
        errors = sum(call["status"] in ("bad_call", "unknown_tool", "error") for call in c.tool_calls)
        assert c.text.count("Error") >= errors


def test_a_tool_call_beyond_max_turns_is_left_unanswered(json_hf, tokenizer, demo):
    group, fmt = json_episodes(json_hf, tokenizer, demo, max_turns=1)
    over = [c for c in group.completions if c.text.count("</tool_call>") == 2]
    assert over, [c.text for c in group.completions]
    for c in group.completions:
        assert len(c.tool_calls) <= 1
        check_json_episode_lines_up(group, c, tokenizer, fmt)
    for c in over:
        assert c.text.endswith("</tool_call>") and not c.truncated and c.loss_mask[-1]


@pytest.mark.slow
def test_vllm_tool_call_episodes_continue_from_token_ids_and_match_the_trainer(vllm_llm, json_taught_dir, tiny_model_dir,
                                                                               tokenizer, json_hf, demo):
    """The session's vLLM engine with the JSON-taught weights pushed in (the originals pushed back after)."""
    from grpo.runtime.models import load_weights
    from grpo.runtime.rollout import VLLMRollout

    engine = VLLMRollout.__new__(VLLMRollout)  # the shared engine, without building another
    engine.llm, engine.tokenizer, engine._lora_request = vllm_llm, vllm_llm.get_tokenizer(), None
    engine._gen_threads = engine._train_threads = torch.get_num_threads()
    engine.push_weights(load_weights(str(json_taught_dir)))
    try:
        group, fmt = json_episodes(engine, tokenizer, demo, n=8, max_turns=2)
        calls = 0
        for c in group.completions:
            check_json_episode_lines_up(group, c, tokenizer, fmt)
            m = torch.tensor(c.loss_mask)
            diff = (trainer_logprobs(json_hf.model, group.prompt_ids, c.token_ids) - torch.tensor(c.logprobs))[m]
            assert diff.abs().max() < 1e-4
            assert len(c.tool_calls) <= 2 and len(c.token_ids) <= 256
            calls += len(c.tool_calls)
        done = [c for c in group.completions if "\\boxed{42}" in c.text and len(c.tool_calls) == 2]
        assert calls > 0 and done, [c.text for c in group.completions]
        assert all(call["status"] == "ok" for call in done[0].tool_calls)
        budget, _ = json_episodes(engine, tokenizer, demo, n=4, max_tokens=90)  # ends inside the first answer
        for c in budget.completions:
            assert len(c.token_ids) <= 90
            check_json_episode_lines_up(budget, c, tokenizer, fmt)
        assert any(c.truncated and not c.loss_mask[-1] for c in budget.completions)
    finally:
        engine.push_weights(load_weights(str(tiny_model_dir)))
        gc.collect()
