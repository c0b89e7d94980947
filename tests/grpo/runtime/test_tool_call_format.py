"""The tool_call format (JSON calls in <tool_call> tags, answers rendered by the chat template): parsing untrusted
turns into calls or error answers, the answer segment as an exact delta of the rendered conversation, the real
sandbox and worker processes running the calls, and SFT demonstrations cut like rollouts."""
import json
from pathlib import Path

import pytest

from grpo.config import ConfigError, DataConfig, RunConfig, ToolsConfig
from grpo.data.tool_format import (PYTHON_TOOL, ToolCall, find_tool_calls, tool_call_text, tool_response_text)
from grpo.runtime.tiny_model import build_tokenizer
from grpo.runtime.tools import ToolRunner, make_format

HERE = str(Path(__file__).parent)  # tool_plugins lives here
SCHEMAS = {"python": PYTHON_TOOL["function"]["parameters"],
           "add": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a"]}}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def fmt(tokenizer):
    return make_format(ToolsConfig(format="tool_call"), tokenizer, "Be brief.")


def call(name, args):
    return tool_call_text(name, args)


def test_a_valid_call_and_text_after_it():
    turn = "Let me compute.\n" + call("python", {"code": "print(347 * 582)"})
    assert find_tool_calls(turn, SCHEMAS) == [ToolCall("python", "print(347 * 582)", {"code": "print(347 * 582)"})]
    # a rollout's turn ends at </tool_call>; text after the last call (a demonstration's, say) is not a call
    assert find_tool_calls(turn + " so \\boxed{201954}", SCHEMAS) == find_tool_calls(turn, SCHEMAS)
    assert find_tool_calls("no call \\boxed{3}<|eos|>", SCHEMAS) == []
    assert find_tool_calls('<tool_call>\n{"name": "python", "arguments": {"code": "1"}}', SCHEMAS) == []  # unclosed
    # OpenAI-style arguments (a JSON string of the object) and user tools: the arguments as JSON text
    [c] = find_tool_calls('<tool_call>{"name": "add", "arguments": "{\\"a\\": 2, \\"b\\": 3}"}</tool_call>', SCHEMAS)
    assert (c.tool, c.arguments, c.error, json.loads(c.body)) == ("add", {"a": 2, "b": 3}, None, {"a": 2, "b": 3})


def test_two_calls_in_one_turn_are_both_found_in_order():
    turn = call("add", {"a": 1}) + "\n" + call("python", {"code": "print(2)"})
    assert [(c.tool, c.arguments) for c in find_tool_calls(turn, SCHEMAS)] == [("add", {"a": 1}),
                                                                               ("python", {"code": "print(2)"})]


@pytest.mark.parametrize("body, status, message", [
    ('{"name": "python", "arguments": {"code": "print(1)"', "bad_call", "Error: the tool call is not valid JSON"),
    ("print(1)", "bad_call", "Error: the tool call is not valid JSON"),
    ('["python", {"code": "1"}]', "bad_call", 'Error: a tool call is a JSON object {"name": <tool>'),
    ('{"arguments": {"code": "1"}}', "bad_call", 'Error: a tool call is a JSON object'),
    ('{"name": "shell", "arguments": {"cmd": "ls"}}', "unknown_tool", "Error: unknown tool 'shell' (tools: python, add)"),
    ('{"name": "python", "arguments": {}}', "bad_call", "Error: python: missing argument 'code'"),
    ('{"name": "python"}', "bad_call", "Error: python: missing argument 'code'"),
    ('{"name": "python", "arguments": {"code": "1", "timeout": 9}}', "bad_call",
     "Error: python: unexpected argument 'timeout' (arguments: code)"),
    ('{"name": "python", "arguments": {"code": 7}}', "bad_call", "Error: python: argument 'code' must be of type string"),
    ('{"name": "add", "arguments": {"a": true}}', "bad_call", "Error: add: argument 'a' must be of type integer"),
    ('{"name": "add", "arguments": [1, 2]}', "bad_call", 'Error: add: "arguments" must be a JSON object'),
    ("[" * 100_000, "bad_call", "Error: the tool call is not valid JSON"),  # deep nesting: no RecursionError
])
def test_a_bad_call_becomes_an_error_answer_never_an_exception(body, status, message):
    [c] = find_tool_calls(f"<tool_call>\n{body}\n</tool_call>", SCHEMAS)
    assert c.error is not None and c.error[0] == status and c.error[1].startswith(message), c.error
    assert c.arguments is None


def test_a_closing_tag_without_an_opening_one_is_answered_with_an_error():
    [c] = find_tool_calls("prose only </tool_call>", SCHEMAS)
    assert c.error == ("bad_call", "Error: </tool_call> without <tool_call> before it")


def conversation(question, turns, fmt, final=None):
    """The conversation a rollout's episode stands for, as chat messages (the real question and system prompt)."""
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}]
    for text, outputs in turns:
        msgs.append({"role": "assistant", "content": text})
        msgs += [{"role": "tool", "content": o} for o in outputs]
    if final is not None:
        msgs.append({"role": "assistant", "content": final})
    return msgs


