"""The embedded tiny model: tokenizer, chat template, saved layout, idempotent build, transformers/vLLM parity."""

from __future__ import annotations

import json

import pytest
import torch

from grpo.runtime.tiny_model import (
    ASSISTANT_TOKEN,
    EOS_TOKEN,
    HEAD_DIM,
    TINY_PRESETS,
    USER_TOKEN,
    build_preset,
    build_tiny_model,
    read_build_info,
)

PROMPTS = ["What is 347 - 58?", "What is 12 + 7?", "What is 47 * 8?", "hello, world"]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def chat_ids(tokenizer, content: str) -> list[int]:
    return list(tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                              add_generation_prompt=True, return_dict=True)["input_ids"])


def test_directory_has_the_usual_hugging_face_files(tiny_model_dir):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json"):
        assert (tiny_model_dir / name).is_file(), name
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["head_dim"] == HEAD_DIM == config["hidden_size"] // config["num_attention_heads"]
    assert config["tie_word_embeddings"] is True
    generation = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == config["eos_token_id"]


@pytest.mark.parametrize("text", ["What is 347 - 58?", "a  b\n\tc ,?", "\\boxed{-12}", "héllo 中文 ✓"])
def test_tokenizer_is_character_level_and_round_trips(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    if text.isascii():
        assert len(ids) == len(text)  # one token per character, spaces included


def test_digits_are_separate_tokens(tokenizer):
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("12345+678", add_special_tokens=False)["input_ids"])
    assert pieces == list("12345+678")


def test_chat_template_for_generation(tokenizer):
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is 1 + 2?"}],
                                         add_generation_prompt=True, tokenize=False)
    assert text == f"{USER_TOKEN}What is 1 + 2?{ASSISTANT_TOKEN}"
    ids = chat_ids(tokenizer, "What is 1 + 2?")
    assert ids[0] == tokenizer.convert_tokens_to_ids(USER_TOKEN)
    assert ids[-1] == tokenizer.convert_tokens_to_ids(ASSISTANT_TOKEN)
    assert len(ids) == len("What is 1 + 2?") + 2


def test_assistant_turn_ends_with_eos_and_is_masked(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"},
                {"role": "assistant", "content": "\\boxed{2}"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text.endswith(f"{ASSISTANT_TOKEN}\\boxed{{2}}{EOS_TOKEN}")
    encoded = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m]
    assert tokenizer.decode(masked) == f"\\boxed{{2}}{EOS_TOKEN}"
    assert masked[-1] == tokenizer.eos_token_id


def test_unknown_role_is_an_error(tokenizer):
    with pytest.raises(Exception, match="unknown chat role: robot"):
        tokenizer.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)


# The chat template as it was before it rendered tools (BUILD_FORMAT_VERSION 1 models were built with it).
TEMPLATE_BEFORE_TOOLS = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}<|system|>{{ message['content'] }}"
    "{%- elif message['role'] == 'user' -%}<|user|>{{ message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}<|assistant|>"
    "{%- generation -%}{{ message['content'] }}<|eos|>{%- endgeneration -%}"
    "{%- else -%}{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)
CONVERSATIONS = [
    [{"role": "user", "content": "What is 347 - 58?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " a\n b "}],
    [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "\\boxed{2}"},
     {"role": "user", "content": "and 2+2?"}, {"role": "assistant", "content": "\n4 "}],
    [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "system", "content": "late"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_without_tools_the_template_renders_as_before_tools_existed(tokenizer, messages, generation_prompt):
    new = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    old = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                        chat_template=TEMPLATE_BEFORE_TOOLS)
    assert new == old
    masks = [tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True,
                                           chat_template=t)["assistant_masks"] for t in (None, TEMPLATE_BEFORE_TOOLS)]
    assert masks[0] == masks[1]


def test_the_template_renders_tools_calls_and_tool_messages(tokenizer):
    tools = [{"type": "function", "function": {"name": "python", "parameters": {
        "type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}},
        {"name": "calc", "parameters": {"properties": {"a": {"type": "integer"}, "b": {}}}}]  # bare, untyped
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "function": {"name": "python", "arguments": {"code": "print(1)"}}},
                    {"function": {"name": "calc", "arguments": '{"a": 1}'}}]},
                {"role": "tool", "content": "1"}, {"role": "tool", "content": "2"},
                {"role": "assistant", "content": "\\boxed{1}"}]
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    assert text == ("<|system|>Be brief.\ntools: python(code: string); calc(a: integer, b)<|user|>Q<|assistant|>"
                    '<tool_call>\n{"name": "python", "arguments": {"code": "print(1)"}}\n</tool_call>'
                    '<tool_call>\n{"name": "calc", "arguments": {"a": 1}}\n</tool_call><|eos|>'
                    "<|user|><tool_response>\n1\n</tool_response><tool_response>\n2\n</tool_response>"
                    "<|assistant|>\\boxed{1}<|eos|>")
    no_system = tokenizer.apply_chat_template(messages[1:2], tools=tools[:1], tokenize=False, add_generation_prompt=True)
    assert no_system == "<|system|>tools: python(code: string)<|user|>Q<|assistant|>"
    # <tool_call> is plain text to this tokenizer: one token per character, as in demonstrations and rollouts
    assert len(tokenizer("<tool_call>", add_special_tokens=False)["input_ids"]) == len("<tool_call>")


