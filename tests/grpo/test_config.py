"""Config loading: unknown keys, wrong types and bad values stop with the key path and the source."""
import pytest

from grpo.config import ConfigError, RunConfig, check_hardware, gpu_features, load_config


def write(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_defaults_load():
    cfg = load_config(None)
    assert isinstance(cfg, RunConfig)
    assert cfg.grpo.group_size == 8 and cfg.verifiers[0].name == "math"


def test_unknown_key_names_key_and_file(tmp_path):
    p = write(tmp_path, "grpo:\n  group_sise: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "grpo.group_sise" in str(e.value) and str(p) in str(e.value)


def test_wrong_type_names_key(tmp_path):
    p = write(tmp_path, "grpo:\n  steps: many\n")
    with pytest.raises(ConfigError, match=r"grpo\.steps"):
        load_config(p)


def test_bad_value_names_key(tmp_path):
    p = write(tmp_path, "grpo:\n  group_size: 1\n")
    with pytest.raises(ConfigError, match=r"grpo\.group_size.*>= 2"):
        load_config(p)


def test_bad_choice_names_key_and_choices(tmp_path):
    p = write(tmp_path, "grpo:\n  aggregation: median\n")
    with pytest.raises(ConfigError, match=r"grpo\.aggregation.*token_mean"):
        load_config(p)


def test_nested_list_item_error_names_index(tmp_path):
    p = write(tmp_path, "verifiers:\n  - name: math\n    weight: -1\n")
    with pytest.raises(ConfigError, match=r"verifiers\[0\]\.weight"):
        load_config(p)


def test_stage_order_enforced(tmp_path):
    p = write(tmp_path, "stages: [grpo, sft]\n")
    with pytest.raises(ConfigError, match="stages"):
        load_config(p)


def test_override_precedence(tmp_path):
    p = write(tmp_path, "grpo:\n  steps: 7\n  group_size: 4\nrollout:\n  temperature: 0.5\n")
    cfg = load_config(p, ["grpo.steps=3"])
    assert cfg.grpo.steps == 3  # command line beats file
    assert cfg.grpo.group_size == 4  # file beats default
    assert cfg.rollout.temperature == 0.5
    assert cfg.rollout.max_tokens == RunConfig().rollout.max_tokens  # default kept


def test_override_errors_name_the_override(tmp_path):
    with pytest.raises(ConfigError, match=r"command line.*grpo\.stepz"):
        load_config(None, ["grpo.stepz=3"])
    with pytest.raises(ConfigError, match=r"grpo\.steps"):
        load_config(None, ["grpo.steps=abc"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["grpo.steps"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    p = write(tmp_path, "grpo: [unclosed\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(p)


def test_sandbox_limits_are_typed(tmp_path):
    p = write(tmp_path, "verify:\n  sandbox:\n    wall_s: 3\n")
    assert load_config(p).verify.sandbox.wall_s == 3
    p = write(tmp_path, "verify:\n  sandbox:\n    wall_seconds: 3\n")
    with pytest.raises(ConfigError, match=r"verify\.sandbox\.wall_seconds"):
        load_config(p)


def test_gpu_features_refused_without_cuda():
    cfg = load_config(None, ["engine.precision=bf16", "model.dtype=bfloat16"])
    assert "engine.precision=bf16" in gpu_features(cfg)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="engine.precision"):
            check_hardware(cfg)


def test_unknown_solution_style_names_key(tmp_path):
    p = write(tmp_path, "data:\n  arithmetic:\n    solution_style: essay\n")
    with pytest.raises(ConfigError, match=r"data\.arithmetic\.solution_style.*columns"):
        load_config(p)


def test_sixteen_bit_weights_train_only_with_bf16_master_weights(capsys):
    from grpo.cli import main
    from grpo.config import check_training_precision

    check_training_precision(load_config(None, ["engine.precision=bf16", "model.dtype=bfloat16"]))
    check_training_precision(load_config(None, ["engine.precision=bf16"]))  # fp32 load, DeepSpeed casts
    with pytest.raises(ConfigError, match=r"key 'model\.dtype'.*engine\.precision: bf16"):
        check_training_precision(load_config(None, ["model.dtype=bfloat16"]))  # precision fp32
    with pytest.raises(ConfigError, match=r"key 'model\.dtype'.*float16 training is not supported"):
        check_training_precision(load_config(None, ["engine.precision=bf16", "model.dtype=float16"]))
    # `grpo check` refuses it, naming the key (on a GPU machine `grpo train` would too, before any work)
    assert main(["check", "configs/tiny_arith.yaml", "model.dtype=bfloat16"]) == 2
    out = capsys.readouterr()
    assert "model.dtype" in out.out + out.err and "fp32 master weights" in out.out + out.err
    assert main(["check", "configs/tiny_arith.yaml", "model.dtype=bfloat16", "engine.precision=bf16"]) == 0


@pytest.mark.parametrize("override, key", [
    ("rollout.mode=offline", "rollout.mode"),
    ("rollout.max_staleness=-1", "rollout.max_staleness"),
    ("rollout.inference_ranks=0", "rollout.inference_ranks"),
    ("rollout.async_timeout_s=0", "rollout.async_timeout_s"),
    ("rollout.weight_bucket_mb=0", "rollout.weight_bucket_mb"),
])
def test_async_rollout_settings_are_checked_by_key(override, key):
    with pytest.raises(ConfigError, match=rf"key '{key}'"):
        load_config("configs/tiny_arith.yaml", ["rollout.mode=async", override])


def test_async_inference_ranks_must_fill_whole_tensor_parallel_engines():
    with pytest.raises(ConfigError, match=r"rollout.inference_ranks.*multiple of rollout.tensor_parallel_size=2"):
        load_config("configs/tiny_arith.yaml", ["rollout.mode=async", "rollout.inference_ranks=3",
                                                "rollout.tensor_parallel_size=2"])


def test_async_takes_tool_episodes_and_adapter_pushes():
    """Both run in the inference processes (tests/grpo/stages/test_tool_pipeline.py, test_async.py)."""
    cfg = load_config("configs/tiny_tool_arith.yaml", ["rollout.mode=async"])
    assert cfg.tools.enabled and cfg.rollout.mode == "async"
    cfg = load_config("configs/tiny_arith.yaml", ["rollout.mode=async", "model.lora={rank: 8, push: adapter}"])
    assert cfg.model.lora.push == "adapter"
