"""The embedded default model: a tiny, randomly initialised Qwen2 causal LM with a character-level tokenizer.

Nothing is downloaded: the tokenizer is made with the `tokenizers` library and the weights are drawn from a
seeded initialiser, then both are saved as an ordinary Hugging Face directory that
`AutoModelForCausalLM` / `AutoTokenizer` and vLLM load like any hub checkpoint.

Why character-level: the embedded task is arithmetic, where a character tokenizer puts one digit in one token,
which is what lets a model this small learn column-wise addition at all (BPE merges such as "347" would hide the
digits). It also keeps the vocabulary (262 symbols: 256 bytes + 6 markers) small next to the transformer blocks.

Why head_dim 64: vLLM's CPU attention kernel refuses smaller head sizes (DESIGN.md), so the hidden size is a
multiple of 64 and the head count is hidden_size // 64.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

# Bump when the saved layout or tokenizer changes, so that directories built by an older version are rebuilt.
BUILD_FORMAT_VERSION = 1
BUILD_INFO_FILE = "tiny_model_build.json"

HEAD_DIM = 64

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|eos|>"
UNK_TOKEN = "<|unk|>"
SYSTEM_TOKEN = "<|system|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN, SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN)

# The same text pipeline as Qwen2's own tokenizer (NFC, Qwen2's split pattern, byte-level), but with no BPE
# merges and one token per byte. transformers 5 always loads a `qwen2` checkpoint's tokenizer through
# `Qwen2Tokenizer`, which rebuilds exactly this pipeline around the saved vocabulary, so matching it is what
# makes the tokenizer load identically in transformers 4 and 5 and in vLLM. With all 256 bytes in the
# vocabulary every string round-trips and nothing maps to <|unk|>; ASCII text is one token per character.
QWEN2_SPLIT_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                       r"""\s*[\r\n]+|\s+(?!\S)|\s+""")


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table (index = byte value), as used by byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table, shift = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shift)
            shift += 1
    return [table[byte] for byte in range(256)]


# One marker token per turn keeps char-level sequences short; the assistant turn ends with EOS, which is also
# the token generation stops on. The {% generation %} block lets transformers return an assistant-token mask
# (`return_assistant_tokens_mask=True`) for SFT loss masking.
#
# Tools (`tools.format: tool_call`), in the Hermes / Qwen2.5 convention but compact, since every character is a
# token here: with `tools`, a system turn lists them as signatures ("<|system|>tools: python(code: string)", after
# the system prompt and a newline when there is one); an assistant message's `tool_calls` render as
# `<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>`; `tool` messages render inside one user turn, each as
# `<tool_response>\n...\n</tool_response>`. `<tool_call>` and the rest are plain text (no new tokens: the vocabulary
# and so the weights stay as they were). Without tools and tool messages the text is exactly what the template
# rendered before tools existed (tests/grpo/runtime/test_tiny_model.py), so models built earlier stay valid.
CHAT_TEMPLATE = (
    "{%- if tools -%}" + SYSTEM_TOKEN +
    "{%- if messages and messages[0]['role'] == 'system' -%}{{ messages[0]['content'] + '\\n' }}{%- endif -%}"
    "{{ 'tools: ' }}"
    "{%- for tool in tools -%}"
    "{%- set f = tool['function'] if tool['function'] is defined else tool -%}"
    "{%- set props = f['parameters']['properties'] if f['parameters'] is defined and "
    "f['parameters']['properties'] is defined else {} -%}"
    "{{ f['name'] + '(' }}"
    "{%- for pname, p in props.items() -%}"
    "{{ pname }}{%- if p['type'] is defined -%}{{ ': ' + p['type'] }}{%- endif -%}"
    "{%- if not loop.last -%}{{ ', ' }}{%- endif -%}"
    "{%- endfor -%}"
    "{{ ')' }}{%- if not loop.last -%}{{ '; ' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- if not (tools and loop.first) -%}" + SYSTEM_TOKEN + "{{ message['content'] }}{%- endif -%}"
    "{%- elif message['role'] == 'user' -%}" + USER_TOKEN + "{{ message['content'] }}"
    "{%- elif message['role'] == 'assistant' -%}" + ASSISTANT_TOKEN + ""
    "{%- generation -%}"
    "{%- if message['content'] is not none -%}{{ message['content'] }}{%- endif -%}"
    "{%- if message['tool_calls'] is defined and message['tool_calls'] -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- set c = call['function'] if call['function'] is defined else call -%}"
    "{{ '<tool_call>\\n{\"name\": \"' + c['name'] + '\", \"arguments\": ' }}"
    "{%- if c['arguments'] is string -%}{{ c['arguments'] }}{%- else -%}{{ c['arguments'] | tojson }}{%- endif -%}"
    "{{ '}\\n</tool_call>' }}"
    "{%- endfor -%}"
    "{%- endif -%}"
    + EOS_TOKEN + "{%- endgeneration -%}"
    "{%- elif message['role'] == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' -%}" + USER_TOKEN + "{%- endif -%}"
    "{{ '<tool_response>\\n' + message['content'] + '\\n</tool_response>' }}"
    "{%- else -%}{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}" + ASSISTANT_TOKEN + "{%- endif -%}"
)

# Sizes, smallest first (parameter counts include the tied 262 x hidden embedding):
#   micro  0.36M  for tests: builds in a fraction of a second, vLLM and transformers load it instantly.
#   tiny   0.82M  the embedded default. Training measured ~11k tokens/s on this machine's 2 cores (fp32,
#                 batch 64); 10k char-level arithmetic demonstrations are ~0.5M tokens with padding, so an
#                 SFT epoch takes under a minute and several epochs, DPO and GRPO fit the 15-minute budget.
#                 Two heads of 64 is the narrowest width vLLM's CPU attention accepts with more than one head;
#                 3 layers give the column-wise scratchpad room to locate digits, add and carry (2.2 epochs of
#                 SFT already reach ~38% greedy accuracy on held-out problems).
#   small  6.4M   the second size for the benchmarks: twice as wide, twice as deep.
TINY_PRESETS: dict[str, dict[str, int]] = {
    "micro": {"hidden_size": 128, "num_layers": 2, "intermediate_size": 256},
    "tiny": {"hidden_size": 128, "num_layers": 3, "intermediate_size": 512},
    "small": {"hidden_size": 256, "num_layers": 6, "intermediate_size": 1024},
}
DEFAULT_PRESET = "tiny"


def build_tokenizer(max_length: int = 512):
    """Byte-level (so character-level for ASCII) fast tokenizer with the chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(list(SPECIAL_TOKENS) + _bytes_to_unicode())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, continuing_subword_prefix="",
                                   end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=[SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN],
        chat_template=CHAT_TEMPLATE,
        # The default clean-up deletes the space before "?" or "," and would corrupt decoded prompts.
        clean_up_tokenization_spaces=False,
        model_max_length=max_length,
    )


