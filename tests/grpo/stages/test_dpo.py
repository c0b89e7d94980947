"""DPO: verifier-built pairs and their choice rules, precomputed reference logprobs equal to a live
reference (and cached by a key that follows model and data), a bad file refused before training,
and training on a small preference file raising held-out margin and accuracy in every file format."""
import json
import random
from dataclasses import dataclass

import pytest
import torch

from grpo.config import EngineConfig, ModelConfig, RunConfig
from grpo.data.rows import DataError
from grpo.data.verifier_pairs import build_verifier_pairs, choose_pair
from grpo.data.preferences import TokenizedPair
from grpo.runtime.reference_cache import (cache_key, compute_reference_logps, load_or_compute, pair_batch,
                                  sequence_logps)
from grpo.runtime.rollout import Completion, Group, SamplingSpec
from verifiers.base import Score


@pytest.fixture
def micro_model_dir(tiny_model_dir):
    return str(tiny_model_dir)  # the session's micro-preset model (tests/conftest.py)


# ---------------------------------------------------------------------------------------------
# Verifier-built pairs


def completions(*texts, truncated=()):
    return [Completion(text=t, token_ids=list(range(len(t))), logprobs=None, truncated=i in truncated)
            for i, t in enumerate(texts)]


def scores(*answers_and_rewards):
    return [Score(r, {"details": {"math": {"extracted": a}}}) for a, r in answers_and_rewards]


def test_choice_rules():
    comps = completions("right but long", "ok", "wrong 7", "also 7 wrong!", "wrong 9 but longest of all")
    sc = scores(("4", 1.0), ("4", 1.0), ("7", 0.0), ("7", 0.0), ("9", 0.0))
    assert choose_pair(comps, sc) == (1, 2)  # shortest correct; shortest completion of the most frequent wrong answer
    assert choose_pair(comps, sc, rejected_rule="longest") == (1, 4)
    c, r = choose_pair(comps, sc, chosen_rule="random", rejected_rule="random", rng=random.Random(3))
    assert c in (0, 1) and r in (2, 3, 4)
    assert choose_pair(comps[:2], sc[:2]) == "all_correct"
    assert choose_pair(comps[2:], sc[2:]) == "all_wrong"
    # A correct answer that ran out of tokens is never the chosen one.
    assert choose_pair(completions("4", "7", truncated=(0,)), scores(("4", 1.0), ("7", 0.0))) == \
        "only_truncated_correct"
    with pytest.raises(ValueError, match="dpo.chosen_rule"):
        choose_pair(comps, sc, chosen_rule="best")


class FakeRollout:
    """Answers of prompt i: 'a<j>' where j-th sample is right iff pattern[i][j] == 'y'."""

    def __init__(self, patterns):
        self.patterns = patterns
        self.seen_seeds = []

    def generate(self, prompts, spec, seeds):
        self.seen_seeds += list(seeds)
        out = []
        for p in prompts:
            i = int(p.split()[-1])
            g = Group(prompt=p, prompt_ids=[100 + i])
            for j, flag in enumerate(self.patterns[i][: spec.n]):
                text = ("R" if flag == "y" else "W") * (j + 1)
                g.completions.append(Completion(text, [ord(ch) for ch in text], None, False))
            out.append(g)
        return out


class FakeVerifier:
    def score_batch(self, texts, rows):
        return [Score(1.0 if t.startswith("R") else 0.0, {"extracted": t}) for t in texts]


@dataclass
class Ex:
    prompt: str
    row: dict


def test_build_verifier_pairs_skips_prompts_without_contrast_and_reports():
    patterns = ["yyyy", "nnnn", "nyny", "yynn", "nnny"]
    rollout = FakeRollout(patterns)
    examples = [Ex(f"prompt {i}", {}) for i in range(5)]
    pairs, report = build_verifier_pairs(rollout, FakeVerifier(), examples, spec=SamplingSpec(n=4), seed=0,
                                         batch_size=2)
    assert (report.prompts, report.samples, report.pairs) == (5, 20, 3)
    assert (report.skipped_all_correct, report.skipped_all_wrong, report.skipped) == (1, 1, 2)
    assert report.correct_fraction == pytest.approx(9 / 20)
    assert [p.row for p in pairs] == [2, 3, 4]
    # prompt 2 "nyny": chosen = shortest right "RR", rejected = first of the (all distinct) wrong answers
    assert pairs[0].prompt_ids == [102] and pairs[0].chosen_ids == [ord("R")] * 2
    assert pairs[0].rejected_ids == [ord("W")]
    assert len(set(rollout.seen_seeds)) == 5  # one seed per prompt


