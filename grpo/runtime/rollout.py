"""Rollouts: G sampled completions per prompt, with the sampler's token logprobs.

The only module that imports vLLM. Two backends behind one interface:
- `VLLMRollout`: a vLLM engine colocated with each training rank (`external_launcher`), weights
  pushed in after every optimizer step with `reload_weights` (the call that works on the CPU build,
  DESIGN.md), optional sleep mode and tensor parallelism on GPUs.
- `HFRollout`: transformers `generate` on a private copy of the policy, for machines without vLLM
  and for exactness tests.
Every request carries its own seed, so the same (seed, step, prompt) samples the same completions
whatever happened before: that is what makes resumed runs match uninterrupted ones.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import torch

from grpo.config import RolloutConfig


class WeightSyncError(RuntimeError):
    """The rollout engine's logprobs no longer match the trainer's: it does not sample from the trained policy."""


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    logprobs: list[float] | None  # sampler logprob of each generated token (temperature applied)
    truncated: bool  # stopped by max_tokens, not by EOS/stop
    # Multi-turn tool episodes (grpo.runtime.tool_rollout): token_ids interleave model and tool segments;
    # loss_mask[i] is True where the model sampled token i (logprobs hold 0.0 at tool tokens); tool_calls has one
    # {"tool", "status", "wall_s"} per call. None for plain completions (every token is the model's).
    loss_mask: list[bool] | None = None
    tool_calls: list[dict] | None = None


@dataclass
class Group:
    """All completions of one prompt."""

    prompt: str
    prompt_ids: list[int]
    completions: list[Completion] = field(default_factory=list)


@dataclass
class SamplingSpec:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int = 256

    @classmethod
    def from_config(cls, cfg: RolloutConfig, n: int, **changes) -> "SamplingSpec":
        spec = cls(n=n, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, max_tokens=cfg.max_tokens)
        for k, v in changes.items():
            setattr(spec, k, v)
        return spec


class Rollout(Protocol):
    def generate(self, prompts: Sequence[str], spec: SamplingSpec, seeds: Sequence[int]) -> list[Group]: ...

    def push_weights(self, named_weights: Iterable[tuple[str, torch.Tensor]]) -> float: ...

    def token_logprobs(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]: ...

    def sleep(self) -> None: ...

    def wake_up(self) -> None: ...


ROTARY_WARNING = "RotaryEmbedding: Failed to load weights"


class _RotaryTableFilter(logging.Filter):
    """vLLM counts the rotary embedding's cos/sin table as a loadable weight, and warns on every reload that
    the checkpoint did not supply it; it is computed from the config, not trained, and the reload keeps it
    as it was. Said once in those words (rank 0), then dropped."""

    explained = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() != ROTARY_WARNING:
            return True
        if not _RotaryTableFilter.explained and os.environ.get("RANK", "0") == "0":
            print("[rollout] weight push: vLLM keeps its rotary cos/sin table (computed, not trained), so its "
                  f"warning '{ROTARY_WARNING}' is expected and not shown again", file=sys.stderr, flush=True)
        _RotaryTableFilter.explained = True
        return False


_ROTARY_FILTER = _RotaryTableFilter()


@contextlib.contextmanager
def quiet_weight_push():
    """vLLM logs three INFO lines and the rotary warning on every reload (every optimizer step): keep its
    warnings and errors, drop the rest while a push runs."""
    vllm_logger = logging.getLogger("vllm")
    layerwise = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    level = vllm_logger.level
    vllm_logger.setLevel(max(level, logging.WARNING))
    layerwise.addFilter(_ROTARY_FILTER)
    try:
        yield
    finally:
        vllm_logger.setLevel(level)
        layerwise.removeFilter(_ROTARY_FILTER)


class VLLMRollout:
    def __init__(self, model_path: str, cfg: RolloutConfig, *, dtype: str = "float32",
                 max_model_len: int | None = None, max_lora_rank: int | None = None):
        # Colocated with a DeepSpeed rank in the same process (DESIGN.md): the engine core must not
        # run in a separate process, and the executor reuses torch.distributed's groups.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        kwargs = dict(model=model_path, dtype=dtype, enforce_eager=cfg.enforce_eager,
                      gpu_memory_utilization=cfg.gpu_memory_utilization, tensor_parallel_size=cfg.tensor_parallel_size,
                      seed=cfg.seed, logprobs_mode="processed_logprobs", enable_prefix_caching=True,
                      # Seeded requests (our exact-resume guarantee) crash the CPU backend when a prompt's
                      # prefill is split across steps ("CPU Generator does not use offset"): prefill whole.
                      enable_chunked_prefill=False)
        if torch.distributed.is_initialized():
            kwargs["distributed_executor_backend"] = "external_launcher"
        if cfg.enable_sleep_mode:
            kwargs["enable_sleep_mode"] = True
        if max_lora_rank:
            # Adapter pushes (model.lora.push: adapter): one adapter, the policy's, replaced after every step.
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
        if cfg.kv_cache_gb:
            kwargs["kv_cache_memory_bytes"] = int(cfg.kv_cache_gb * 1024**3)
        if max_model_len or cfg.max_model_len:
            kwargs["max_model_len"] = cfg.max_model_len or max_model_len
        self.cfg = cfg
        # On the CPU, vLLM drops torch to one thread and replaces torch.set_num_threads with a no-op
        # for the whole process; the trainer shares this process and needs its threads back.
        train_threads, set_threads = torch.get_num_threads(), torch.set_num_threads
        self.llm = LLM(**kwargs)
        torch.set_num_threads = set_threads
        self._train_threads = train_threads
        self._gen_threads = torch.get_num_threads()
        torch.set_num_threads(train_threads)
        self.tokenizer = self.llm.get_tokenizer()
        self._asleep = False
        self.lora_enabled = bool(max_lora_rank)
        self._lora_request = None  # the pushed adapter, applied to every request until the next push
        self._lora_version = 0

    def _params(self, spec: SamplingSpec, seed: int):
        from vllm import SamplingParams

        greedy = spec.temperature == 0
        return SamplingParams(n=spec.n, temperature=spec.temperature, top_p=1.0 if greedy else spec.top_p,
                              top_k=-1 if greedy else spec.top_k, max_tokens=spec.max_tokens, seed=seed,
                              # flat: one array per completion instead of a dict per token; no incremental
                              # detokenization (we stop on EOS only, never on strings): one batch_decode below
                              logprobs=0, flat_logprobs=True, detokenize=False)

    def generate(self, prompts: Sequence[str], spec: SamplingSpec, seeds: Sequence[int]) -> list[Group]:
        params = [self._params(spec, s) for s in seeds]
        torch.set_num_threads(self._gen_threads)
        try:
            outputs = self.llm.generate(list(prompts), params, use_tqdm=False, lora_request=self._lora_request)
        finally:
            torch.set_num_threads(self._train_threads)
        # Decoded like HFRollout: the whole completion at once, special tokens dropped.
        texts = iter(self.tokenizer.batch_decode([list(c.token_ids) for out in outputs for c in out.outputs],
                                                 skip_special_tokens=True))
        groups = []
        for prompt, out in zip(prompts, outputs):
            group = Group(prompt=prompt, prompt_ids=list(out.prompt_token_ids))
            for c in out.outputs:
                lps = None
                if c.logprobs is not None:
                    flat = getattr(c.logprobs, "logprobs", None)  # FlatLogprobs: one entry per token at logprobs=0
                    if flat is not None and list(c.logprobs.token_ids) == list(c.token_ids):
                        lps = list(flat)
                    else:
                        lps = [step[tok].logprob for step, tok in zip(c.logprobs, c.token_ids)]
                group.completions.append(Completion(text=next(texts), token_ids=list(c.token_ids), logprobs=lps,
                                                    truncated=c.finish_reason == "length"))
            groups.append(group)
        return groups

    def generate_tokens(self, prompt_ids: Sequence[list[int]], spec: SamplingSpec, seeds: Sequence[int],
                        stop: Sequence[str] = (), max_tokens: Sequence[int] | None = None) -> list[Completion]:
        """One completion per token-id prompt (no re-tokenization: the engine continues exactly these ids), ending
        at EOS, at `max_tokens[i]` (default spec.max_tokens) or just after one of the `stop` strings (the tokens
        that completed it are kept). For multi-turn tool episodes (grpo.runtime.tool_rollout)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        greedy = spec.temperature == 0
        params = [SamplingParams(n=1, temperature=spec.temperature, top_p=1.0 if greedy else spec.top_p,
                                 top_k=-1 if greedy else spec.top_k, seed=seed, logprobs=0, flat_logprobs=True,
                                 max_tokens=spec.max_tokens if max_tokens is None else max_tokens[i],
                                 # stop strings are matched on detokenized text; without them nothing to decode
                                 stop=list(stop), include_stop_str_in_output=True, detokenize=bool(stop))
                  for i, seed in enumerate(seeds)]
        torch.set_num_threads(self._gen_threads)
        try:
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_ids], params,
                                        use_tqdm=False, lora_request=self._lora_request)
        finally:
            torch.set_num_threads(self._train_threads)
        done = []
        for out in outputs:
            c = out.outputs[0]
            flat = getattr(c.logprobs, "logprobs", None)
            lps = (list(flat) if flat is not None and list(c.logprobs.token_ids) == list(c.token_ids)
                   else [step[tok].logprob for step, tok in zip(c.logprobs, c.token_ids)])
            done.append(Completion(text=self.tokenizer.decode(list(c.token_ids), skip_special_tokens=True),
                                   token_ids=list(c.token_ids), logprobs=lps, truncated=c.finish_reason == "length"))
        return done

    def push_weights(self, named_weights: Iterable[tuple[str, torch.Tensor]]) -> float:
        """Load the trainer's weights into the engine; returns seconds taken."""
        t0 = time.perf_counter()
        with quiet_weight_push():
            # Consumed lazily (the engine runs in this process): a ZeRO-3 gather or a bridge bucket at a time is
            # copied into vLLM's weights, never a whole second copy of the model.
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(named_weights)})
            # Cached KV blocks were computed with the old weights.
            self.llm.reset_prefix_cache()
        self._lora_request = None  # these weights are the whole policy
        return time.perf_counter() - t0

    def push_adapter(self, adapter_dir: str | Path) -> float:
        """Sample from the engine's weights + the LoRA adapter saved in `adapter_dir` (peft format) from now on;
        returns seconds taken (loading included: vLLM loads an adapter on its first request, here at once)."""
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        if not self.lora_enabled:
            raise RuntimeError("push_adapter: this vLLM engine was built without LoRA support (max_lora_rank)")
        t0 = time.perf_counter()
        # A new id per push: vLLM caches adapters (and prefix-cache blocks) by id, so the new weights are loaded
        # and no KV block computed under the old adapter is reused.
        self._lora_version += 1
        self._lora_request = LoRARequest(f"policy-{self._lora_version}", self._lora_version, str(adapter_dir))
        with quiet_weight_push():
            self.llm.generate(["0"], SamplingParams(max_tokens=1), use_tqdm=False, lora_request=self._lora_request)
        return time.perf_counter() - t0

    def token_logprobs(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        """Engine logprobs of a fixed completion (temperature 1), for sampler/trainer agreement checks."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0)
        out = self.llm.generate([TokensPrompt(prompt_token_ids=list(prompt_ids) + list(completion_ids))], params,
                                use_tqdm=False, lora_request=self._lora_request)[0]
        ids = list(prompt_ids) + list(completion_ids)
        lps = out.prompt_logprobs
        return [lps[i][ids[i]].logprob for i in range(len(prompt_ids), len(ids))]

    def sleep(self) -> None:
        if self.cfg.enable_sleep_mode and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    def wake_up(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False


class HFRollout:
    """transformers `generate` on a private copy of the policy (weights pushed like vLLM's)."""

    def __init__(self, model_path: str, cfg: RolloutConfig, *, tokenizer, dtype: torch.dtype = torch.float32):
        from transformers import AutoModelForCausalLM

        self.cfg = cfg
        self.tokenizer = tokenizer
        from grpo.runtime.distributed import device

        # On the training device: on a GPU machine the default (CPU) would sample on the CPU.
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).eval().to(device())
        self.model.requires_grad_(False)
        self.device = self.model.device

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], spec: SamplingSpec, seeds: Sequence[int]) -> list[Group]:
        tok = self.tokenizer
        groups = []
        eos = tok.eos_token_id
        for prompt, seed in zip(prompts, seeds):
            prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            inputs = torch.tensor([prompt_ids], device=self.device)
            torch.manual_seed(seed)
            greedy = spec.temperature == 0
            gen_kwargs = dict(max_new_tokens=spec.max_tokens, num_return_sequences=spec.n, do_sample=not greedy,
                              output_scores=True, return_dict_in_generate=True, pad_token_id=tok.pad_token_id,
                              eos_token_id=eos, attention_mask=torch.ones_like(inputs))
            if not greedy:
                gen_kwargs.update(temperature=spec.temperature, top_p=spec.top_p,
                                  top_k=spec.top_k if spec.top_k > 0 else 0)
            out = self.model.generate(inputs, **gen_kwargs)
            seqs = out.sequences[:, len(prompt_ids):]  # [n, T_new]
            # scores are the processed logits (temperature/top-k/top-p applied), like vLLM's processed logprobs
            logps = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in out.scores], dim=1)  # [n, T_new, V]
            group = Group(prompt=prompt, prompt_ids=list(prompt_ids))
            for row, lp_row in zip(seqs, logps):
                ids = row.tolist()
                finished = eos in ids
                if finished:
                    ids = ids[: ids.index(eos) + 1]
                else:
                    ids = [t for t in ids if t != tok.pad_token_id] if tok.pad_token_id != eos else ids
                lps = [lp_row[i, t].item() for i, t in enumerate(ids)]
                text = tok.decode(ids, skip_special_tokens=True)
                group.completions.append(Completion(text=text, token_ids=ids, logprobs=lps, truncated=not finished))
            groups.append(group)
        return groups

    @torch.no_grad()
    def generate_tokens(self, prompt_ids: Sequence[list[int]], spec: SamplingSpec, seeds: Sequence[int],
                        stop: Sequence[str] = (), max_tokens: Sequence[int] | None = None) -> list[Completion]:
        """As VLLMRollout.generate_tokens, one request at a time (transformers' `stop_strings`)."""
        tok, eos, done = self.tokenizer, self.tokenizer.eos_token_id, []
        for i, (ids, seed) in enumerate(zip(prompt_ids, seeds)):
            inputs = torch.tensor([list(ids)], device=self.device)
            torch.manual_seed(seed)
            greedy = spec.temperature == 0
            gen_kwargs = dict(max_new_tokens=spec.max_tokens if max_tokens is None else max_tokens[i],
                              do_sample=not greedy, output_scores=True, return_dict_in_generate=True,
                              pad_token_id=tok.pad_token_id, eos_token_id=eos, attention_mask=torch.ones_like(inputs))
            if stop:
                gen_kwargs.update(stop_strings=list(stop), tokenizer=tok)
            if not greedy:
                gen_kwargs.update(temperature=spec.temperature, top_p=spec.top_p,
                                  top_k=spec.top_k if spec.top_k > 0 else 0)
            out = self.model.generate(inputs, **gen_kwargs)
            new = out.sequences[0, len(ids):].tolist()
            logps = [torch.log_softmax(s[0].float(), dim=-1) for s in out.scores]  # processed logits, per step
            ended = eos in new
            new = new[: new.index(eos) + 1] if ended else new
            text = tok.decode(new, skip_special_tokens=True)
            stopped = ended or any(s in text for s in stop)
            done.append(Completion(text=text, token_ids=new, logprobs=[logps[j][t].item() for j, t in enumerate(new)],
                                   truncated=not stopped))
        return done

    def push_weights(self, named_weights: Iterable[tuple[str, torch.Tensor]]) -> float:
        t0 = time.perf_counter()
        self.model.load_state_dict(dict(named_weights), strict=False)
        return time.perf_counter() - t0

    @torch.no_grad()
    def token_logprobs(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        ids = torch.tensor([list(prompt_ids) + list(completion_ids)], device=self.device)
        logits = self.model(ids).logits[0, len(prompt_ids) - 1:-1].float()
        return torch.log_softmax(logits, -1).gather(-1, ids[0, len(prompt_ids):, None]).squeeze(-1).tolist()

    def sleep(self) -> None:
        pass

    def wake_up(self) -> None:
        pass


def create_rollout(cfg: RolloutConfig, model_path: str, *, tokenizer, dtype: str = "float32",
                   max_model_len: int | None = None, max_lora_rank: int | None = None) -> Rollout:
    if cfg.backend == "vllm":
        return VLLMRollout(model_path, cfg, dtype=dtype, max_model_len=max_model_len, max_lora_rank=max_lora_rank)
    from grpo.runtime.models import DTYPES

    return HFRollout(model_path, cfg, tokenizer=tokenizer, dtype=DTYPES[dtype])