def test_the_answer_segment_is_the_exact_delta_of_the_rendered_conversation(tokenizer, fmt):
    question = "What is 6 * 7?"
    prompt = fmt.render(conversation(question, [], fmt), add_generation_prompt=True)
    assert prompt == "<|system|>Be brief.\ntools: python(code: string)<|user|>What is 6 * 7?<|assistant|>"
    turns = [("Step one. " + call("python", {"code": "x = 6 * 7"}), [""]),
             (call("python", {"code": "print(x)"}), ["42", "second answer\nof two lines"])]
    deltas = [fmt.response(turns[:1]), fmt.response(turns)]
    assert deltas[0] == "<|eos|><|user|><tool_response>\n\n</tool_response><|assistant|>"
    assert deltas[1] == ("<|eos|><|user|><tool_response>\n42\n</tool_response><tool_response>\nsecond answer\nof two "
                         "lines\n</tool_response><|assistant|>")  # two calls of a turn: two tool messages, in order
    episode = turns[0][0] + deltas[0] + turns[1][0] + deltas[1] + "\\boxed{42}"
    # the full conversation as the chat template renders it == prompt + model text + tool deltas (+ end of turn)
    rendered = fmt.render(conversation(question, turns, fmt), add_generation_prompt=True)
    assert rendered == prompt + turns[0][0] + deltas[0] + turns[1][0] + deltas[1]
    closed = fmt.render(conversation(question, turns, fmt, final="\\boxed{42}"), add_generation_prompt=False)
    assert closed == prompt + episode + tokenizer.eos_token
    # and so do the token ids, each segment tokenized on its own as a rollout appends them
    enc = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    pieces = [prompt, turns[0][0], deltas[0], turns[1][0], deltas[1], "\\boxed{42}" + tokenizer.eos_token]
    assert sum((enc(p) for p in pieces), []) == enc(closed)


def test_the_delta_does_not_depend_on_the_question_or_on_what_the_model_wrote(fmt):
    """The rollout renders a stand-in question; the delta after a turn is the same for any question and any text
    before the call, special tokens and template syntax included (they are data, never rendered as template)."""
    outputs = ["201954"]
    expected = fmt.response([(call("python", {"code": "print(347 * 582)"}), outputs)])
    for text in ["", "{{ raise_exception('x') }}{% for %}", "<|user|>fake<|eos|>", "a" * 300]:
        assert fmt.response([(text + call("python", {"code": "1"}), outputs)]) == expected
    for question in ["What is 347 * 582?", "{{ x }}", ""]:
        turns = [(call("python", {"code": "print(347 * 582)"}), outputs)]
        full = fmt.render(conversation(question, turns, fmt), add_generation_prompt=True)
        assert full.endswith(turns[0][0] + expected)


@pytest.fixture(scope="module")
def runner():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(HERE)  # spawned tool workers inherit sys.path
        r = ToolRunner(ToolsConfig(format="tool_call", timeout_s=2.0, workers=2,
                                   functions={"add": "tool_plugins:add", "reverse": "tool_plugins:reverse"}))
        yield r
        r.close()


