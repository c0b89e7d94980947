"""KTO stage: a labelled-answer file trains in every format (held-out implicit-reward margin rises), a bad row
stops the stage before training naming its row, verifier-labelled KTO trains on every sampled answer, the
shared-prompt batch gives the logprobs of padded rows, and the precomputed reference is cached."""
import json
import random

import pytest
import torch

from grpo.config import EngineConfig, RunConfig
from grpo.data.rows import DataError
from grpo.runtime.rollout import Completion, Group
from verifiers.base import Score


def letters_rows(n, seed, fmt="plain"):
    """Desirable answers use letters a-m, undesirable n-z (half each): a preference the micro model picks up."""
    rng = random.Random(seed)

    def word(letters):
        return "".join(rng.choice(letters) for _ in range(rng.randint(3, 7)))

    rows = []
    for i in range(n):
        q, label = f"Say something about {word('abcdefghijklmnopqrstuvwxyz')}", i % 2 == 0
        a = word("abcdefghijklm" if label else "nopqrstuvwxyz")
        if fmt == "plain":
            rows.append({"prompt": q, "completion": a, "label": label})
        elif fmt == "conversational":
            rows.append({"prompt": [{"role": "user", "content": q}],
                         "completion": [{"role": "assistant", "content": a}], "label": label})
        else:
            rows.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                         "label": label})
    return rows


def write_rows(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def kto_config(tmp_path, name, data_file=None):
    cfg = RunConfig(name=name, output_dir=str(tmp_path / "runs"))
    cfg.metrics.tensorboard = cfg.metrics.progress_bar = False
    k = cfg.kto
    k.data, k.data_file = ("file", str(data_file)) if data_file else ("verifier", None)
    k.eval_size = 12
    k.batch_size, k.epochs, k.save_every, k.beta = 16, 3, 0, 0.1
    k.optim.lr, k.optim.warmup_steps = 1e-3, 0
    return cfg


def make_context(cfg, model_dir, n_rl=4):
    from grpo.data.rows import Splits
    from grpo.data.tasks.arithmetic import make_pools
    from grpo.runtime.engine import init_distributed
    from grpo.runtime.models import load_tokenizer
    from grpo.stages.context import StageContext

    pools = make_pools({"sft": 4, "rl": n_rl, "eval": 4}, seed=0, max_digits=1)
    return StageContext(cfg=cfg, dist=init_distributed(EngineConfig()), run_dir=cfg.run_dir,
                        base_model_path=model_dir, tokenizer=load_tokenizer(model_dir, cfg.model),
                        splits=Splits(**pools))


def test_malformed_file_is_refused_with_its_row_before_training(tmp_path, tiny_model_dir):
    from grpo.stages import kto

    rows = letters_rows(8, 0)
    rows[5] = {"prompt": "q", "completion": "a", "label": "thumbs up"}
    cfg = kto_config(tmp_path, "bad", write_rows(tmp_path / "a.jsonl", rows))
    ctx = make_context(cfg, str(tiny_model_dir))
    with pytest.raises(DataError, match=r"row 5 \(line 6\): field 'label': must be true or false"):
        kto.train(ctx, str(tiny_model_dir))
    ctx.close()
    assert not (cfg.run_dir / "kto").exists()  # nothing was trained or written


def test_shared_prompt_batch_equals_padded_rows(tiny_model_dir):
    """Answers of one prompt packed after it once give the summed logprobs of their own padded rows."""
    from grpo.algorithms.packing import PromptSharing
    from grpo.config import ModelConfig
    from grpo.runtime.models import load_model
    from grpo.runtime.reference_cache import continuation_batch, sequence_logps

    model = load_model(str(tiny_model_dir), ModelConfig(), trainable=False)
    fwd = (lambda ids, att, pos=None: model(input_ids=ids, attention_mask=att, position_ids=pos).logits)
    items = [([5, 6, 7], [[8, 9], [10], [11, 12, 13]]), ([14, 15], [[16, 17, 18, 19]])]
    padded, _ = sequence_logps(fwd, continuation_batch(items, pad_id=0))
    shared, _ = sequence_logps(fwd, continuation_batch(items, pad_id=0, sharing=PromptSharing(64, 0.0)))
    assert padded.shape == (4,)
    torch.testing.assert_close(shared, padded, atol=1e-4, rtol=1e-5)


def test_kto_trains_on_every_file_format(tmp_path, tiny_model_dir):
    """The same 64 labelled answers as plain text, conversational prompt/completion and whole conversations:
    every run raises the held-out margin between desirable and undesirable answers and lowers the held-out loss;
    plain (precomputed, cached reference) and messages (a live reference model) end alike."""
    from grpo.stages import kto

    results = {}
    for fmt in ("plain", "conversational", "messages"):
        cfg = kto_config(tmp_path, fmt, write_rows(tmp_path / f"{fmt}.jsonl", letters_rows(64, 0, fmt)))
        cfg.kto.precompute_reference = fmt != "messages"
        ctx = make_context(cfg, str(tiny_model_dir))
        final = kto.train(ctx, str(tiny_model_dir))
        ctx.close()
        assert (final / "model.safetensors").exists()
        results[fmt] = json.loads((cfg.run_dir / "kto" / "eval_examples.json").read_text())
        if cfg.kto.precompute_reference:
            assert list((tmp_path / f"{fmt}.jsonl.refcache").glob("ref_logps-*.pt"))  # cached beside the data
        rows = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in rows if r.get("stage") == "kto" and "loss" in r and "kl" in r]
        assert len(steps) == 10 and all(r["kl"] >= 0 for r in steps)  # ceil(3 epochs x 52 examples / 16)
    for fmt, r in results.items():
        before, after = r["before"], r["after"]
        assert before["rewards/margins"] == pytest.approx(0.0, abs=1e-4), fmt
        assert after["rewards/margins"] > 0.2, (fmt, after)
        assert after["loss"] < before["loss"] - 0.02, (fmt, before, after)
    for key in ("rewards/margins", "loss"):
        assert results["conversational"]["after"][key] == pytest.approx(results["plain"]["after"][key], rel=1e-4)
        assert results["messages"]["after"][key] == pytest.approx(results["plain"]["after"][key], rel=1e-2, abs=1e-3)


