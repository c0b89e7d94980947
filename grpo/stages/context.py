"""What the stages share in one process: the config, the rank, the run directory, the tokenizer,
the data splits, the verifier, one metrics log, and one rollout engine (built on first use and
reused by every later stage: its weights are pushed in, it is never rebuilt)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpo.config import ConfigError, RunConfig
from grpo.data.rows import Example, Splits, to_examples
from grpo.runtime.distributed import DistInfo
from grpo.metrics import MetricsLogger


@dataclass
class StageContext:
    cfg: RunConfig
    dist: DistInfo
    run_dir: Path
    base_model_path: str  # the model the run started from (the rollout engine is built on it)
    tokenizer: Any
    splits: Splits
    _rollout: Any = None
    _sampler: Any = None
    _tool_format: Any = None
    _verifier: Any = None
    _loggers: dict = field(default_factory=dict)
    _examples: dict = field(default_factory=dict)

    def log(self, stage: str) -> MetricsLogger:
        if stage not in self._loggers:
            m = self.cfg.metrics
            self._loggers[stage] = MetricsLogger(self.run_dir, stage=stage, tensorboard=m.tensorboard,
                                                 wandb_project=m.wandb_project, run_name=self.cfg.name,
                                                 enabled=self.dist.is_main)
        return self._loggers[stage]

    @property
    def show_progress(self) -> bool:
        return self.cfg.metrics.progress_bar and self.dist.is_main

    def examples(self, split: str) -> list[Example]:
        """Prompts of a split ("rl" or "eval") with the chat template applied, validated once."""
        if split not in self._examples:
            ds = getattr(self.splits, split)
            source = (self.cfg.data.eval_source or self.cfg.data.source) if split == "eval" else self.cfg.data.source
            tools = self.tool_format.tools if self.cfg.tools.enabled else None
            self._examples[split] = to_examples(ds, self.cfg.data, self.tokenizer, source=source, tools=tools)
        return self._examples[split]

    @property
    def tool_format(self):
        """The call format of `tools.format` (grpo.data.tool_format): prompts, rollouts and SFT demonstrations use it."""
        if self._tool_format is None:
            from grpo.runtime.tools import make_format

            self._tool_format = make_format(self.cfg.tools, self.tokenizer, self.cfg.data.system_prompt)
        return self._tool_format

    @property
    def rollout(self):
        if self._rollout is None and self.cfg.rollout.mode == "async" and self.dist.role == "train":
            from grpo.runtime.inference import RemoteRollout, link

            self._rollout = RemoteRollout(link())  # the engines are in the inference processes
        if self._rollout is None:
            from grpo.runtime.rollout import create_rollout

            max_len = self.cfg.data.max_prompt_tokens + self.cfg.rollout.max_tokens
            max_pos = getattr(self.tokenizer, "model_max_length", None)
            if isinstance(max_pos, int) and max_pos < 10**6:
                max_len = min(max_len, max_pos)
            from grpo.runtime.lora import adapter_base, is_adapter_only, resolve_push, vllm_max_lora_rank

            lora = self.cfg.model.lora
            adapter_push = "grpo" in self.cfg.stages and resolve_push(lora, self.cfg.rollout.backend) == "adapter"
            # A LoRA stage output without a merged model (model.lora.save_merged: false) as the run's start: the
            # engine is built on the adapter's base; the stages and evaluations push base + adapter into it.
            engine_model = (adapter_base(self.base_model_path) if is_adapter_only(self.base_model_path)
                            else self.base_model_path)
            self._rollout = create_rollout(self.cfg.rollout, engine_model, tokenizer=self.tokenizer,
                                           dtype=self.cfg.model.dtype, max_model_len=max_len,
                                           max_lora_rank=vllm_max_lora_rank(lora.rank) if adapter_push else None)
        return self._rollout

    @property
    def sampler(self):
        """What GRPO and evaluation sample episodes with: the rollout engine itself, or with `tools.enabled` the
        multi-turn tool rollout driving it (same `generate`; weights are still pushed into `rollout`). A training
        process of rollout.mode: async samples through the inference processes, which run the tool episodes."""
        if not self.cfg.tools.enabled or (self.cfg.rollout.mode == "async" and self.dist.role == "train"):
            return self.rollout
        if self._sampler is None:
            from grpo.runtime.tool_rollout import ToolRollout

            self._sampler = ToolRollout(self.rollout, self.tokenizer, self.cfg.tools, self.tool_format)
        return self._sampler

    @property
    def verifier(self):
        if self._verifier is None:
            import verifiers

            specs = []
            for spec in self.cfg.verifiers:
                options = dict(spec.options)
                if spec.name == "code":
                    options.setdefault("limits", self.cfg.verify.sandbox)
                specs.append({"name": spec.name, "weight": spec.weight, **options})
            try:
                self._verifier = verifiers.build(specs, workers=self.cfg.verify.workers,
                                                 timeout_s=self.cfg.verify.timeout_s)
            except (ValueError, TypeError) as exc:  # an unknown name, a plug-in that cannot load, bad options
                raise ConfigError(f"verifiers: {exc}") from None
        return self._verifier

    def close(self) -> None:
        if self.cfg.rollout.mode == "async" and self.dist.role == "train":
            self.rollout.close()  # tells the inference processes to stop (also when no stage used them)
        for logger in self._loggers.values():
            logger.close()
        if self._verifier is not None:
            self._verifier.close()
        if self._sampler is not None:
            self._sampler.close()
