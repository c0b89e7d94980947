"""Sequence log-probabilities of preference pairs, and the reference model's, computed once and cached.

DPO needs log pi_ref(answer | prompt) for every chosen and rejected answer; KTO for every answer and the
mismatched "KL" answer it is paired with (grpo.data.unpaired.with_kl_answers), which it passes here as a
TokenizedPair of (answer, KL answer): everything below treats a pair as two continuations of one prompt.
They never change during training, so one no-grad pass over the data before the first step replaces
a second model in memory for the whole run. The pass runs on the policy itself before it has taken a step (the
reference *is* the initial policy), so at no time do two copies of the weights exist.

The result is cached in a file whose name is a key over everything that determines it: the
reference weights (file contents), the token ids of every pair, the tokenizer, and the settings
(dtype, precision, cache format). Changing any of them changes the key, so a stale cache is never
read; a matching file is loaded instead of recomputed (a resumed run, a second run on the same data).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from grpo.algorithms.logprobs import gather_logprobs
from grpo.algorithms.packing import PromptSharing, pack_shared_prefix, packed_token_logprobs
from grpo.data.preferences import TokenizedPair
from grpo.runtime.distributed import all_gather_objects, barrier, lockstep_chunks, to_device
from grpo.runtime.models import model_files

CACHE_FORMAT = 1


# ---------------------------------------------------------------------------------------------
# Sequence logprobs of pairs (shared by the reference pass and the DPO update)


def pair_batch(pairs: Sequence[TokenizedPair], pad_id: int,
               sharing: PromptSharing | None = None) -> dict[str, torch.Tensor]:
    """The b chosen sequences first, then the b rejected ones: answer_lengths [2b], real_tokens (int), and

    - padded (no `sharing`): right-padded prompt+answer rows input_ids, attention_mask [2b, S] and
      answer_mask [2b, S-1] on the shifted grid where position t predicts token t+1;
    - shared: `packed`, each pair's prompt once with both answers after it when that is cheaper
      (grpo.algorithms.packing); packed sequence 2i is pair i's chosen answer, 2i+1 its rejected one."""
    lengths = [len(p.chosen_ids) for p in pairs] + [len(p.rejected_ids) for p in pairs]
    if sharing is not None:
        packed = pack_shared_prefix([(p.prompt_ids, [p.chosen_ids, p.rejected_ids]) for p in pairs], pad_id,
                                    sharing.max_row_tokens, sharing.attention_cost)
        return {"packed": packed, "answer_lengths": torch.tensor(lengths, dtype=torch.float32),
                "real_tokens": packed.real_tokens}
    return _padded_rows([(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs],
                        pad_id)


def continuation_batch(items: Sequence[tuple[list[int], Sequence[list[int]]]], pad_id: int,
                       sharing: PromptSharing | None = None) -> dict[str, torch.Tensor]:
    """Any number of continuations per prompt, `items` = (prompt ids, [answer ids, ...]); `sequence_logps`
    then gives one sum per answer, flat in item order (KTO's answers, grouped by prompt so that answers of
    one prompt share it). Same keys as `pair_batch`."""
    flat = [(prompt, ans) for prompt, answers in items for ans in answers]
    if sharing is not None:
        packed = pack_shared_prefix([(list(prompt), list(answers)) for prompt, answers in items], pad_id,
                                    sharing.max_row_tokens, sharing.attention_cost)
        return {"packed": packed, "flat": True, "real_tokens": packed.real_tokens,
                "answer_lengths": torch.tensor([len(a) for _, a in flat], dtype=torch.float32)}
    return _padded_rows(flat, pad_id)


def _padded_rows(seqs_by_part: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded (prompt + answer) rows with the answer mask on the shifted grid."""
    seqs = [list(prompt) + list(ans) for prompt, ans in seqs_by_part]
    starts = [len(prompt) for prompt, _ in seqs_by_part]
    lengths = [len(ans) for _, ans in seqs_by_part]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    answer_mask = torch.zeros((len(seqs), width - 1), dtype=torch.bool)
    for i, (s, start, n) in enumerate(zip(seqs, starts, lengths)):
        input_ids[i, :len(s)] = torch.tensor(s)
        attention[i, :len(s)] = 1
        answer_mask[i, start - 1:start - 1 + n] = True
    return {"input_ids": input_ids, "attention_mask": attention, "answer_mask": answer_mask,
            "answer_lengths": torch.tensor(lengths, dtype=torch.float32), "real_tokens": sum(len(s) for s in seqs)}


def sequence_logps(forward: Callable, batch: dict,
                   mask_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(summed answer logprob [2b] (continuation_batch: [n] flat), token logprobs [2b, S-1] masked to the answers;
    None when packed) under
    `forward(input_ids, attention_mask[, position_ids]) -> logits`."""
    if "packed" in batch:
        packed = batch["packed"]
        lp, _ = packed_token_logprobs(forward, packed, dtype=mask_dtype)  # [N]
        sums = lp.new_zeros(packed.num_sequences).index_add(0, packed.sequence, lp)  # in continuation order
        if batch.get("flat"):  # continuation_batch: as given
            return sums, None
        return torch.cat([sums[0::2], sums[1::2]]), None  # pairs: chosen block, then rejected block
    logits = forward(batch["input_ids"], batch["attention_mask"])[:, :-1]  # [2b, S-1, V]
    logps = gather_logprobs(logits, batch["input_ids"][:, 1:]) * batch["answer_mask"]  # [2b, S-1]
    return logps.sum(-1), logps


# ---------------------------------------------------------------------------------------------
# The reference pass


@dataclass
class ReferenceLogps:
    chosen: torch.Tensor  # [N] float32, summed answer logprob under the reference
    rejected: torch.Tensor  # [N]

    def __len__(self) -> int:
        return len(self.chosen)


@torch.no_grad()
def compute_reference_logps(forward: Callable, pairs: Sequence[TokenizedPair], *, pad_id: int,
                            micro_batch_size: int, device: torch.device | None = None, rank: int = 0,
                            world_size: int = 1, sharing: PromptSharing | None = None,
                            mask_dtype: torch.dtype = torch.float32) -> ReferenceLogps:
    """One no-grad pass; each rank computes every world_size-th pair and all ranks get the whole.
    `sharing` runs each prompt once for both answers (`pair_batch`)."""
    mine = list(range(rank, len(pairs), world_size))
    out: dict[int, tuple[float, float]] = {}
    for idx, filler in lockstep_chunks(mine, micro_batch_size, 0):
        batch = pair_batch([pairs[i] for i in idx], pad_id, sharing)
        if device is not None:
            batch = to_device(batch, device)
        sums, _ = sequence_logps(forward, batch, mask_dtype)
        if filler:
            continue
        sums = sums.float().cpu()
        b = len(idx)
        for j, i in enumerate(idx):
            out[i] = (float(sums[j]), float(sums[b + j]))
    merged: dict[int, tuple[float, float]] = {}
    for part in all_gather_objects(out):
        merged.update(part)
    chosen = torch.tensor([merged[i][0] for i in range(len(pairs))], dtype=torch.float32)
    rejected = torch.tensor([merged[i][1] for i in range(len(pairs))], dtype=torch.float32)
    return ReferenceLogps(chosen, rejected)


# ---------------------------------------------------------------------------------------------
# The cache key and file


def _sha() -> "hashlib._Hash":
    return hashlib.sha256()


def model_fingerprint(model_dir: str | Path) -> str:
    """Hash of a model directory's weights and config, by content (a retrained model in the same
    directory gets a new fingerprint)."""
    model_dir = Path(model_dir)
    h = _sha()
    files = model_files(model_dir)
    if not files:
        raise FileNotFoundError(f"{model_dir}: no weight files to fingerprint")
    for p in files:
        h.update(p.name.encode() + b"\0")
        with p.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def data_fingerprint(pairs: Sequence[TokenizedPair]) -> str:
    h = _sha()
    for p in pairs:
        h.update(json.dumps([p.prompt_ids, p.chosen_ids, p.rejected_ids]).encode() + b"\n")
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    h = _sha()
    info = {"class": type(tokenizer).__name__, "size": len(tokenizer),
            "chat_template": getattr(tokenizer, "chat_template", None),
            "special": {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())}}
    h.update(json.dumps(info, sort_keys=True).encode())
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    h.update(json.dumps(sorted(vocab.items(), key=lambda kv: kv[1])).encode())
    return h.hexdigest()


def cache_key(*, model_dir: str | Path, pairs: Sequence[TokenizedPair], tokenizer, settings: dict) -> str:
    """A short key that changes whenever the weights, the pairs, the tokenizer or the settings do."""
    parts = {"format": CACHE_FORMAT, "model": model_fingerprint(model_dir), "data": data_fingerprint(pairs),
             "tokenizer": tokenizer_fingerprint(tokenizer), "settings": settings}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def cache_file(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / f"ref_logps-{key}.pt"


def load_cached(path: Path, key: str, n: int) -> ReferenceLogps | None:
    """The cached logprobs if `path` holds exactly this key and pair count, else None."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a truncated or foreign file: recompute
        return None
    if blob.get("key") != key or blob.get("format") != CACHE_FORMAT or len(blob.get("chosen", [])) != n:
        return None
    return ReferenceLogps(blob["chosen"], blob["rejected"])


def save_cached(path: Path, key: str, ref: ReferenceLogps) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"key": key, "format": CACHE_FORMAT, "chosen": ref.chosen, "rejected": ref.rejected}, tmp)
    tmp.replace(path)


def writable_dir(preferred: Path, fallback: Path) -> Path:
    """`preferred` if a file can be written there (beside the user's data), else `fallback`."""
    try:
        preferred.mkdir(parents=True, exist_ok=True)
        probe = preferred / ".write_probe"
        probe.write_text("")
        probe.unlink()
        return preferred
    except OSError:
        return fallback


def load_or_compute(path: Path, key: str, n: int, compute: Callable[[], ReferenceLogps], *,
                    is_main: bool = True) -> tuple[ReferenceLogps, bool]:
    """(logprobs, True when read from the cache). Rank 0 writes the file; every rank computes its
    share when it is missing (the compute function gathers)."""

    hit = load_cached(path, key, n)
    # All ranks must agree, or some would wait in the gather of a pass the others skip.
    if not all(all_gather_objects(hit is not None)):
        hit = None
    if hit is not None:
        return hit, True
    ref = compute()
    if is_main:
        save_cached(path, key, ref)
    barrier()
    return ref, False
