"""`grpo doctor`: each check on hand-made figures (fast), and two end-to-end doctor runs (slow): one where every
check is broken on purpose (unparsable reference answers, prompts over the limit, a model whose EOS id was moved,
an untrained model, a sampler at another temperature than the trainer) and fails with its message, stopping
`grpo run` (doctor: true) before training; one healthy config that passes everything."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grpo import doctor
from grpo.cli import main
from grpo.config import load_config
from grpo.doctor import (FAIL, PASS, WARN, CheckResult, Gap, Generated, ModelShape, Report, Scored, check_data,
                         check_logprobs, check_memory, check_references, check_rewards, check_stopping,
                         gather_logprob_gap, memory_budget, score_as_completions)
from grpo.runtime.distributed import env_without_rendezvous

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "tiny_arith.yaml")


# ---- data -------------------------------------------------------------------------------------------


def test_data_passes_and_shows_prompts_and_answers():
    r = check_data({"RL": 3, "eval": 1}, {"rl": [10, 12, 9], "eval": [11]}, 64, ["<|user|>What is 1 + 2?<|assistant|>"],
                   [("3", "scalar '3'")], demo_ends_with_eos=True)
    assert r.status == PASS and "longest prompt 12 tokens" in r.summary and "none over it" in r.summary
    assert "'<|user|>What is 1 + 2?<|assistant|>'" in r.details[0] and "scalar '3'" in r.details[1]


def test_prompts_over_the_limit_fail_naming_the_rows():
    r = check_data({"RL": 4, "eval": 1}, {"rl": [10, 80, 9, 70], "eval": [5]}, 64)
    assert r.status == FAIL and r.figures["prompts_over_limit"] == 2
    assert "2 of 5 prompts are longer than data.max_prompt_tokens=64" in r.advice and "rl split row 1" in r.advice
    assert "rl split row 3: 70 tokens" in r.details


def test_demonstrations_without_eos_warn():
    r = check_data({"RL": 1}, {"rl": [5]}, 64, demo_ends_with_eos=False)
    assert r.status == WARN and "will not teach the model to stop" in r.advice


# ---- verifiers -----------------------------------------------------------------------------------


def test_unparsable_references_fail_listing_examples():
    refs = [Scored(0, "42", 1.0, 1.0), Scored(5, "<<48/2=24>>24", 0.0, 1.0, "math: unparsable_reference")]
    r = check_references(refs, [], ["math"], max_bad_share=0.0)
    assert r.status == FAIL and "1/2 reference answers" in r.summary
    assert "50% of reference answers do not score full reward" in r.advice and "data.answer_regex" in r.advice
    assert r.details == ["RL split row 5, reference answer '<<48/2=24>>24' -> reward 0 of 1 "
                         "(math: unparsable_reference)"]
    # At or under the allowed share: a warning, still listing them.
    assert check_references(refs, [], ["math"], max_bad_share=0.5).status == WARN


def test_demonstrations_below_full_reward_fail_and_all_full_passes():
    demos = [Scored(1, "1+1,\\boxed{3}", 0.0, 1.0, "math: mismatch")]
    assert check_references([Scored(0, "2", 1.0, 1.0)], demos, ["math"], 0.0).status == FAIL
    ok = check_references([Scored(0, "2", 1.0, 1.0)], [Scored(0, "\\boxed{2}", 1.0, 1.0)], ["math"], 0.0)
    assert ok.status == PASS and "1/1 SFT demonstrations" in ok.summary
    assert "nothing to score" in check_references([], [], [], 0.0).summary


def test_score_as_completions_with_the_math_verifier():
    import verifiers

    rows = [{"answer": "42"}, {"answer": "<<48/2=24>>24"}]
    scored = score_as_completions(verifiers.build([{"name": "math"}]), ["42", "<<48/2=24>>24"], rows, [0, 1], ["math"])
    assert [s.reward for s in scored] == [1.0, 0.0] and "unparsable_reference" in scored[1].reason
    # A verifier that reads only boxed answers finds nothing in the bare reference: scored again inside a box.
    boxed = verifiers.build([{"name": "math", "extraction": "boxed"}])
    again = score_as_completions(boxed, ["\\frac{1}{2}"], [{"answer": "\\frac{1}{2}"}], [0], ["math"],
                                 box_if_unread=True)
    assert again[0].reward == 1.0


def test_math_reading_shows_how_the_verifier_reads_the_answer():
    assert doctor.math_reading("42") == "scalar '42'"
    assert doctor.math_reading("<<48/2=24>>24") == "nothing it can parse"


# ---- the model ------------------------------------------------------------------------------------


def test_a_model_that_never_stops_fails():
    every = [Generated(64, True, 0.0)] * 10
    r = check_stopping(every[:2], every[2:], max_tokens=64, max_truncated_share=0.5)
    assert r.status == FAIL and r.figures["eos_rate"] == 0.0
    assert "the model never emitted EOS" in r.advice and "eos_token_id" in r.advice


def test_stopping_passes_warns_and_is_advisory_before_sft():
    ok = [Generated(5, False, 1.0)] * 9 + [Generated(64, True, 0.0)]
    assert check_stopping(ok[:1], ok[1:], 64, 0.5).status == PASS  # 10% truncated
    some = [Generated(5, False, 1.0)] * 7 + [Generated(64, True, 0.0)] * 3
    assert check_stopping([], some, 64, 0.5).status == WARN
    before = check_stopping([], [Generated(64, True, 0.0)] * 4, 64, 0.5, before_sft=True, after_sft_hint="look later")
    assert before.status == WARN and "Expected before training" in before.advice and "look later" in before.advice


def _groups(*rewards):
    return [[Generated(3, False, r) for r in grp] for grp in rewards]


def test_all_wrong_groups_fail_with_nothing_to_learn():
    r = check_rewards([Generated(3, False, 0.0)], _groups([0, 0], [0, 0]), 1.0, 0.8)
    assert r.status == FAIL and r.advice.startswith("nothing to learn; SFT first or easier data")
    assert r.figures["all_wrong_share"] == 1.0 and r.figures["zero_variance_share"] == 1.0


def test_all_right_groups_fail_as_too_easy_and_mixed_groups_pass():
    assert "too easy" in check_rewards([], _groups([1, 1], [1, 1]), 1.0, 0.8).advice
    mixed = check_rewards([Generated(3, False, 1.0)], _groups([1, 0], [0, 1], [0, 0]), 1.0, 0.8)
    assert mixed.status == PASS and mixed.figures["sampled_mean_reward"] == pytest.approx(1 / 3, abs=1e-4)
    flat = check_rewards([], _groups([1, 1], [0, 0], [0, 0], [0, 0], [1, 0]), 1.0, 0.5)
    assert flat.status == WARN and "carry no signal" in flat.advice


# ---- sampler vs trainer ------------------------------------------------------------------------------


def test_logprob_gap_within_tolerance_passes():
    r = check_logprobs(Gap(2e-6, 3e-7, 100), Gap(2e-6, 3e-7, 100), 1e-3)
    assert r.status == PASS and "after a zero-lr step and push" in r.summary


def test_logprob_gap_over_tolerance_fails_naming_the_usual_causes():
    r = check_logprobs(Gap(0.9, 0.2, 100), None, 1e-3)
    assert r.status == FAIL
    for cause in ("dtype mismatch", "temperature applied differently", "stale weights", "chat template"):
        assert cause in r.advice
    # A large single-token difference alone fails too (max tolerance 20x the mean's).
    assert check_logprobs(Gap(0.05, 1e-4, 100), None, 1e-3).status == FAIL
    push = check_logprobs(Gap(1e-6, 1e-7, 10), Gap(0.5, 0.1, 10), 1e-3)
    assert push.status == FAIL and "push does not deliver the trainer's weights" in push.advice


def _tiny_samples(model, tokenizer, temperature):
    """Completions with 'sampler' logprobs from a transformers forward pass at `temperature`."""
    from grpo.stages.grpo import Sample

    samples = []
    for text, completion in (("What is 1 + 2?", "3"), ("What is 10 - 4?", "6!")):
        p = tokenizer(text, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        with torch.no_grad():
            logits = model(torch.tensor([p + c])).logits[0, len(p) - 1:-1].float() / temperature
        lps = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c)[:, None]).squeeze(-1).tolist()
        samples.append(Sample(p, c, lps, False, 0.0))
    return samples


def test_gather_logprob_gap_uses_the_trainers_temperature(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)

    def forward(ids, att=None, pos=None):
        return model(input_ids=ids, attention_mask=att, position_ids=pos).logits

    samples = _tiny_samples(model, tok, 0.7)
    same = gather_logprob_gap(samples, forward, tok.pad_token_id, 0.7, None, torch.float32, chunk=1)
    assert same.tokens == 5 and same.max < 1e-5
    other = gather_logprob_gap(samples, forward, tok.pad_token_id, 1.0, None, torch.float32, chunk=8)
    assert other.mean > 1e-2  # a sampler at 0.7 against a trainer at 1.0


# ---- memory ------------------------------------------------------------------------------------------

SHAPE_1_5B = ModelShape(params=1_540_000_000, layers=28, hidden=1536, kv_heads=2, head_dim=128, vocab=151_936)


def _gpu_cfg(*overrides):
    return load_config(None, ["engine.precision=bf16", "model.dtype=bfloat16", "rollout.kv_cache_gb=8",
                              "grpo.micro_batch_size=4", *overrides])


def test_memory_budget_follows_the_zero_stage():
    P = SHAPE_1_5B.params / 1024**3
    z2 = memory_budget(SHAPE_1_5B, _gpu_cfg("engine.zero_stage=2"), num_gpus=8, gpu_memory_gb=80)
    assert z2["params"] == pytest.approx(2 * P) and z2["grads"] == pytest.approx(2 * P / 8)
    assert z2["optimizer"] == pytest.approx(12 * P / 8) and z2["kv_cache"] == pytest.approx(8)
    z3 = memory_budget(SHAPE_1_5B, _gpu_cfg("engine.zero_stage=3"), num_gpus=8, gpu_memory_gb=80)
    assert z3["params"] == pytest.approx(2 * P / 8)
    z0 = memory_budget(SHAPE_1_5B, _gpu_cfg("engine.zero_stage=0"), num_gpus=8, gpu_memory_gb=80)
    assert z0["optimizer"] == pytest.approx(12 * P) and z0["peak"] > z2["peak"] > z3["peak"]
    off = memory_budget(SHAPE_1_5B, _gpu_cfg("engine.zero_stage=2", "engine.offload_optimizer=true"), 8, 80)
    assert off["optimizer"] == 0
    ref = memory_budget(SHAPE_1_5B, _gpu_cfg("grpo.beta=0.04"), 8, 80)
    assert ref["reference"] == pytest.approx(2 * P)


def test_memory_check_fails_over_the_device_and_says_it_is_an_estimate():
    cfg = load_config(None, ["engine.zero_stage=0", "rollout.kv_cache_gb=8"])  # fp32, AdamW: 16 bytes/parameter
    r = check_memory(SHAPE_1_5B, cfg, num_gpus=1, gpu_memory_gb=24, measured=False)
    assert r.status == FAIL and "exceeds 24 GiB per device" in r.advice and "engine.zero_stage" in r.advice
    assert "an estimate for 1 GPU(s) of 24 GiB (no GPU here" in r.summary
    ok = check_memory(SHAPE_1_5B, _gpu_cfg("engine.zero_stage=2"), num_gpus=8, gpu_memory_gb=80, measured=False)
    assert ok.status == PASS, ok.advice
    small_kv = check_memory(SHAPE_1_5B, _gpu_cfg("rollout.kv_cache_gb=0.01"), 8, 80, measured=False)
    assert small_kv.status == WARN and "generation runs in waves" in small_kv.advice


# ---- report, config, command line ------------------------------------------------------------------------


def _report(*statuses):
    return Report("c.yaml", "m", [CheckResult(f"check{i}", s, "figures", advice="do x" if s != PASS else "")
                                  for i, s in enumerate(statuses)], wall_s=12.3)


def test_report_summary_json_and_text(tmp_path):
    rep = _report(PASS, WARN, FAIL)
    assert rep.failed and rep.summary_line == "doctor: 1 FAIL (check2), 1 WARN, 1 PASS in 12 s"
    path = doctor.write_report(rep, tmp_path / "run")
    data = json.loads(path.read_text())
    assert path.name == "doctor.json" and data["status"] == FAIL and len(data["checks"]) == 3
    text = doctor.format_report(rep)
    assert "[FAIL] check2: figures" in text and "-> do x" in text
    assert not _report(PASS, WARN).failed


def test_doctor_options_are_validated(capsys):
    assert main(["check", TINY, "doctor_options.num_prompts=0"]) == 2
    assert "doctor_options.num_prompts" in capsys.readouterr().err
    cfg = load_config(TINY)
    assert cfg.doctor is False and cfg.doctor_options.num_prompts == 16


def test_doctor_config_and_data_errors_exit_2_before_loading_anything(tmp_path, capsys):
    assert main(["doctor", TINY, "rollout.temprature=0.7"]) == 2
    assert "rollout.temprature" in capsys.readouterr().err
    data = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "answer": "1"}, {"prompt": "b"}])
    assert main(["doctor", TINY, f"data.source={data}", "data.eval_size=0", "stages=[grpo]"]) == 2
    assert "row 1: field 'answer' is missing or empty" in capsys.readouterr().err


def test_doctor_subcommand_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["doctor", "--help"])
    assert e.value.code == 0 and "--model" in capsys.readouterr().out


@pytest.mark.parametrize("command, before_sft", [("run", True), ("train", False)])
def test_a_doctor_fail_stops_grpo_run_before_training(command, before_sft, monkeypatch, tmp_path, capsys):
    """`grpo run` (or one stage) with doctor: true hands the doctor's checks to the pipeline as its preflight; a
    FAIL stops it with the summary line. Before a configured SFT stage the model checks are advisory."""
    from grpo.stages import pipeline

    calls = []

    class Ctx:
        cfg = load_config(TINY)
        run_dir = tmp_path / "run"
        base_model_path = "m"
        dist = type("D", (), {"is_main": True})()

    def fake_run(cfg, stages=None, preflight=None):
        calls.append("setup")
        preflight(Ctx())
        calls.append("trained")  # not reached

    monkeypatch.setattr(pipeline, "run", fake_run)
    def fake_doctor(ctx, source, model, before_sft=False):
        calls.append(f"doctor before_sft={before_sft}")
        return _report(PASS, FAIL)

    monkeypatch.setattr(doctor, "run_doctor", fake_doctor)
    code = main([command, TINY, "doctor=true", f"output_dir={tmp_path}", "data.arithmetic.n_sft=50",
                 "data.arithmetic.n_rl=50", "data.arithmetic.n_eval=10"])
    assert code == 1 and calls == ["setup", f"doctor before_sft={before_sft}"]
    captured = capsys.readouterr()
    assert "grpo: doctor: 1 FAIL (check1), 0 WARN, 1 PASS" in captured.err and "stopped before training" in captured.err
    assert "[FAIL] check1" in captured.out and (tmp_path / "run" / "doctor.json").exists()


def test_rows_count_prompt_tokens_without_refusing_long_prompts(tiny_model_dir):
    import datasets
    from transformers import AutoTokenizer

    from grpo.config import DataConfig
    from grpo.data.rows import DataError, prompt_token_counts, to_examples

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ds = datasets.Dataset.from_list([{"prompt": "short", "answer": "1"}, {"prompt": "x" * 100, "answer": "2"}])
    cfg = DataConfig(max_prompt_tokens=40)
    with pytest.raises(DataError, match="row 1: prompt is"):
        to_examples(ds, cfg, tok)
    examples = to_examples(ds, cfg, tok, check_length=False)
    counts = prompt_token_counts([e.prompt for e in examples], tok)
    assert counts[0] < 40 < counts[1]


# ---- end to end ---------------------------------------------------------------------------------------

FAST = ["rollout.max_tokens=16", "rollout.kv_cache_gb=0.25", "grpo.group_size=4", "grpo.micro_batch_size=32",
        "doctor_options.num_prompts=8", "doctor_options.num_reference_rows=64", "eval.num_problems=0",
        "verify.workers=0", "metrics.progress_bar=false", "metrics.tensorboard=false", "stages=[grpo]"]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _launch(args: list[str], cwd: Path, patch: str = "") -> subprocess.CompletedProcess:
    code = f"import sys\n{patch}\nfrom grpo.cli import main\nsys.exit(main({args!r}))\n"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=env_without_rendezvous())


def _checks(run_dir: Path) -> dict:
    return {c["name"]: c for c in json.loads((run_dir / "doctor.json").read_text())["checks"]}


# The engine samples at 0.7 x the configured temperature; the trainer divides by the configured one.
SKEWED_SAMPLER = """
import dataclasses
from grpo.runtime import rollout
_params = rollout.VLLMRollout._params
def _skewed(self, spec, seed):
    if spec.temperature > 0:
        spec = dataclasses.replace(spec, temperature=0.7 * spec.temperature)
    return _params(self, spec, seed)