def test_a_model_built_before_the_template_changed_gets_the_new_one_and_keeps_its_weights(tmp_path):
    from grpo.runtime.tiny_model import CHAT_TEMPLATE

    out = build_tiny_model(tmp_path / "m", **TINY_PRESETS["micro"])
    (out / "chat_template.jinja").write_text(TEMPLATE_BEFORE_TOOLS)
    weights = out / "model.safetensors"
    stamp, data = weights.stat().st_mtime_ns, weights.read_bytes()
    assert build_tiny_model(out, **TINY_PRESETS["micro"]) == out
    assert (out / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    assert weights.stat().st_mtime_ns == stamp and weights.read_bytes() == data
    assert not [p for p in tmp_path.iterdir() if p.name != "m"], "no staging directory left behind"


def test_special_tokens(tokenizer, hf_model):
    assert tokenizer.eos_token == EOS_TOKEN and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert hf_model.config.eos_token_id == tokenizer.eos_token_id
    assert hf_model.config.vocab_size == len(tokenizer)
    assert tokenizer.decode(chat_ids(tokenizer, "x"), skip_special_tokens=True) == "x"


def test_build_is_idempotent_and_rebuilds_on_new_arguments(tmp_path):
    out = tmp_path / "m"
    build_tiny_model(out, **TINY_PRESETS["micro"])
    weights = out / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert build_tiny_model(out, **TINY_PRESETS["micro"]) == out
    assert weights.stat().st_mtime_ns == stamp, "same arguments must reuse the directory"
    build_tiny_model(out, **{**TINY_PRESETS["micro"], "num_layers": 1})
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    assert read_build_info(out)["build_args"]["num_layers"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name != "m"], "no staging directory left behind"


def test_build_refuses_a_foreign_non_empty_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not made by build_tiny_model"):
        build_tiny_model(tmp_path, **TINY_PRESETS["micro"])
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_weights_are_a_function_of_the_seed_only(tmp_path):
    from safetensors.torch import load_file

    before = torch.random.get_rng_state()
    a = load_file(build_tiny_model(tmp_path / "a", **TINY_PRESETS["micro"], seed=3) / "model.safetensors")
    b = load_file(build_tiny_model(tmp_path / "b", **TINY_PRESETS["micro"], seed=3) / "model.safetensors")
    c = load_file(build_tiny_model(tmp_path / "c", **TINY_PRESETS["micro"], seed=4) / "model.safetensors")
    assert torch.equal(torch.random.get_rng_state(), before), "building must not move the global RNG"
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_presets_grow_and_are_valid(tmp_path):
    sizes = []
    for name in ("micro", "tiny", "small"):
        preset = TINY_PRESETS[name]
        assert preset["hidden_size"] % HEAD_DIM == 0
        info = read_build_info(build_preset(tmp_path / name, name))
        sizes.append(info["num_parameters"])
    assert sizes == sorted(sizes) and len(set(sizes)) == 3
    assert 2e5 < sizes[1] < 2e6, "the default preset must stay CPU-trainable in minutes"
    with pytest.raises(ValueError, match="unknown tiny model preset"):
        build_preset(tmp_path / "x", "huge")


@pytest.mark.parametrize("bad, field", [({"hidden_size": 96}, "hidden_size"), ({"num_layers": 0}, "num_layers"),
                                        ({"initializer_range": 0.0}, "initializer_range")])
def test_bad_sizes_are_rejected_by_name(tmp_path, bad, field):
    with pytest.raises(ValueError, match=field):
        build_tiny_model(tmp_path / "m", **{**TINY_PRESETS["micro"], **bad})


def hf_greedy(model, tokenizer, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
    new = out[0, len(prompt_ids):].tolist()
    # transformers pads finished sequences; vLLM stops at (and includes) EOS.
    return new[: new.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in new else new


def test_fixture_model_gives_varied_greedy_outputs(hf_model, tokenizer):
    # Guards the parity test below against passing trivially on a model that repeats one token.
    outputs = [hf_greedy(hf_model, tokenizer, chat_ids(tokenizer, p), 16) for p in PROMPTS]
    assert len({tuple(o) for o in outputs}) == len(PROMPTS)
    assert all(len(set(o)) > 3 for o in outputs)


@pytest.mark.slow
def test_vllm_loads_the_model_and_matches_transformers_greedy(vllm_llm, hf_model, tokenizer):
    from vllm import SamplingParams

    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                           tokenize=False) for p in PROMPTS]
    params = SamplingParams(temperature=0.0, max_tokens=16)
    outputs = vllm_llm.generate(texts, params, use_tqdm=False)
    for prompt, output in zip(PROMPTS, outputs):
        expected_prompt = chat_ids(tokenizer, prompt)
        # vLLM's own copy of the tokenizer must encode exactly as transformers does.
        assert list(output.prompt_token_ids) == expected_prompt
        got = list(output.outputs[0].token_ids)
        assert got == hf_greedy(hf_model, tokenizer, expected_prompt, 16), prompt
        # Random weights emit arbitrary bytes; vLLM holds back a trailing incomplete UTF-8 sequence, which
        # transformers decodes as U+FFFD.
        expected_text = tokenizer.decode(got, skip_special_tokens=True)
        assert output.outputs[0].text.rstrip("\ufffd") == expected_text.rstrip("\ufffd")


@pytest.mark.slow
def test_vllm_chat_applies_the_chat_template(vllm_llm, tokenizer):
    from vllm import SamplingParams

    messages = [{"role": "user", "content": PROMPTS[0]}]
    output = vllm_llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=4), use_tqdm=False)[0]
    assert list(output.prompt_token_ids) == chat_ids(tokenizer, PROMPTS[0])