# ---------------------------------------------------------------------------------------------
# Reference logprobs


def random_pairs(n, seed=0, vocab=(6, 200)):
    rng = random.Random(seed)

    def ids(lo, hi):
        return [rng.randrange(*vocab) for _ in range(rng.randint(lo, hi))]

    return [TokenizedPair(ids(2, 9), ids(1, 7), ids(1, 7), row=i) for i in range(n)]


def test_precomputed_reference_equals_a_live_reference_and_is_cached(tmp_path, micro_model_dir):
    from grpo.runtime.models import load_model
    from grpo.runtime.tiny_model import build_tokenizer

    pairs = random_pairs(11)
    # Precomputed: the policy itself, batched 4 pairs at a time (different padding than live).
    policy = load_model(micro_model_dir, ModelConfig(), trainable=True)
    policy.eval()
    fwd = (lambda ids, att: policy(input_ids=ids, attention_mask=att).logits)
    key = cache_key(model_dir=micro_model_dir, pairs=pairs, tokenizer=build_tokenizer(), settings={"dtype": "float32"})
    path = tmp_path / "cache" / f"{key}.pt"
    pre, hit = load_or_compute(path, key, len(pairs), lambda: compute_reference_logps(fwd, pairs, pad_id=0,
                                                                                      micro_batch_size=4))
    assert not hit and path.exists()
    # Live: a separate frozen reference model, one pair per forward (what a live reference computes).
    ref_model = load_model(micro_model_dir, ModelConfig(), trainable=False)
    for i, p in enumerate(pairs):
        sums, _ = sequence_logps(lambda ids, att: ref_model(input_ids=ids, attention_mask=att).logits,
                                 pair_batch([p], pad_id=0))
        assert float(pre.chosen[i]) == pytest.approx(float(sums[0]), abs=1e-4, rel=1e-5)
        assert float(pre.rejected[i]) == pytest.approx(float(sums[1]), abs=1e-4, rel=1e-5)
    # A second request with the same key reads the file instead of computing.
    again, hit = load_or_compute(path, key, len(pairs), lambda: pytest.fail("recomputed despite a valid cache"))
    assert hit and torch.equal(again.chosen, pre.chosen) and torch.equal(again.rejected, pre.rejected)


def test_cache_key_follows_weights_data_tokenizer_and_settings(tmp_path, micro_model_dir):
    import shutil

    from safetensors.torch import load_file, save_file

    from grpo.runtime.tiny_model import build_tokenizer

    tok = build_tokenizer()
    pairs = random_pairs(5)
    base = dict(model_dir=micro_model_dir, pairs=pairs, tokenizer=tok, settings={"dtype": "float32"})
    key = cache_key(**base)
    assert cache_key(**base) == key
    changed = [TokenizedPair(p.prompt_ids, p.chosen_ids, p.rejected_ids + [7]) if i == 3 else p
               for i, p in enumerate(pairs)]
    assert cache_key(**{**base, "pairs": changed}) != key
    assert cache_key(**{**base, "settings": {"dtype": "bfloat16"}}) != key
    other_tok = build_tokenizer(max_length=256)
    other_tok.chat_template = "{{ messages[0]['content'] }}"
    assert cache_key(**{**base, "tokenizer": other_tok}) != key
    moved = tmp_path / "model"
    shutil.copytree(micro_model_dir, moved)
    assert cache_key(**{**base, "model_dir": moved}) == key  # content, not the path
    weights = load_file(str(moved / "model.safetensors"))
    name = next(iter(weights))
    weights[name] = weights[name] + 1e-3
    save_file(weights, str(moved / "model.safetensors"), metadata={"format": "pt"})
    assert cache_key(**{**base, "model_dir": moved}) != key


# ---------------------------------------------------------------------------------------------
# Training