class FakeRollout:
    """k answers per prompt from the tokenizer: sample j of prompt i is '<i+j>' (right when j is even), so
    every prompt has right and wrong answers except the first (all right) and the second (all wrong)."""

    def __init__(self, tokenizer):
        self.tok, self.pushed = tokenizer, 0

    def push_weights(self, weights):
        self.pushed += 1
        return 0.0

    def generate(self, prompts, spec, seeds):
        out = []
        for p in prompts:
            g = Group(prompt=p, prompt_ids=list(self.tok(p, add_special_tokens=False)["input_ids"]))
            for j in range(spec.n):
                text = f"answer {j}" + self.tok.eos_token
                g.completions.append(Completion(text, list(self.tok(text, add_special_tokens=False)["input_ids"]),
                                                None, False))
            out.append(g)
        return out


class FakeVerifier:
    def __init__(self):
        self.calls = 0

    def score_batch(self, texts, rows):
        out = []
        for t in texts:
            i, j = self.calls // 4, int(t.split()[1][0])
            right = True if i == 0 else False if i == 1 else j % 2 == 0
            out.append(Score(1.0 if right else 0.0, {}))
            self.calls += 1
        return out

    def close(self):
        pass


def test_verifier_labelled_kto_trains_on_every_sampled_answer(tmp_path, tiny_model_dir):
    """8 prompts x 4 samples = 32 examples, including the all-right and the all-wrong prompt that DPO's
    pairs would skip; saved with the run and reused when the stage runs again."""
    from grpo.stages import kto

    cfg = kto_config(tmp_path, "verifier")
    cfg.kto.num_prompts, cfg.kto.samples_per_prompt, cfg.kto.eval_size, cfg.kto.epochs = 8, 4, 4, 1
    ctx = make_context(cfg, str(tiny_model_dir), n_rl=8)
    ctx._rollout, ctx._verifier = FakeRollout(ctx.tokenizer), FakeVerifier()
    kto.train(ctx, str(tiny_model_dir))
    ctx.close()
    stage_dir = cfg.run_dir / "kto"
    report = json.loads((stage_dir / "answers_report.json").read_text())
    assert (report["prompts"], report["samples"], report["kept"]) == (8, 32, 32)
    assert (report["prompts_all_correct"], report["prompts_all_wrong"]) == (1, 1)
    answers = [json.loads(x) for x in (stage_dir / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 32 and sorted({a["row"] for a in answers}) == list(range(8))
    assert [a["label"] for a in answers if a["row"] == 0] == [True] * 4
    assert [a["label"] for a in answers if a["row"] == 1] == [False] * 4
    rows = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in rows if r.get("stage") == "kto" and "examples/train" in r)
    assert first["examples/train"] + first["examples/eval"] == 32
    assert first["examples/desirable"] + first["examples/undesirable"] == first["examples/train"]


def test_kto_resume_continues_exactly_where_it_stopped(tmp_path, tiny_model_dir, capsys):
    """Stopped after step 2 of 4 and started again, KTO resumes from its checkpoint and its steps 3-4 have the
    losses and reference points of an uninterrupted run."""
    from grpo.stages import kto

    data = write_rows(tmp_path / "a.jsonl", letters_rows(40, 1))

    def logged(run_dir):
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"], r["kl"]) for r in rows if r.get("stage") == "kto" and "kl" in r and "loss" in r]

    def train(name, max_steps, save_every=0):
        cfg = kto_config(tmp_path, name, data)
        cfg.kto.max_steps, cfg.kto.save_every, cfg.kto.eval_size, cfg.kto.micro_batch_size = max_steps, save_every, 4, 8
        ctx = make_context(cfg, str(tiny_model_dir))
        kto.train(ctx, str(tiny_model_dir))
        ctx.close()
        return cfg.run_dir

    straight = {s: (loss, kl) for s, loss, kl in logged(train("straight", 4))}
    assert sorted(straight) == [1, 2, 3, 4]
    first = logged(train("resumed", 2, save_every=2))
    capsys.readouterr()
    second = logged(train("resumed", 4))[len(first):]
    assert "[kto] resumed from checkpoint" in capsys.readouterr().out
    assert [s for s, _, _ in second] == [3, 4]
    for s, loss, kl in second:
        assert loss == pytest.approx(straight[s][0], rel=1e-5, abs=1e-6)
        assert kl == pytest.approx(straight[s][1], rel=1e-5, abs=1e-6)
