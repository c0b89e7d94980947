"""LoRA on the policy (grpo.runtime.lora): the merged weights the rollout engine gets, adapter files, loading
stage outputs, references with the adapter disabled, config checks. No engines here; the end-to-end runs (vLLM
adapter pushes, DeepSpeed ZeRO-2/3) are in tests/grpo/stages/test_lora_e2e.py."""
import copy
import json

import pytest
import torch

from grpo.config import ConfigError, LoraConfig, ModelConfig, load_config
from grpo.runtime import lora
from grpo.runtime.models import load_model, load_weights


def _randomize_adapter(model: torch.nn.Module, seed: int = 0) -> None:
    """A trained-looking adapter: B != 0 (a fresh one has B = 0 and changes nothing)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def _logits(model, ids=(5, 9, 17, 33, 60, 61, 70)) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([list(ids)])).logits[0]


def test_merged_weight_of_one_layer_worked_by_hand():
    """W + (alpha / r) B A on a 2x2 layer with rank 1, alpha 2 (scale 2):
    W = [[1, 0], [0, 1]], A = [[1, 2]], B = [[3], [-1]]  ->  B A = [[3, 6], [-1, -2]]
    merged = W + 2 * B A = [[7, 12], [-2, -3]]."""
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(2, 2, bias=False)

        def forward(self, x):
            return self.proj(x)

    net = Net()
    with torch.no_grad():
        net.proj.weight.copy_(torch.eye(2))
    model = get_peft_model(net, PeftLoraConfig(r=1, lora_alpha=2, target_modules=["proj"]))
    with torch.no_grad():
        model.base_model.model.proj.lora_A["default"].weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.base_model.model.proj.lora_B["default"].weight.copy_(torch.tensor([[3.0], [-1.0]]))
    merged = dict(lora.merged_named_weights(model))
    assert list(merged) == ["proj.weight"]
    assert torch.equal(merged["proj.weight"], torch.tensor([[7.0, 12.0], [-2.0, -3.0]]))
    # the trained tensors are untouched (no merge/unmerge round trip)
    assert torch.equal(model.base_model.model.proj.base_layer.weight, torch.eye(2))
    with lora.adapter_disabled(model):
        assert torch.equal(dict(lora.merged_named_weights(model))["proj.weight"], torch.eye(2))


def test_fresh_adapter_trains_only_adapter_and_changes_nothing(tiny_model_dir):
    cfg = ModelConfig(lora=LoraConfig(rank=4, alpha=8))
    plain = load_model(str(tiny_model_dir), ModelConfig(), trainable=False)
    model = load_model(str(tiny_model_dir), cfg)
    assert lora.is_peft(model)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    # all-linear: every projection of every layer, never the output head
    assert sum("lora_A" in n for n in trained) == 7 * 2 and not any("lm_head" in n for n in trained)
    assert torch.allclose(_logits(model), _logits(plain), atol=1e-6)


def test_merged_names_and_values_match_peft_merge(tiny_model_dir):
    model = load_model(str(tiny_model_dir), ModelConfig(lora=LoraConfig(rank=4, alpha=8)))
    _randomize_adapter(model)
    base_names = list(load_model(str(tiny_model_dir), ModelConfig(), trainable=False).state_dict())
    merged = dict(lora.merged_named_weights(model))
    # the base checkpoint's names, tied lm_head included (vLLM's reload needs both names)
    assert sorted(merged) == sorted(base_names)
    with lora.adapter_disabled(model):
        base = dict(lora.merged_named_weights(model))
    expected = copy.deepcopy(model).merge_and_unload().state_dict()
    for name, tensor in merged.items():
        assert torch.allclose(tensor, expected[name], atol=1e-6), name
    # the adapter moved the adapted layers and nothing else
    assert not torch.allclose(merged["model.layers.0.self_attn.q_proj.weight"],
                              base["model.layers.0.self_attn.q_proj.weight"], atol=1e-3)
    assert torch.equal(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert len(dict(lora.merged_named_weights(model, tied_copies=False))) == len(merged) - 1  # lm_head = embeddings


def test_stage_output_with_and_without_merged_model(tiny_model_dir, tmp_path):
    """save_merged: the merged model in final/ and the adapter in final/adapter; without it final/ is the adapter
    alone, merged on load. Both give the trained model's outputs; next_stage: adapter trains the same adapter on."""
    cfg = ModelConfig(lora=LoraConfig(rank=4, alpha=8))
    model = load_model(str(tiny_model_dir), cfg)
    _randomize_adapter(model)
    want = _logits(model)

    adapter_only = tmp_path / "adapter_only"
    lora.save_adapter(model, adapter_only)
    assert lora.is_adapter_only(adapter_only) and lora.adapter_dir(adapter_only) == adapter_only
    assert lora.adapter_base(adapter_only) == str(tiny_model_dir.resolve())
    assert torch.allclose(_logits(load_model(str(adapter_only), ModelConfig(), trainable=False)), want, atol=1e-5)
    assert torch.allclose(_logits(load_model(str(adapter_only), ModelConfig(), trainable=False)),
                          _logits(lora.load_merged(adapter_only, ModelConfig())), atol=0)
    pushed = dict(load_weights(adapter_only))
    assert torch.allclose(pushed["model.layers.1.mlp.down_proj.weight"],
                          dict(lora.merged_named_weights(model))["model.layers.1.mlp.down_proj.weight"], atol=1e-6)

    # next stage: a fresh adapter on the merged model (default) or the same adapter trained on
    merged_next = load_model(str(adapter_only), cfg)
    assert torch.allclose(_logits(merged_next), want, atol=1e-5)
    assert lora.fresh_adapter(str(adapter_only), cfg)
    assert all(float(p.detach().abs().max()) == 0 for n, p in merged_next.named_parameters() if "lora_B" in n)
    cont_cfg = ModelConfig(lora=LoraConfig(rank=4, alpha=8, next_stage="adapter"))
    continued = load_model(str(adapter_only), cont_cfg)
    assert not lora.fresh_adapter(str(adapter_only), cont_cfg)
    assert torch.allclose(_logits(continued), want, atol=1e-5)
    assert any(p.requires_grad for n, p in continued.named_parameters() if "lora_B" in n)


