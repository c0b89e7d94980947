"""Low-rank adapters (peft) on the policy: attach, load, merge for the rollout engine, save.

One adapter named "default" per model. Two things a LoRA run must never get wrong, and where they live:
- the rollout engine samples from base + adapter, not from the base: `merged_named_weights` computes
  W + B A scale for every adapted layer without touching the trained weights (no merge/unmerge drift), and
  `adapter_state` is what vLLM's LoRA loading gets; GRPO's `check_weight_sync` compares the engine with the
  adapted trainer after every push.
- a reference "with the adapter disabled" is the model the stage started from only when the adapter was
  fresh at the start of the stage (`fresh_adapter`); a continued adapter needs a separate reference.

Stage outputs (`save_stage_output`): the adapter in peft format under `<final>/adapter`, and with
`lora.save_merged` the merged Hugging Face model in `<final>` itself; without it `<final>` is the adapter
alone (adapter_config.json, weights, tokenizer), which `load_model` merges on load.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

import torch

from grpo.config import LoraConfig, ModelConfig

ADAPTER_NAME = "default"
ADAPTER_SUBDIR = "adapter"
ADAPTER_CONFIG = "adapter_config.json"
# The LoRA ranks vLLM's engine can be built for (vllm.config.lora.MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def adapter_dir(model_dir: str | Path) -> Path | None:
    """The adapter a stage output holds: `model_dir` itself when it is an adapter alone, else `model_dir/adapter`."""
    path = Path(model_dir)
    for candidate in (path, path / ADAPTER_SUBDIR):
        if (candidate / ADAPTER_CONFIG).is_file():
            return candidate
    return None


def is_adapter_only(model_dir: str | Path) -> bool:
    """A directory with an adapter and no full model of its own (`lora.save_merged: false`)."""
    path = Path(model_dir)
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def adapter_base(adapter: str | Path) -> str:
    """The base model an adapter was trained on (as peft recorded it)."""
    base = json.loads((Path(adapter) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{Path(adapter) / ADAPTER_CONFIG}: no base_model_name_or_path; cannot find the base model")
    return base


def fresh_adapter(init_model_path: str, cfg: ModelConfig) -> bool:
    """Whether a stage starting from `init_model_path` attaches a new adapter (zero update at the start), so that
    the same model with the adapter disabled is exactly the model the stage started from."""
    return cfg.lora is not None and not continues_adapter(init_model_path, cfg)


def continues_adapter(init_model_path: str, cfg: ModelConfig) -> bool:
    return cfg.lora is not None and cfg.lora.next_stage == "adapter" and adapter_dir(init_model_path) is not None


def _load_base(path: str, cfg: ModelConfig) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    from grpo.runtime.models import DTYPES

    return AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code)


def load_merged(model_dir: str | Path, cfg: ModelConfig) -> torch.nn.Module:
    """An adapter-only stage output as a plain model: its base with the adapter merged in."""
    from peft import PeftModel

    adapter = adapter_dir(model_dir)
    base = _load_base(adapter_base(adapter), cfg)
    return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()


def load_continued(model_dir: str | Path, cfg: ModelConfig) -> torch.nn.Module:
    """A previous stage's adapter, trainable again, on the base it was trained on."""
    from peft import PeftModel

    adapter = adapter_dir(model_dir)
    base_path = adapter_base(adapter)
    if adapter_dir(base_path) is not None and is_adapter_only(base_path):
        base = load_merged(base_path, cfg)
    else:
        base = _load_base(base_path, cfg)
    return PeftModel.from_pretrained(base, str(adapter), is_trainable=True)


def attach(model: torch.nn.Module, lora: LoraConfig, base_path: str) -> torch.nn.Module:
    """A fresh adapter on `model` (B = 0, so the model's outputs are unchanged); only adapter parameters (and
    `modules_to_save`) require gradients."""
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    targets = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    peft_cfg = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                              modules_to_save=list(lora.modules_to_save) or None, task_type="CAUSAL_LM")
    # Recorded in adapter_config.json as the base: an absolute path where it is a local directory.
    model.name_or_path = str(Path(base_path).resolve()) if Path(base_path).exists() else base_path
    try:
        peft_model = get_peft_model(model, peft_cfg)
    except ValueError as exc:
        raise ValueError(f"model.lora.target_modules: {str(exc).splitlines()[0]}") from None
    peft_model.base_model.model.config.use_cache = False
    return peft_model