def _build_args(hidden_size: int, num_layers: int, intermediate_size: int, seed: int,
                max_position_embeddings: int, initializer_range: float) -> dict[str, Any]:
    if hidden_size < HEAD_DIM or hidden_size % HEAD_DIM:
        raise ValueError(f"hidden_size must be a positive multiple of {HEAD_DIM} (vLLM's CPU attention needs "
                         f"head_dim {HEAD_DIM}), got {hidden_size}")
    for name, value in (("num_layers", num_layers), ("intermediate_size", intermediate_size),
                        ("max_position_embeddings", max_position_embeddings)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not initializer_range > 0:
        raise ValueError(f"initializer_range must be > 0, got {initializer_range!r}")
    return {
        "format_version": BUILD_FORMAT_VERSION,
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "intermediate_size": intermediate_size,
        "seed": seed,
        "max_position_embeddings": max_position_embeddings,
        "initializer_range": float(initializer_range),
    }


def _read_build_info(out_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out_dir / BUILD_INFO_FILE).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(out_dir: Path) -> bool:
    needed = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "generation_config.json")
    return all((out_dir / name).is_file() for name in needed)


def build_tiny_model(
    out_dir: str | os.PathLike,
    *,
    hidden_size: int = TINY_PRESETS[DEFAULT_PRESET]["hidden_size"],
    num_layers: int = TINY_PRESETS[DEFAULT_PRESET]["num_layers"],
    intermediate_size: int = TINY_PRESETS[DEFAULT_PRESET]["intermediate_size"],
    seed: int = 0,
    max_position_embeddings: int = 512,
    initializer_range: float = 0.02,
) -> Path:
    """Build (or reuse) a randomly initialised Qwen2 model + char tokenizer in `out_dir`; returns the path.

    Idempotent: when `out_dir` already holds a complete model built with the same arguments, it is returned
    untouched. A directory built with other arguments is rebuilt; a non-empty directory that this function
    did not create is refused rather than overwritten.

    `initializer_range` is the std of the random weights. The default 0.02 suits training; note that such a
    fresh model just repeats its last input token (tied embeddings dominate), so tests that compare two
    inference engines use a larger value to get varied outputs.
    """
    out_dir = Path(out_dir)
    args = _build_args(hidden_size, num_layers, intermediate_size, seed, max_position_embeddings,
                       initializer_range)
    existing = _read_build_info(out_dir)
    if existing is not None and existing.get("build_args") == args and _is_complete(out_dir):
        if not _template_is_current(out_dir):
            _refresh_tokenizer(out_dir, args)  # same weights and vocabulary; a newer chat template
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()) and existing is None:
        raise FileExistsError(f"{out_dir} is not empty and was not made by build_tiny_model "
                              f"(no {BUILD_INFO_FILE}); choose another directory or empty it")

    # Build next to the target and swap it in at the end, so an interrupted build never leaves a directory
    # that looks complete.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        _write_model(staging, args)
        # mkdtemp (and the weight writer) make owner-only entries; a model directory is ordinary shared data.
        staging.chmod(0o755)
        for entry in staging.iterdir():
            entry.chmod(0o644)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _template_is_current(out_dir: Path) -> bool:
    saved = out_dir / "chat_template.jinja"
    if saved.is_file():
        return saved.read_text() == CHAT_TEMPLATE
    try:
        return json.loads((out_dir / "tokenizer_config.json").read_text()).get("chat_template") == CHAT_TEMPLATE
    except (OSError, ValueError):
        return False