def test_adapter_disabled_gives_the_starting_model(tiny_model_dir):
    model = load_model(str(tiny_model_dir), ModelConfig(lora=LoraConfig(rank=4, alpha=8)))
    plain = _logits(load_model(str(tiny_model_dir), ModelConfig(), trainable=False))
    _randomize_adapter(model)
    assert not torch.allclose(_logits(model), plain, atol=1e-3)
    with lora.adapter_disabled(model):
        assert torch.allclose(_logits(model), plain, atol=1e-6)


def test_modules_to_save_are_trained_in_full_and_merged(tiny_model_dir):
    cfg = ModelConfig(lora=LoraConfig(rank=4, alpha=8, target_modules=["q_proj", "v_proj"],
                                      modules_to_save=["norm"]))
    model = load_model(str(tiny_model_dir), cfg)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert "base_model.model.model.norm.modules_to_save.default.weight" in trained
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "modules_to_save" in n:
                p.fill_(2.0)
    merged = dict(lora.merged_named_weights(model))
    assert torch.equal(merged["model.norm.weight"], torch.full_like(merged["model.norm.weight"], 2.0))
    with lora.adapter_disabled(model):
        assert float(dict(lora.merged_named_weights(model))["model.norm.weight"].max()) != 2.0


def test_vllm_rank_buckets_and_push_choice():
    assert [lora.vllm_max_lora_rank(r) for r in (1, 2, 8, 9, 64, 300, 512)] == [1, 8, 8, 16, 64, 320, 512]
    with pytest.raises(ValueError, match="512"):
        lora.vllm_max_lora_rank(513)
    assert lora.resolve_push(None, "vllm") == "merged"
    assert lora.resolve_push(LoraConfig(push="adapter"), "vllm") == "adapter"


@pytest.mark.parametrize("override, key", [
    ("model.lora.rank=0", "model.lora.rank"),
    ("model.lora.alpha=0", "model.lora.alpha"),
    ("model.lora.dropout=1.0", "model.lora.dropout"),
    ("model.lora.target_modules=[]", "model.lora.target_modules"),
    ("model.lora.next_stage=base", "model.lora.next_stage"),
    ("model.lora.push=both", "model.lora.push"),
])
def test_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        load_config(None, [override])


def test_adapter_push_refuses_what_vllm_cannot_load():
    with pytest.raises(ConfigError, match="rollout.backend: vllm"):
        load_config(None, ["model.lora.push=adapter", "rollout.backend=hf"])
    with pytest.raises(ConfigError, match="modules_to_save"):
        load_config(None, ["model.lora.push=adapter", "model.lora.modules_to_save=[norm]"])
    cfg = load_config(None, ["model.lora.rank=8"])
    assert cfg.model.lora.rank == 8 and cfg.model.lora.target_modules == "all-linear"


def test_grpo_check_accepts_an_adapter_directory(tiny_model_dir, tmp_path):
    from grpo.check import _model_note

    model = load_model(str(tiny_model_dir), ModelConfig(lora=LoraConfig(rank=4)))
    lora.save_adapter(model, tmp_path / "a")
    cfg = load_config(None, [f"model.name_or_path={tmp_path / 'a'}"])
    assert "LoRA adapter" in _model_note(cfg)
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["r"] == 4
