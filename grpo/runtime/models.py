"""Resolving and loading models: the embedded tiny model, a local directory, or a hub id."""
from __future__ import annotations

from pathlib import Path

import torch

from grpo.config import ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def model_files(model_dir: str | Path) -> list[Path]:
    """A model directory's weight files and configs (what identifies the model it holds), sorted by name."""
    return sorted(p for p in Path(model_dir).iterdir()
                  if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name in ("config.json", "adapter_config.json")))


def resolve_model_path(cfg: ModelConfig) -> str:
    """`tiny` / `tiny:<preset>` -> build (or reuse) the embedded model and return its directory;
    anything else is returned unchanged for transformers/vLLM to resolve (a path or a hub id)."""
    name = cfg.name_or_path
    if name == "tiny" or name.startswith("tiny:"):
        from grpo.runtime.tiny_model import DEFAULT_PRESET, TINY_PRESETS, build_preset

        preset = name.split(":", 1)[1] if ":" in name else DEFAULT_PRESET
        if preset not in TINY_PRESETS:
            raise ValueError(f"model.name_or_path: unknown tiny preset {preset!r} (have {sorted(TINY_PRESETS)})")
        return str(build_preset(Path(cfg.tiny_dir) / preset, preset))
    return name


def load_tokenizer(path: str, cfg: ModelConfig):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, cfg: ModelConfig, *, trainable: bool = True) -> torch.nn.Module:
    """A causal LM from a model directory (or hub id), or from a stage output that holds a LoRA adapter alone.

    With `cfg.lora` a trainable model is a peft model whose adapter is the only trained part: a fresh adapter on
    the (merged) model, or with `lora.next_stage: adapter` the adapter `path` holds, trained further. A frozen
    model (`trainable=False`: references, evaluation) is always the plain merged model."""
    from transformers import AutoModelForCausalLM

    from grpo.runtime import lora

    if trainable and lora.continues_adapter(path, cfg):
        model = lora.load_continued(path, cfg)
    else:
        if lora.is_adapter_only(path):
            model = lora.load_merged(path, cfg)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[cfg.dtype],
                                                         trust_remote_code=cfg.trust_remote_code)
        if trainable and cfg.lora is not None:
            model = lora.attach(model, cfg.lora, path)
    if trainable:
        model.config.use_cache = False
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            if cfg.lora is not None:
                # Frozen embeddings give checkpointed blocks inputs without grad: no gradient would reach the adapter.
                model.enable_input_require_grads()
        model.train()
    else:
        model.eval()
        model.requires_grad_(False)
    return model


def load_weights(model_dir: str | Path):
    """(name, tensor) pairs of a saved Hugging Face model, for a push into the rollout engine.

    Loaded through transformers rather than read from the files: a checkpoint with tied embeddings
    stores `lm_head.weight` only once, and vLLM's reload given no lm_head keeps a broken one (greedy
    argmax still right, sampled text garbage). The model's state_dict names every tied copy."""
    from transformers import AutoModelForCausalLM

    from grpo.runtime import lora

    if lora.is_adapter_only(model_dir):
        from grpo.config import ModelConfig

        model = lora.load_merged(model_dir, ModelConfig(dtype="float32"))
    else:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="auto")
    yield from model.state_dict().items()
