"""`tools:` config validation: one-line errors naming the key."""
import re

import pytest

from grpo.config import ConfigError, load_config


@pytest.mark.parametrize("override, message", [
    ("tools.format=tool_call", "key 'tools.format': 'tool_call' (chat-template JSON tool calls) is not implemented"),
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


def test_tools_with_a_preference_stage_are_refused():
    with pytest.raises(ConfigError, match="key 'tools.enabled': stage dpo does not train on tool episodes"):
        load_config("configs/tiny_tool_arith.yaml", ["stages=[sft,dpo,grpo]"])


def test_the_tool_config_loads():
    cfg = load_config("configs/tiny_tool_arith.yaml")
    assert cfg.tools.enabled and cfg.tools.format == "code_block" and cfg.data.source == "tool_arithmetic"