def test_parsed_calls_run_in_the_sandbox_and_user_tools_get_keyword_arguments(runner, tokenizer):
    fmt = make_format(runner.cfg, tokenizer)
    assert [t["function"]["name"] for t in fmt.tools] == ["python", "add", "reverse"]
    assert fmt.tools[1]["function"]["parameters"] == {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a"]}
    turn = (call("python", {"code": "print(347 * 582)"}) + call("add", {"a": 2, "b": 40}) + call("reverse", {"text": "abc"})
            + "<tool_call>{oops</tool_call>" + call("add", {"a": 1, "c": 2}) + call("rm", {}))
    calls = fmt.find_calls(turn)
    results = runner.run(calls, [[]] * len(calls))
    assert [(r.status, r.output) for r in results[:3]] == [("ok", "201954"), ("ok", "42"), ("ok", "cba")]
    assert [(r.status, r.output) for r in results[4:]] == [
        ("bad_call", "Error: add: unexpected argument 'c' (arguments: a, b)"),
        ("unknown_tool", "Error: unknown tool 'rm' (tools: python, add, reverse)")]
    assert results[3].status == "bad_call" and results[3].output.startswith("Error: the tool call is not valid JSON (")


def test_sft_masks_the_rendered_tool_answers_of_tool_call_demonstrations(tokenizer, fmt):
    from datasets import Dataset

    from grpo.data.tasks.tool_arithmetic import HardProblem, tool_solution
    from grpo.stages.sft import build_row, tokenize_demos

    cfg = RunConfig()
    cfg.tools.enabled, cfg.tools.format = True, "tool_call"
    cfg.data = DataConfig(system_prompt="Be brief.")
    problem = HardProblem("product3", (347, 582))
    solution = tool_solution(problem, "tool_call")
    assert solution == (call("python", {"code": "print(347 * 582)"}) + tool_response_text("201954")
                        + "\\boxed{201954}")
    two = (call("python", {"code": "x = 6 * 7"}) + "\n" + tool_response_text("") + "then "
           + call("python", {"code": "print(x)"}) + call("python", {"code": "print(1)"})
           + tool_response_text("42") + tool_response_text("1") + "\\boxed{42}")
    ds = Dataset.from_dict({"prompt": [problem.question(), "What is 6 * 7?", "What is 1 + 1?"],
                            "solution": [solution, two, "\\boxed{2}"]})
    demos, cut = tokenize_demos(ds, cfg, tokenizer, 512)  # the configured format, built from cfg and the tokenizer
    assert cut == 0
    dec = tokenizer.decode
    d = demos[0]
    assert dec(d.prompt_ids) == fmt.render(conversation(problem.question(), [], fmt), add_generation_prompt=True)
    turns = [(call("python", {"code": "print(347 * 582)"}), ["201954"])]
    masked = [t for t, m in zip(d.answer_ids, d.answer_mask) if not m]
    assert dec(masked) == fmt.response(turns) == "<|eos|><|user|><tool_response>\n201954\n</tool_response><|assistant|>"
    model = [t for t, m in zip(d.answer_ids, d.answer_mask) if m]
    assert dec(model) == turns[0][0] + "\\boxed{201954}<|eos|>"
    # prompt + answer is the whole conversation as the chat template renders it
    msgs = conversation(problem.question(), turns, fmt, final="\\boxed{201954}")
    assert dec(d.prompt_ids + d.answer_ids) == fmt.render(msgs, add_generation_prompt=False)
    # two turns, the second with two calls (answered by two tool messages): whitespace between call and answer dropped
    d = demos[1]
    turns = [(call("python", {"code": "x = 6 * 7"}), [""]),
             ("then " + call("python", {"code": "print(x)"}) + call("python", {"code": "print(1)"}), ["42", "1"])]
    runs, run = [], []
    for t, m in zip(d.answer_ids, d.answer_mask):
        if not m:
            run.append(t)
        elif run:
            runs, run = runs + [run], []
    assert [dec(r) for r in runs] == [fmt.response(turns[:1]), fmt.response(turns)]
    assert dec(d.prompt_ids + d.answer_ids) == fmt.render(conversation("What is 6 * 7?", turns, fmt, "\\boxed{42}"),
                                                          add_generation_prompt=False)
    assert demos[2].answer_mask == [True] * len(demos[2].answer_ids)
    row = build_row([demos[0]])
    assert row.loss_mask == [False] * len(demos[0].prompt_ids) + demos[0].answer_mask


def test_a_tokenizer_that_cannot_render_tools_stops_sft_with_the_key(tokenizer):
    from datasets import Dataset

    from grpo.stages.sft import tokenize_demos

    cfg = RunConfig()
    cfg.tools.enabled, cfg.tools.format = True, "tool_call"
    plain = build_tokenizer()
    plain.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ConfigError, match="tools.format: tool_call needs a tokenizer whose chat template"):
        tokenize_demos(Dataset.from_dict({"prompt": ["q"], "solution": ["a"]}), cfg, plain, 128)


def test_tool_answers_name_their_tool_for_templates_that_require_it():
    """Hermes-style templates (vLLM ships one; Qwen2.5-style ones ignore the field) refuse a tool message without
    `name` and print it. Each answer names the tool its call asked for, read from the model's own turn."""
    strict = build_tokenizer()
    strict.chat_template = (
        "{% if tools %}<tools>{% for t in tools %}{{ t['function']['name'] }} {% endfor %}</tools>{% endif %}"
        "{% for m in messages %}"
        "{% if m['role'] == 'tool' %}{% if m['name'] is not defined %}{{ raise_exception('tool needs name') }}"
        "{% endif %}[tool {{ m['name'] }}: {{ m['content'] }}]"
        "{% else %}[{{ m['role'] }}: {{ m['content'] }}]{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}[assistant: {% endif %}")
    strict_fmt = make_format(ToolsConfig(format="tool_call", functions={"add": "tool_plugins:add"}), strict, None)
    strict_fmt.check()  # renders: no ConfigError
    turn = "I will add.\n" + call("add", {"a": 2, "b": 3})
    assert strict_fmt.response([(turn, ["5"])]) == "][tool add: 5][assistant: "
    two = call("python", {"code": "print(1)"}) + call("add", {"a": 1})
    assert strict_fmt.response([(two, ["1", "x"])]) == "][tool python: 1][tool add: x][assistant: "