def is_peft(module: torch.nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(module, PeftModel)


@contextlib.contextmanager
def adapter_disabled(module: torch.nn.Module):
    """The base model's outputs (adapter layers bypassed, original copies of modules_to_save) inside the block."""
    with module.disable_adapter():
        yield


def _no_gather(params: list[torch.nn.Parameter]):
    return contextlib.nullcontext()


def merged_named_weights(module: torch.nn.Module, gather=_no_gather,
                         tied_copies: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """The weights of base + adapter in the base model's checkpoint names (what vLLM's full-weight reload and
    `save_pretrained` take), one module at a time: `gather(params)` makes partitioned parameters whole for the
    block (the training engine's, under ZeRO-3).
    The trained tensors are not modified. `tied_copies=False` names a tied weight once."""
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import ModulesToSaveWrapper

    hf = module.get_base_model()
    seen: set[int] = set()
    done: list[str] = []  # prefixes already yielded by an adapted layer or a wrapper
    for name, mod in hf.named_modules():
        if any(name.startswith(p) for p in done):
            continue
        if isinstance(mod, LoraLayer):
            done.append(name + ".")
            base = mod.get_base_layer()
            with gather(list(mod.parameters())):
                weight = base.weight.detach().clone()
                for adapter in ([] if mod.disable_adapters else mod.active_adapters):
                    if adapter in mod.lora_A:
                        weight += mod.get_delta_weight(adapter).to(weight.dtype)
                yield f"{name}.weight", weight
                if getattr(base, "bias", None) is not None:
                    yield f"{name}.bias", base.bias.detach().clone()
        elif isinstance(mod, ModulesToSaveWrapper):
            done.append(name + ".")
            use_copy = mod.active_adapters and not getattr(mod, "disable_adapters", False)
            active = mod.modules_to_save[mod.active_adapters[0]] if use_copy else mod.original_module
            with gather(list(active.parameters())):
                for pname, param in active.named_parameters():
                    yield f"{name}.{pname}", param.detach().clone()
        else:
            params = list(mod.named_parameters(recurse=False))
            with gather([p for _, p in params]):
                for pname, param in params:
                    if not tied_copies and id(param) in seen:
                        continue
                    seen.add(id(param))
                    yield (f"{name}.{pname}" if name else pname), param.detach().clone()
            for bname, buf in mod.named_buffers(recurse=False):
                if bname not in mod._non_persistent_buffers_set:  # vLLM rebuilds rotary tables, and rejects them
                    yield (f"{name}.{bname}" if name else bname), buf.detach()


def adapter_state(module: torch.nn.Module, gather=_no_gather) -> dict[str, torch.Tensor]:
    """The trained tensors (adapter matrices and modules_to_save), gathered, on the CPU, under the names of the
    peft model's state_dict (what `PeftModel.save_pretrained(state_dict=...)` takes)."""
    trained = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    out = {}
    for name, param in trained:
        with gather([param]):
            out[name] = param.detach().to("cpu", copy=True)
    return out


def save_adapter(module: torch.nn.Module, out_dir: Path, gather=_no_gather, is_main: bool = True) -> Path:
    """The adapter in peft format (adapter_config.json + adapter_model.safetensors). All ranks call under ZeRO-3."""
    state = adapter_state(module, gather)
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        module.save_pretrained(str(out_dir), state_dict=state, safe_serialization=True)
    return out_dir


def saves_merged(cfg: ModelConfig) -> bool:
    """Whether a stage's final directory holds the full (merged) model."""
    return cfg.lora is None or cfg.lora.save_merged


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest rank vLLM's engine can be built for that holds an adapter of `rank`."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"model.lora.rank: {rank} exceeds vLLM's largest LoRA rank {VLLM_LORA_RANKS[-1]}")


def resolve_push(lora: LoraConfig | None, rollout_backend: str) -> str:
    """"adapter" or "merged": how GRPO's rollout engine receives the policy after each step.

    "auto" is the merged push, from bench/lora.py (README, LoRA; 2026-12-05, 17M-parameter model, rank 16): both
    pushes take milliseconds in a colocated engine (0.06 s merged vs 0.03 s adapter), but an engine built with
    LoRA support samples 2.7x slower on the CPU (the adapter's matmuls in every layer, every token), so the step
    is faster with merged weights. Set `push: adapter` where moving the full weights costs more than that: an
    engine in another process or on another node, or a large model whose full reload is seconds."""
    if lora is None:
        return "merged"
    if lora.push != "auto":
        return lora.push
    return "merged"
