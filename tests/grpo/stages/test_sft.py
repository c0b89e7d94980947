"""SFT: best-fit packing, a packed row's loss equal to its examples' own losses, answer-only loss,
early stopping that keeps the best model, and resume."""
import json
import random

import pytest
import torch

from grpo.config import DataConfig, EngineConfig, ModelConfig, RunConfig
from grpo.data.rows import DataError
from grpo.algorithms.packing import block_causal_mask, pack
from grpo.stages.sft import Demo, EarlyStopping, collate, pack_demos, packed_logprobs, tokenize_demos


@pytest.fixture
def micro_model_dir(tiny_model_dir):
    return str(tiny_model_dir)  # the session's micro-preset model (tests/conftest.py)


def test_best_fit_packing_places_every_item_within_the_row_length():
    rng = random.Random(0)
    lengths = [rng.randint(5, 60) for _ in range(300)]
    rows = pack(lengths, 128)
    assert sorted(i for r in rows for i in r) == list(range(300))
    assert all(sum(lengths[i] for i in r) <= 128 for r in rows)
    # Best-fit decreasing wastes little: within 5% of the lower bound on the number of rows.
    assert len(rows) <= 1.05 * sum(lengths) / 128 + 1
    with pytest.raises(ValueError, match="more than max_len"):
        pack([10, 200], 128)