def letters_pairs(n, seed):
    """Chosen answers use letters a-m, rejected n-z: a preference a tiny model can pick up and that
    carries over to held-out prompts."""
    rng = random.Random(seed)

    def word(letters):
        return "".join(rng.choice(letters) for _ in range(rng.randint(3, 7)))

    return [(f"Say something about {word('abcdefghijklmnopqrstuvwxyz')}", word("abcdefghijklm"),
             word("nopqrstuvwxyz")) for _ in range(n)]


def write_pairs(path, fmt, triples):
    rows = []
    for q, c, r in triples:
        if fmt == "plain":
            rows.append({"prompt": q, "chosen": c, "rejected": r})
        elif fmt == "conversational":
            rows.append({"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": c}],
                         "rejected": [{"role": "assistant", "content": r}]})
        else:
            rows.append({"input": {"messages": [{"role": "user", "content": q}]},
                         "preferred_output": [{"role": "assistant", "content": c}],
                         "non_preferred_output": [{"role": "assistant", "content": r}]})
    path.write_text("\n".join(json.dumps(x) for x in rows) + "\n")
    return path


def dpo_config(tmp_path, name, pairs_file):
    cfg = RunConfig(name=name, output_dir=str(tmp_path / "runs"))
    cfg.metrics.tensorboard = cfg.metrics.progress_bar = False
    p = cfg.dpo
    p.pairs, p.pairs_file, p.pairs_eval_size = "file", str(pairs_file), 12
    p.batch_size, p.epochs, p.save_every, p.beta = 16, 2, 0, 0.1
    p.optim.lr, p.optim.warmup_steps = 1e-3, 0
    p.micro_batch_size = 16  # one micro-batch per step
    return cfg


def make_context(cfg, model_dir):
    from grpo.stages.context import StageContext
    from grpo.data.rows import Splits
    from grpo.runtime.engine import init_distributed
    from grpo.runtime.models import load_tokenizer
    from grpo.data.tasks.arithmetic import make_pools

    pools = make_pools({"sft": 4, "rl": 4, "eval": 4}, seed=0, max_digits=1)
    return StageContext(cfg=cfg, dist=init_distributed(EngineConfig()), run_dir=cfg.run_dir,
                        base_model_path=model_dir, tokenizer=load_tokenizer(model_dir, cfg.model),
                        splits=Splits(**pools))


def test_malformed_file_is_refused_with_its_row_before_training(tmp_path, micro_model_dir):
    from grpo.stages import dpo as dpo_loop

    path = write_pairs(tmp_path / "p.jsonl", "plain", letters_pairs(6, 0))
    lines = path.read_text().splitlines()
    lines[4] = json.dumps({"prompt": "q", "chosen": "same", "rejected": "same"})
    path.write_text("\n".join(lines) + "\n")
    cfg = dpo_config(tmp_path, "bad", path)
    ctx = make_context(cfg, micro_model_dir)
    with pytest.raises(DataError, match=r"row 4 \(line 5\): .*identical"):
        dpo_loop.train(ctx, micro_model_dir)
    ctx.close()
    assert not (cfg.run_dir / "dpo").exists()  # nothing was trained or written


@pytest.mark.slow
def test_dpo_raises_held_out_margin_and_accuracy_in_every_format(tmp_path, micro_model_dir):
    """The same 60 pairs as plain text, conversational messages and the hosted-API format all train;
    the conversational run uses a live reference model, the others precomputed logprobs: the three
    must end with the same held-out figures (the formats tokenize alike, and the two kinds of
    reference agree)."""
    from grpo.stages import dpo as dpo_loop

    triples = letters_pairs(60, 0)
    results = {}
    for fmt in ("plain", "conversational", "hosted"):
        cfg = dpo_config(tmp_path, fmt, write_pairs(tmp_path / f"{fmt}.jsonl", fmt, triples))
        cfg.dpo.precompute_reference = fmt != "conversational"
        ctx = make_context(cfg, micro_model_dir)
        final = dpo_loop.train(ctx, micro_model_dir)
        ctx.close()
        assert (final / "model.safetensors").exists()
        results[fmt] = json.loads((cfg.run_dir / "dpo" / "eval_pairs.json").read_text())
        if cfg.dpo.precompute_reference:
            assert list((tmp_path / f"{fmt}.jsonl.refcache").glob("ref_logps-*.pt"))  # cached beside the data
    for fmt, r in results.items():
        before, after = r["before"], r["after"]
        assert before["rewards/margins"] == pytest.approx(0.0, abs=1e-4), fmt
        assert after["rewards/margins"] > 0.3, fmt
        assert after["rewards/accuracy"] >= 0.9, fmt
        assert after["loss"] < before["loss"] - 0.1, fmt
    for key in ("rewards/margins", "rewards/accuracy", "loss"):
        assert results["hosted"]["after"][key] == pytest.approx(results["plain"]["after"][key], rel=1e-4, abs=1e-5)
        assert results["conversational"]["after"][key] == pytest.approx(results["plain"]["after"][key], rel=1e-2,
                                                                        abs=1e-3)


