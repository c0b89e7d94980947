"""`tools:` config validation: one-line errors naming the key."""
import re

import pytest

from grpo.config import ConfigError, load_config


@pytest.mark.parametrize("override, message", [
    ("tools.format=json", "key 'tools.format': must be one of"),
    ("tools.max_turns=0", "key 'tools.max_turns': must be >= 1"),
    ("tools.timeout_s=0", "key 'tools.timeout_s'"),
    ("tools.session=forever", "key 'tools.session'"),
    ("tools.workers=0", "key 'tools.workers'"),
    ("tools.call_cost=-1", "key 'tools.call_cost'"),
    ("tools.functions.python=a.b:c", "key 'tools.functions.python'"),
    ("tools.functions.calc=nocolon", "key 'tools.functions.calc': expected 'package.module:attr'"),
    ("data.tool_arithmetic.hard_kinds=[cube]", "key 'data.tool_arithmetic.hard_kinds[0]'"),
])
def test_bad_tool_settings_name_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config("configs/tiny_tool_arith.yaml", [override])


def test_tool_call_needs_the_chat_template():
    with pytest.raises(ConfigError, match=re.escape("key 'tools.format': tool_call renders prompts with the chat "
                                                    "template; set data.apply_chat_template: true")):
        load_config("configs/tiny_tool_arith.yaml", ["tools.format=tool_call", "data.apply_chat_template=false"])
    load_config("configs/tiny_tool_arith.yaml", ["tools.enabled=false", "tools.format=tool_call",
                                                 "data.apply_chat_template=false"])  # tools off: no matter


def test_tools_with_a_preference_stage_are_refused():
    with pytest.raises(ConfigError, match="key 'tools.enabled': stage dpo does not train on tool episodes"):
        load_config("configs/tiny_tool_arith.yaml", ["stages=[sft,dpo,grpo]"])


def test_the_tool_config_loads():
    cfg = load_config("configs/tiny_tool_arith.yaml")
    assert cfg.tools.enabled and cfg.tools.format == "code_block" and cfg.data.source == "tool_arithmetic"


def test_the_tool_call_configs_load():
    cfg = load_config("configs/tiny_tool_arith_json.yaml")
    assert cfg.tools.enabled and cfg.tools.format == "tool_call" and cfg.name != "tiny_tool_arith"
    assert load_config("configs/tiny_tool_arith.yaml", ["tools.format=tool_call"]).tools.format == "tool_call"
    gpu = load_config("configs/gpu/qwen2.5-7b-instruct_tools.yaml")
    assert gpu.tools.format == "tool_call" and gpu.model.name_or_path == "Qwen/Qwen2.5-7B-Instruct"


# The embedded model's chat template before it rendered tools: it refuses a `tool` message.
PLAIN_TEMPLATE = ("{%- for message in messages -%}{%- if message['role'] == 'user' -%}<|user|>{{ message['content'] }}"
                  "{%- elif message['role'] == 'assistant' -%}<|assistant|>{{ message['content'] }}<|eos|>"
                  "{%- else -%}{{ raise_exception('unknown chat role: ' + message['role']) }}{%- endif -%}"
                  "{%- endfor -%}{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}")


def test_a_template_without_tools_is_refused_with_one_line_naming_the_key(tmp_path, capsys):
    from grpo.cli import main
    from grpo.config import ToolsConfig
    from grpo.runtime.tiny_model import build_tokenizer
    from grpo.runtime.tools import make_format

    tokenizer = build_tokenizer()
    assert make_format(ToolsConfig(format="tool_call"), tokenizer).tools[0]["function"]["name"] == "python"
    tokenizer.chat_template = PLAIN_TEMPLATE
    with pytest.raises(ConfigError, match=r"^tools.format: tool_call needs a tokenizer whose chat template renders "
                                          r"tools and tool messages: rendering failed: .*unknown chat role: tool"):
        make_format(ToolsConfig(format="tool_call"), tokenizer)
    tokenizer.chat_template = PLAIN_TEMPLATE.replace("raise_exception('unknown chat role: ' + message['role'])",
                                                     "message['content']")
    with pytest.raises(ConfigError, match="leaves out the tool definitions"):
        make_format(ToolsConfig(format="tool_call"), tokenizer)
    tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="the tokenizer has no chat template"):
        make_format(ToolsConfig(format="tool_call"), tokenizer)
    # `grpo check` on a local model directory whose template has no tools: exit 2, one line naming the key
    tokenizer.chat_template = PLAIN_TEMPLATE
    model = tmp_path / "model"
    tokenizer.save_pretrained(model)
    (model / "config.json").write_text("{}")
    assert main(["check", "configs/tiny_tool_arith_json.yaml", f"model.name_or_path={model}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("grpo check: error: tools.format: tool_call needs a tokenizer whose chat template")