def _refresh_tokenizer(out_dir: Path, args: dict[str, Any]) -> None:
    """Rewrite the tokenizer files of a built model (the chat template changed; weights and vocabulary did not),
    each file swapped in whole."""
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tokenizer-", dir=out_dir.parent))
    try:
        build_tokenizer(max_length=args["max_position_embeddings"]).save_pretrained(staging)
        for entry in staging.iterdir():
            entry.chmod(0o644)
            os.replace(entry, out_dir / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build_preset(out_dir: str | os.PathLike, preset: str = DEFAULT_PRESET, **overrides: Any) -> Path:
    """`build_tiny_model` with the sizes of a named entry of `TINY_PRESETS`; `overrides` win over the preset."""
    if preset not in TINY_PRESETS:
        raise ValueError(f"unknown tiny model preset {preset!r}; choose one of {sorted(TINY_PRESETS)}")
    return build_tiny_model(out_dir, **{**TINY_PRESETS[preset], **overrides})


def _write_model(directory: Path, args: dict[str, Any]) -> None:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer(max_length=args["max_position_embeddings"])
    heads = args["hidden_size"] // HEAD_DIM
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=args["hidden_size"],
        intermediate_size=args["intermediate_size"],
        num_hidden_layers=args["num_layers"],
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=HEAD_DIM,
        max_position_embeddings=args["max_position_embeddings"],
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        initializer_range=args["initializer_range"],
        tie_word_embeddings=True,
        use_sliding_window=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    # A private generator keeps the caller's global RNG state untouched while making the weights a pure
    # function of the seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args["seed"])
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    num_parameters = sum(p.numel() for p in model.parameters())
    (directory / BUILD_INFO_FILE).write_text(json.dumps({"build_args": args, "num_parameters": num_parameters}, indent=2))


def read_build_info(model_dir: str | os.PathLike) -> dict[str, Any] | None:
    """`{"build_args": {...}, "num_parameters": int}` for a directory made by `build_tiny_model`, else None."""
    return _read_build_info(Path(model_dir))
