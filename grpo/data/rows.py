"""Datasets: load rows from a local file or a hub id, validate them, turn them into prompts.

A row that lacks a mapped field stops the run with the row index, the field and the file. Every
original column is kept on the example, so verifiers can read what they need (e.g. `tests`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import datasets

from grpo.config import DataConfig

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class DataError(ValueError):
    """A data problem, naming the source, the row index and the field."""


@dataclass
class Example:
    """One prompt ready for rollout. `row` is the dataset row (the verifier's `example`)."""

    prompt: str  # the text given to the model, chat template applied
    answer: Any
    row: dict


def _check_jsonl_lines(path: Path) -> None:
    # datasets reports a broken JSON line without its number; find it ourselves first.
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {lineno} (row {lineno - 1}): invalid JSON: {exc.msg}") from None
            if not isinstance(value, dict):
                raise DataError(f"{path}: line {lineno} (row {lineno - 1}): expected a JSON object, "
                                f"got {type(value).__name__}")


def load_rows(source: str, split: str = "train", subset: str | None = None) -> datasets.Dataset:
    """Rows from a local jsonl/json/parquet/csv file, a `save_to_disk` directory, or a hub id."""
    path = Path(source)
    if path.exists():
        if path.is_dir():
            if (path / "dataset_info.json").exists() or (path / "state.json").exists():
                ds = datasets.load_from_disk(str(path))
                if isinstance(ds, datasets.DatasetDict):
                    if split not in ds:
                        raise DataError(f"{source}: no split '{split}' (has {list(ds)})")
                    ds = ds[split]
                return ds
            raise DataError(f"{source}: a directory must be a datasets.save_to_disk folder")
        builder = LOCAL_FORMATS.get(path.suffix.lower())
        if builder is None:
            raise DataError(f"{source}: unsupported file type '{path.suffix}' (use one of {sorted(LOCAL_FORMATS)})")
        if path.suffix.lower() == ".jsonl":
            _check_jsonl_lines(path)
        try:
            return datasets.load_dataset(builder, data_files=str(path), split="train")
        except Exception as exc:
            raise DataError(f"{source}: cannot read as {builder}: {exc}") from None
    if source.startswith((".", "/")) or source.endswith(tuple(LOCAL_FORMATS)):
        raise DataError(f"{source}: file not found")
    # A hub id (or a dataset script name); needs the network or a local HF cache.
    return datasets.load_dataset(source, subset, split=split)


def prepare_rows(ds: datasets.Dataset, cfg: DataConfig, source: str) -> datasets.Dataset:
    """Apply the config's column renames."""
    for old, new in cfg.column_map.items():
        if old not in ds.column_names:
            raise DataError(f"{source}: data.column_map names column '{old}', which is not in {ds.column_names}")
        if new in ds.column_names:
            ds = ds.remove_columns(new)
        ds = ds.rename_column(old, new)
    return ds


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def validate_rows(ds: datasets.Dataset, fields: Sequence[str], source: str) -> None:
    """Every row has every field, non-empty. Raises DataError naming the first bad row."""
    for name in fields:
        if name not in ds.column_names:
            raise DataError(f"{source}: field '{name}' is not a column (columns: {ds.column_names}); "
                            "set the data.*_field mapping in the config")
    for name in fields:
        for i, value in enumerate(ds[name]):
            if _missing(value):
                raise DataError(f"{source}: row {i}: field '{name}' is missing or empty")


def format_prompt(question: str, cfg: DataConfig, tokenizer=None, tools: list[dict] | None = None) -> str:
    """The model-facing prompt: template, optional system prompt, and the tokenizer's chat template (given the tool
    definitions `tools`, for the tool_call format; None renders exactly as without)."""
    content = cfg.prompt_template.format(prompt=question)
    if not cfg.apply_chat_template or tokenizer is None:
        return content
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError("data.apply_chat_template is true but the tokenizer has no chat template; "
                        "set data.apply_chat_template=false or use a chat model")
    messages = []
    if cfg.system_prompt:
        messages.append({"role": "system", "content": cfg.system_prompt})
    messages.append({"role": "user", "content": content})
    if tools:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_token_counts(prompts: Sequence[str], tokenizer) -> list[int]:
    """Tokens of each model-facing prompt (chat template already in the text, so no special tokens added)."""
    counts: list[int] = []
    for start in range(0, len(prompts), 4096):  # batched: one call per prompt took ~20 s for 20k prompts
        counts.extend(len(ids) for ids in tokenizer(list(prompts[start:start + 4096]),
                                                    add_special_tokens=False)["input_ids"])
    return counts


def to_examples(ds: datasets.Dataset, cfg: DataConfig, tokenizer=None, source: str = "data",
                check_length: bool = True, tools: list[dict] | None = None) -> list[Example]:
    """Validated rows -> Examples; the verifier reads the answer from `row["answer"]`. A prompt over
    data.max_prompt_tokens is a DataError unless `check_length` is off (`grpo doctor` counts them instead)."""
    validate_rows(ds, [cfg.prompt_field, cfg.answer_field, *cfg.required_fields], source)
    pattern = re.compile(cfg.answer_regex, re.MULTILINE) if cfg.answer_regex else None
    # One Arrow -> Python conversion and batched tokenization: row-by-row access and tokenizer calls
    # took ~20 s for a 20k-prompt pool, all of it before the first rollout.
    rows = ds.to_list()
    prompts = []
    for i, row in enumerate(rows):
        row["answer"] = row[cfg.answer_field]
        if pattern is not None:
            match = pattern.search(str(row["answer"]))
            if match is None:
                raise DataError(f"{source}: row {i}: field '{cfg.answer_field}' does not match data.answer_regex")
            row["answer"] = match.group(1).strip()
        prompts.append(format_prompt(str(row[cfg.prompt_field]), cfg, tokenizer, tools))
    if tokenizer is not None and check_length:
        for i, n in enumerate(prompt_token_counts(prompts, tokenizer)):
            if n > cfg.max_prompt_tokens:
                raise DataError(f"{source}: row {i}: prompt is {n} tokens, over "
                                f"data.max_prompt_tokens={cfg.max_prompt_tokens}")
    return [Example(prompt=prompt, answer=row["answer"], row=row) for prompt, row in zip(prompts, rows)]


def train_eval_split(ds: datasets.Dataset, eval_size: int, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Deterministic split: the same seed and data give the same eval rows on every machine."""
    if eval_size <= 0:
        return ds, ds.select([])
    if eval_size >= len(ds):
        raise DataError(f"data.eval_size={eval_size} leaves no training rows (dataset has {len(ds)})")
    parts = ds.train_test_split(test_size=eval_size, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


@dataclass
class Splits:
    sft: datasets.Dataset | None  # demonstrations (prompt + solution), None when the source has none
    rl: datasets.Dataset  # prompts for DPO pair building and GRPO
    eval: datasets.Dataset


def load_splits(cfg: DataConfig, seed: int, tool_format: str = "code_block") -> Splits:
    """The pools each stage draws from, disjoint by construction. `tool_format` (tools.format): the call format of
    the tool_arithmetic task's demonstrations."""
    if cfg.source == "arithmetic":
        from grpo.data.tasks.arithmetic import make_pools

        a = cfg.arithmetic
        pools = make_pools({"sft": a.n_sft, "rl": a.n_rl, "eval": a.n_eval}, seed=seed,
                           max_digits=a.max_digits, ops=tuple(a.ops), solution_style=a.solution_style)
        rl = pools["rl"]
        if cfg.limit:
            rl = rl.select(range(min(cfg.limit, len(rl))))
        return Splits(sft=pools["sft"], rl=rl, eval=pools["eval"])
    if cfg.source == "tool_arithmetic":
        from grpo.data.tasks.tool_arithmetic import make_pools as make_tool_pools

        t = cfg.tool_arithmetic
        # eval first: it depends only on the seed and n_eval
        pools = make_tool_pools({"eval": t.n_eval, "sft": t.n_sft, "rl": t.n_rl}, seed, hard_share=t.hard_share,
                                hard_kinds=tuple(t.hard_kinds), tool_format=tool_format)
        rl = pools["rl"].select(range(min(cfg.limit, len(pools["rl"])))) if cfg.limit else pools["rl"]
        return Splits(sft=pools["sft"], rl=rl, eval=pools["eval"])
    ds = prepare_rows(load_rows(cfg.source, cfg.split, cfg.subset), cfg, cfg.source)
    if cfg.eval_source:
        evaluation = load_rows(cfg.eval_source, cfg.eval_split, cfg.subset if cfg.eval_source == cfg.source else None)
        train, evaluation = ds, prepare_rows(evaluation, cfg, cfg.eval_source)
    else:
        train, evaluation = train_eval_split(ds, cfg.eval_size, seed)
    if cfg.limit:
        train = train.select(range(min(cfg.limit, len(train))))
    sft = train if cfg.solution_field in train.column_names else None
    return Splits(sft=sft, rl=train, eval=evaluation)