rollout.VLLMRollout._params = _skewed
"""


@pytest.mark.slow
def test_doctor_fails_every_broken_check_and_stops_grpo_run(tmp_path, tiny_model_dir):
    # A model whose EOS id was moved to a token it (almost) never writes: generation runs to max_tokens.
    model = shutil.copytree(tiny_model_dir, tmp_path / "no_eos")
    for name in ("config.json", "generation_config.json"):
        cfg = json.loads((model / name).read_text())
        cfg["eos_token_id"] = 3
        (model / name).write_text(json.dumps(cfg))
    tok_cfg = json.loads((model / "tokenizer_config.json").read_text())
    tok_cfg["eos_token"] = "<|system|>"
    (model / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    # Every fourth reference is an unparsable calculator annotation; every fifth prompt is over the limit.
    rows = []
    for i in range(40):
        a, b = 100 + 7 * i, 200 + 3 * i
        prompt = f"What is {a} + {b}?" + (" Think step by step and check every digit twice." * 2 if i % 5 == 0 else "")
        rows.append({"prompt": prompt, "answer": f"<<{a}+{b}={a + b}>>" if i % 4 == 0 else str(a + b)})
    data = _write_jsonl(tmp_path / "broken.jsonl", rows)
    args = ["run", TINY, *FAST, "doctor=true", "name=broken", f"output_dir={tmp_path / 'runs'}",
            f"model.name_or_path={model}", f"data.source={data}", "data.eval_size=4", "data.max_prompt_tokens=48"]
    proc = _launch(args, tmp_path, SKEWED_SAMPLER)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-6000:]
    assert "grpo: doctor: 5 FAIL (data, verifiers, model: stopping, model: rewards, sampler vs trainer)" in proc.stderr
    assert "stopped before training" in proc.stderr
    run_dir = tmp_path / "runs" / "broken"
    checks = _checks(run_dir)
    assert "prompts are longer than data.max_prompt_tokens=48" in checks["data"]["advice"]
    assert "of reference answers do not score full reward" in checks["verifiers"]["advice"]
    assert any("unparsable_reference" in line for line in checks["verifiers"]["details"])
    assert checks["model: stopping"]["figures"]["truncated_share"] > 0.9, checks["model: stopping"]
    assert "rollout.max_tokens=16" in checks["model: stopping"]["advice"]
    assert checks["model: rewards"]["advice"].startswith("nothing to learn; SFT first or easier data")
    assert "temperature applied differently" in checks["sampler vs trainer"]["advice"]
    assert checks["memory"]["status"] == PASS
    assert not (run_dir / "grpo").exists()  # nothing trained


def build_bigram_model(src: Path, out: Path, p_right: float = 0.6) -> Path:
    """A Qwen2 model whose attention and MLP blocks write nothing, so each next token depends on the current one
    only, with an untied output layer solved so that after the assistant tag it says '7' (p_right) or '8', then
    EOS: a model that stops, and that half-solves data whose every answer is 7."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(src)
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight.data.zero_()
        layer.mlp.down_proj.weight.data.zero_()
    emb, norm = model.model.embed_tokens.weight.data.double(), model.model.norm
    hidden = emb / torch.sqrt(emb.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon) * norm.weight.data.double()
    states = [tok.convert_tokens_to_ids(t) for t in ("<|assistant|>", "7", "8")]
    target = torch.full((3, emb.shape[0]), -30.0, dtype=torch.float64)
    target[0, states[1]], target[0, states[2]] = math.log(p_right), math.log(1 - p_right)
    target[1:, tok.eos_token_id] = 0.0
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter((torch.linalg.pinv(hidden[states]) @ target).T.float())
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.slow
def test_doctor_passes_a_healthy_config(tmp_path, tiny_model_dir):
    model = build_bigram_model(tiny_model_dir, tmp_path / "bigram")
    rows = [{"prompt": f"What is {a} + {7 - a}?", "answer": "7"} for a in range(8)]
    rows += [{"prompt": f"What is {a + 7} - {a}?", "answer": "7"} for a in range(8)]
    data = _write_jsonl(tmp_path / "sevens.jsonl", rows)
    args = ["doctor", TINY, *FAST, "name=healthy", f"output_dir={tmp_path / 'runs'}", f"model.name_or_path={model}",
            f"data.source={data}", "data.eval_size=2", "doctor_options.num_prompts=12"]
    proc = _launch(args, tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    checks = _checks(tmp_path / "runs" / "healthy")
    assert {name: c["status"] for name, c in checks.items()} == {
        "data": PASS, "verifiers": PASS, "model: stopping": PASS, "model: rewards": PASS, "sampler vs trainer": PASS,
        "memory": PASS}, json.dumps(checks, indent=1)[-4000:]
    assert checks["model: stopping"]["figures"]["eos_rate"] == 1.0
    assert 0.3 < checks["model: rewards"]["figures"]["sampled_mean_reward"] < 0.9
    assert checks["sampler vs trainer"]["figures"]["after_zero_lr_push"]["max"] < 1e-3
    assert "doctor: 0 FAIL, 0 WARN, 6 PASS" in proc.stdout