def test_packed_row_layout_positions_and_answer_mask():
    demos = [Demo([1, 2, 3], [4, 5]), Demo([6, 7], [8])]
    rows = pack_demos(demos, 16)
    assert len(rows) == 1
    b = collate(rows + [pack_demos([Demo([9], [10])], 16)[0]], pad_id=0)
    assert b["input_ids"][0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert b["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert b["segment_ids"][1].tolist() == [0, 0, -1, -1, -1, -1, -1, -1]  # padding is its own segment
    # target t+1 predicted at position t: answers 4, 5 and 8; never the first token of the next example
    assert b["target_mask"][0].tolist() == [False, False, True, True, False, False, True]
    assert b["target_mask"][1].tolist() == [True] + [False] * 6
    mask = block_causal_mask(b["segment_ids"][:1], torch.float32)[0, 0]
    assert mask[5, 4] < 0 and mask[5, 5] == 0 and mask[7, 5] == 0 and mask[3, 4] < 0


def test_packed_loss_equals_unpacked_loss(micro_model_dir):
    """The block-diagonal mask and restarted positions make a packed row compute exactly what the
    examples compute one by one; without the mask the result differs (so the mask matters)."""
    from grpo.runtime.models import load_model

    model = load_model(micro_model_dir, ModelConfig(), trainable=False)
    forward = (lambda ids, mask, pos: model(input_ids=ids, attention_mask=mask, position_ids=pos).logits)
    rng = random.Random(1)
    demos = [Demo([rng.randrange(6, 200) for _ in range(rng.randint(3, 12))],
                  [rng.randrange(6, 200) for _ in range(rng.randint(1, 9))]) for _ in range(7)]
    rows = pack_demos(demos, 48)
    assert len(rows) < len(demos)
    b = collate(rows, pad_id=0)
    packed = packed_logprobs(forward, b, varlen=False, dtype=torch.float32)
    packed_total = float((packed * b["target_mask"]).sum())
    single_total = 0.0
    for d in demos:
        s = collate(pack_demos([d], 48), pad_id=0)
        single_total += float((packed_logprobs(forward, s, varlen=False, dtype=torch.float32) * s["target_mask"]).sum())
    assert packed_total == pytest.approx(single_total, rel=1e-5, abs=1e-4)
    assert int(b["target_mask"].sum()) == sum(len(d.answer_ids) for d in demos)
    # The same rows without the mask (one long causal sequence per row) give another loss.
    logits = model(input_ids=b["input_ids"], attention_mask=torch.ones_like(b["input_ids"])).logits[:, :-1]
    from grpo.algorithms.logprobs import gather_logprobs

    unmasked = float((gather_logprobs(logits, b["input_ids"][:, 1:]) * b["target_mask"]).sum())
    assert abs(unmasked - single_total) > 1e-2


def test_demonstrations_train_on_the_answer_and_its_end_of_turn():
    import datasets

    from grpo.runtime.tiny_model import build_tokenizer

    tok = build_tokenizer()
    cfg = RunConfig()
    ds = datasets.Dataset.from_list([{"prompt": "What is 1 + 2?", "answer": "3", "solution": "\\boxed{3}"},
                                     {"prompt": "What is 2 + 2?", "answer": "4", "solution": "x" * 80}])
    demos, cut = tokenize_demos(ds, cfg, tok, max_seq_len=40)
    assert tok.decode(demos[0].prompt_ids) == "<|user|>What is 1 + 2?<|assistant|>"
    assert demos[0].answer_ids == tok("\\boxed{3}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert cut == 1 and len(demos[1]) == 40
    with pytest.raises(DataError, match="row 0: the prompt is"):
        tokenize_demos(ds, cfg, tok, max_seq_len=10)
    cfg.data = DataConfig(solution_field="worked")
    with pytest.raises(DataError, match="field 'worked' is not a column"):
        tokenize_demos(ds, cfg, tok, max_seq_len=40)


def test_early_stopping_counts_evaluations_without_improvement():
    es = EarlyStopping(patience=2, min_delta=0.01)
    assert es.update(1.0, 10) and not es.should_stop
    assert not es.update(0.995, 20) and not es.should_stop  # not better by min_delta
    assert es.update(0.9, 30) and es.bad_evals == 0
    assert not es.update(0.95, 40)
    assert not es.update(0.91, 50) and es.should_stop
    assert (es.best, es.best_step) == (0.9, 30)
    assert not EarlyStopping(patience=0, best=0.1, bad_evals=99).should_stop  # 0 disables stopping


# ---------------------------------------------------------------------------------------------


def make_context(run_dir, model_dir, cfg, n_sft=240):
    from grpo.stages.context import StageContext
    from grpo.data.rows import Splits
    from grpo.runtime.engine import init_distributed
    from grpo.runtime.models import load_tokenizer
    from grpo.data.tasks.arithmetic import make_pools

    pools = make_pools({"sft": n_sft, "rl": 8, "eval": 8}, seed=0, max_digits=2)
    dist = init_distributed(EngineConfig())
    return StageContext(cfg=cfg, dist=dist, run_dir=run_dir, base_model_path=model_dir,
                        tokenizer=load_tokenizer(model_dir, cfg.model), splits=Splits(**pools))


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_sft_learns_stops_early_keeps_the_best_model_and_resumes(tmp_path, micro_model_dir, capsys):
    from safetensors.torch import load_file

    from grpo.stages import sft as sft_loop

    cfg = RunConfig(name="sft", output_dir=str(tmp_path))
    cfg.metrics.tensorboard = cfg.metrics.progress_bar = False
    s = cfg.sft
    s.max_seq_len, s.tokens_per_batch, s.max_steps, s.eval_every, s.patience, s.save_every = 128, 512, 40, 2, 2, 0
    s.optim.warmup_steps = 0
    s.eval_size = 24
    s.min_delta = 1e9  # no later evaluation can beat the first: stops after 2 more, at step 6
    ctx = make_context(cfg.run_dir, micro_model_dir, cfg)
    final = sft_loop.train(ctx, micro_model_dir)
    ctx.close()

    rows = [r for r in read_metrics(cfg.run_dir) if r["stage"] == "sft"]
    train_loss = [r["loss"] for r in rows if "loss" in r]
    assert len(train_loss) == 6 and train_loss[-1] < train_loss[0] - 0.3  # it learns
    assert [r["step"] for r in rows if "eval/loss" in r] == [2, 4, 6]
    assert "early stop at step 6" in capsys.readouterr().out
    assert json.loads((final / "sft_best.json").read_text())["step"] == 2
    best = load_file(str(final / "model.safetensors"))
    base = load_file(f"{micro_model_dir}/model.safetensors")
    assert any(not torch.equal(best[k], base[k]) for k in best)  # trained, and the step-2 weights:
    assert all(torch.equal(best[k], v) for k, v in load_file(str(cfg.run_dir / "sft/best/model.safetensors")).items())

    # Resume: the stopped run is recognised from its checkpoint; nothing more is trained.
    ctx = make_context(cfg.run_dir, micro_model_dir, cfg)
    again = sft_loop.train(ctx, micro_model_dir)
    ctx.close()
    out = capsys.readouterr().out
    assert "resumed from checkpoint" in out and "at step 6" in out
    assert len([r for r in read_metrics(cfg.run_dir) if r["stage"] == "sft"]) == len(rows)
    assert all(torch.equal(best[k], v) for k, v in load_file(str(again / "model.safetensors")).items())