def test_batched_dpo_loss_and_gradient_equal_a_naive_per_sequence_computation(micro_model_dir):
    """The padded pair batch (prompt masked out, right padding, chosen rows then rejected rows) gives the
    same sequence logprobs, DPO+RPO loss and parameter gradient as scoring every answer alone with a
    plain log_softmax: guards the masking and padding the DPO update relies on."""
    from grpo.algorithms.dpo_losses import preference_loss
    from grpo.runtime.models import load_model

    pairs = random_pairs(6)
    model = load_model(micro_model_dir, ModelConfig(), trainable=True)
    model.train()
    torch.manual_seed(0)
    ref_c, ref_r = torch.randn(len(pairs)) - 20, torch.randn(len(pairs)) - 20

    def answer_logp(prompt, answer):
        ids = torch.tensor([prompt + answer])
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        return logp[torch.arange(len(prompt) - 1, ids.shape[1] - 1), torch.tensor(answer)].sum()

    def loss_of(c, r, lengths):
        return preference_loss(c, r, ref_c, ref_r, beta=0.1, chosen_nll=-c / lengths, rpo_alpha=1.0)[0]

    naive_c = torch.stack([answer_logp(p.prompt_ids, p.chosen_ids) for p in pairs])
    naive_r = torch.stack([answer_logp(p.prompt_ids, p.rejected_ids) for p in pairs])
    lengths = torch.tensor([len(p.chosen_ids) for p in pairs], dtype=torch.float32)
    model.zero_grad()
    loss_of(naive_c, naive_r, lengths).backward()
    naive_grads = [p.grad.clone() for p in model.parameters()]

    batch = pair_batch(pairs, pad_id=0)
    sums, _ = sequence_logps(lambda ids, att: model(input_ids=ids, attention_mask=att).logits, batch)
    b = len(pairs)
    torch.testing.assert_close(sums[:b], naive_c.detach(), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(sums[b:], naive_r.detach(), atol=1e-4, rtol=1e-5)
    model.zero_grad()
    loss_of(sums[:b], sums[b:], batch["answer_lengths"][:b]).backward()
    for got, want in zip((p.grad for p in model.parameters()), naive_grads):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-4)


def test_dpo_resume_continues_exactly_where_it_stopped(tmp_path, micro_model_dir, capsys):
    """Stopped after step 3 of 6 and started again, DPO resumes from its checkpoint and its steps 4-6
    have the losses of an uninterrupted run."""
    from grpo.stages import dpo as dpo_loop

    pairs = write_pairs(tmp_path / "p.jsonl", "plain", letters_pairs(60, 1))

    def losses(run_dir):  # [(step, loss)] in the order logged
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in rows if r.get("stage") == "dpo" and "loss" in r]

    def train(name, max_steps=None, save_every=0):
        cfg = dpo_config(tmp_path, name, pairs)
        cfg.dpo.max_steps, cfg.dpo.save_every = max_steps, save_every
        ctx = make_context(cfg, micro_model_dir)
        dpo_loop.train(ctx, micro_model_dir)
        ctx.close()
        return cfg.run_dir

    straight = dict(losses(train("straight")))
    assert sorted(straight) == [1, 2, 3, 4, 5, 6]
    first_part = losses(train("resumed", max_steps=3, save_every=3))
    assert [step for step, _ in first_part] == [1, 2, 3]
    capsys.readouterr()
    run_dir = train("resumed", save_every=3)
    assert "[dpo] resumed from checkpoint" in capsys.readouterr().out
    second_part = losses(run_dir)[len(first_part):]
    assert [step for step, _ in second_part] == [4, 5, 6]  # steps 1-3 were not trained again
    for step, loss in second_part:
        assert loss == pytest.approx(straight[step], rel=1e-5, abs=1e-6), step
