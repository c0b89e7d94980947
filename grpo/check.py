"""`grpo check`: everything that can be validated without loading weights or starting engines."""
from __future__ import annotations

import sys
from pathlib import Path

from grpo.config import RunConfig, check_hardware, check_training_precision, gpu_features, ConfigError


def _model_note(cfg: RunConfig) -> str:
    name = cfg.model.name_or_path
    if name == "tiny" or name.startswith("tiny:"):
        return f"embedded tiny model ({name}), built locally into {cfg.model.tiny_dir}"
    path = Path(name)
    if path.exists():
        if (path / "adapter_config.json").exists() and not (path / "config.json").exists():
            return f"LoRA adapter {name} (loaded on its base model, merged)"
        if not (path / "config.json").exists():
            raise ConfigError(f"model.name_or_path: {name} exists but has no config.json")
        return f"local model {name}"
    if name.startswith((".", "/")):
        raise ConfigError(f"model.name_or_path: {name} does not exist")
    return f"hub model {name} (not checked: loaded from the hub or the local HF cache at run time)"


def _check_tool_template(cfg: RunConfig) -> str:
    """tools.format tool_call: the tokenizer's chat template must render the tools and tool messages. Checked on
    the embedded model's tokenizer (built, no weights) and local model directories; a hub model's only when its
    tokenizer is in the local HF cache (nothing is downloaded)."""
    from grpo.runtime.tools import make_format

    name = cfg.model.name_or_path
    if name == "tiny" or name.startswith("tiny:"):
        from grpo.runtime.tiny_model import build_tokenizer

        tokenizer = build_tokenizer()
    else:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True,
                                                      trust_remote_code=cfg.model.trust_remote_code)
        except Exception:  # a hub id that is not cached here, a directory without a tokenizer
            return f"tools: the chat template of {name} not checked (its tokenizer is not available offline)"
    fmt = make_format(cfg.tools, tokenizer, cfg.data.system_prompt)
    return f"tools: the chat template renders the tool definitions ({', '.join(fmt.schemas)}) and tool messages"


def check_config(cfg: RunConfig, source: str, hardware: bool = False) -> int:
    """Prints what was checked; returns a process exit code (0 ok, 2 problem)."""
    from grpo.data.rows import DataError

    lines = [f"config {source}: ok (stages: {' -> '.join(cfg.stages)}, run dir {cfg.run_dir})"]
    try:
        validate_run(cfg, source, hardware, lines)
    except (ConfigError, DataError) as exc:
        print("\n".join(lines), file=sys.stderr)
        print(f"grpo check: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


def validate_run(cfg: RunConfig, source: str, hardware: bool = False, lines: list[str] | None = None) -> None:
    """Raises ConfigError or DataError for the first problem; appends what was checked to `lines`."""
    from grpo.data.rows import DataError, load_splits, validate_rows

    lines = [] if lines is None else lines
    lines.append("model: " + _model_note(cfg))
    if cfg.model.lora is not None:
        from grpo.runtime.lora import resolve_push

        lo = cfg.model.lora
        targets = lo.target_modules if isinstance(lo.target_modules, str) else ", ".join(lo.target_modules)
        lines.append(f"lora: rank {lo.rank}, alpha {lo.alpha:g} on {targets}"
                     + (f", modules_to_save {', '.join(lo.modules_to_save)}" if lo.modules_to_save else "")
                     + f"; GRPO pushes the {resolve_push(lo, cfg.rollout.backend)} weights; next stage: {lo.next_stage}")
    r = cfg.rollout
    if r.mode == "async":
        lines.append(f"rollout: async, the last {r.inference_ranks} process(es) of the launch generate and score "
                     f"(tensor parallel {r.tensor_parallel_size}), the others train; max_staleness {r.max_staleness}; "
                     f"launch with --nproc {r.inference_ranks + 1} or more")
    if cfg.stages:
        check_training_precision(cfg, source)
    needs = gpu_features(cfg)
    if needs:
        lines.append("needs a CUDA GPU for: " + ", ".join(needs))
    if hardware:
        check_hardware(cfg, source)

    import verifiers

    for i, spec in enumerate(cfg.verifiers):
        try:
            verifiers.get(spec.name, **dict(spec.options))
        except Exception as exc:
            raise ConfigError(f"verifiers[{i}].name: cannot build verifier {spec.name!r}: {exc}") from None
    lines.append("verifiers: " + ", ".join(f"{s.name} (weight {s.weight})" for s in cfg.verifiers))
    if cfg.tools.enabled:
        from grpo.runtime.tools import load_function

        t = cfg.tools
        for name, spec in t.functions.items():
            load_function(spec, f"tools.functions.{name}")
        lines.append(f"tools: {t.format} format; python (sandboxed{', session replay' if t.session == 'replay' else ''})"
                     + "".join(f", {n} ({spec})" for n, spec in t.functions.items())
                     + f"; up to {t.max_turns} calls and rollout.max_tokens={cfg.rollout.max_tokens} tokens per episode")
        if t.format == "tool_call":
            lines.append(_check_tool_template(cfg))

    d = cfg.data
    if d.source not in ("arithmetic", "tool_arithmetic") and not Path(d.source).exists():
        lines.append(f"data: hub dataset {d.source} (not checked: needs the network or the HF cache)")
    else:
        splits = load_splits(d, cfg.seed, cfg.tools.format)
        fields = [d.prompt_field, d.answer_field, *d.required_fields]
        validate_rows(splits.rl, fields, d.source)
        validate_rows(splits.eval, fields, d.eval_source or d.source)
        if "sft" in cfg.stages:
            if splits.sft is None:
                raise DataError(f"{d.source}: stage sft needs a '{d.solution_field}' column (data.solution_field)")
            validate_rows(splits.sft, [d.prompt_field, d.solution_field], d.source)
        lines.append(f"data: {len(splits.rl)} prompt rows, {len(splits.eval)} eval rows"
                     + (f", {len(splits.sft)} demonstrations" if splits.sft is not None else ""))
    if "dpo" in cfg.stages and cfg.dpo.pairs == "file":
        from grpo.data.preferences import load_preference_file

        pairs = load_preference_file(cfg.dpo.pairs_file)
        lines.append(f"dpo pairs: {len(pairs)} valid rows in {cfg.dpo.pairs_file}")
    if "kto" in cfg.stages and cfg.kto.data == "file":
        from grpo.data.unpaired import load_unpaired_file

        rows = load_unpaired_file(cfg.kto.data_file)
        n_d = sum(r.label for r in rows)
        lines.append(f"kto data: {len(rows)} valid rows in {cfg.kto.data_file} ({n_d} desirable, "
                     f"{len(rows) - n_d} undesirable)")
