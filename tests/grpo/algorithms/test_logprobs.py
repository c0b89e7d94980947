import math
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grpo.algorithms.logprobs import entropy_from_logits, gather_logprobs


def _naive_logprobs(logits, tokens, temperature=1.0):
    scaled = logits.float() if temperature == 1.0 else logits.float() / temperature
    return torch.log_softmax(scaled, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _naive_entropy(logits, temperature=1.0):
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


# ---------------------------------------------------------------- hand-worked values


def test_gather_hand_worked():
    # softmax(log [1, 2, 3, 4]) = [.1, .2, .3, .4]; at temperature 0.5 the logits double,
    # so p ~ [1, 4, 9, 16] / 30.
    logits = torch.log(torch.tensor([[[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]]]))
    tokens = torch.tensor([[3, 0]])
    torch.testing.assert_close(gather_logprobs(logits, tokens), torch.tensor([[math.log(0.4), math.log(0.4)]]))
    torch.testing.assert_close(
        gather_logprobs(logits, tokens, temperature=0.5), torch.tensor([[math.log(16 / 30), math.log(16 / 30)]])
    )


def test_entropy_hand_worked():
    logits = torch.log(torch.tensor([[[1.0, 2.0, 3.0, 4.0]]]))
    # -(.1 ln .1 + .2 ln .2 + .3 ln .3 + .4 ln .4) = 1.279854
    torch.testing.assert_close(entropy_from_logits(logits), torch.tensor([[1.279854]]))
    p = [x / 30 for x in (1, 4, 9, 16)]
    torch.testing.assert_close(
        entropy_from_logits(logits, temperature=0.5), torch.tensor([[-sum(q * math.log(q) for q in p)]])
    )
    # A uniform distribution over 8 tokens has entropy ln 8.
    torch.testing.assert_close(entropy_from_logits(torch.zeros(1, 1, 8)), torch.tensor([[math.log(8)]]))


# ---------------------------------------------------------------- chunked == naive


@pytest.mark.parametrize("chunk_size", [1, 5, 7, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_gather_matches_naive_values_and_gradients(chunk_size, temperature):
    generator = torch.Generator().manual_seed(chunk_size)
    logits = (torch.randn(3, 7, 50, generator=generator) * 4).requires_grad_()
    tokens = torch.randint(0, 50, (3, 7), generator=generator)
    upstream = torch.randn(3, 7, generator=generator)

    chunked = gather_logprobs(logits, tokens, temperature=temperature, chunk_size=chunk_size)
    (chunked * upstream).sum().backward()
    grad_chunked = logits.grad.clone()
    logits.grad = None
    naive = _naive_logprobs(logits, tokens, temperature)
    (naive * upstream).sum().backward()

    assert chunked.dtype == torch.float32 and chunked.shape == (3, 7)
    torch.testing.assert_close(chunked, naive, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad_chunked, logits.grad, rtol=0, atol=1e-6)


def test_bf16_logits_are_upcast_before_the_softmax():
    generator = torch.Generator().manual_seed(3)
    logits = (torch.randn(2, 4, 300, generator=generator) * 3).to(torch.bfloat16).requires_grad_()
    tokens = torch.randint(0, 300, (2, 4), generator=generator)
    out = gather_logprobs(logits, tokens, temperature=0.6, chunk_size=3)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, _naive_logprobs(logits.detach(), tokens, 0.6), rtol=0, atol=1e-5)
    out.sum().backward()
    assert logits.grad.dtype == torch.bfloat16


def test_temperature_is_a_true_float32_division_like_vllm():
    # vLLM: logits.to(float32).div_(temperature tensor in float32), then log_softmax.
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(64, 1000, generator=generator) * 10
    tokens = torch.randint(0, 1000, (64,), generator=generator)
    temperature = 0.7
    reference = torch.log_softmax(logits / torch.tensor(temperature, dtype=torch.float32), dim=-1)
    expected = reference.gather(1, tokens[:, None]).squeeze(1)
    assert torch.equal(gather_logprobs(logits, tokens, temperature=temperature, chunk_size=16), expected)


@pytest.mark.parametrize("chunk_size", [1, 4, 1000])
def test_chunked_entropy_matches_naive_values_and_gradients(chunk_size):
    generator = torch.Generator().manual_seed(5)
    logits = (torch.randn(2, 6, 40, generator=generator) * 3).requires_grad_()
    upstream = torch.randn(2, 6, generator=generator)
    chunked = entropy_from_logits(logits, temperature=0.8, chunk_size=chunk_size)
    (chunked * upstream).sum().backward()
    grad_chunked = logits.grad.clone()
    logits.grad = None
    naive = _naive_entropy(logits, 0.8)
    (naive * upstream).sum().backward()
    torch.testing.assert_close(chunked, naive, rtol=0, atol=1e-5)
    torch.testing.assert_close(grad_chunked, logits.grad, rtol=0, atol=1e-6)


def test_entropy_with_masked_vocabulary_is_finite():
    # -inf logits (a masked vocabulary) make p log p = 0 * -inf; it must count as 0.
    logits = torch.tensor([[[0.0, 0.0, float("-inf"), float("-inf")]]], requires_grad=True)
    entropy = entropy_from_logits(logits)
    torch.testing.assert_close(entropy, torch.tensor([[math.log(2)]]))
    entropy.sum().backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(temperature=0.0), "temperature"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(tokens=torch.zeros(2, 2, dtype=torch.long)), "tokens shape"),
        (dict(tokens=torch.full((2, 3), 10)), "vocab"),
        (dict(tokens=torch.zeros(2, 3)), "integer"),
    ],
)
def test_invalid_arguments(kwargs, message):
    args = dict(tokens=torch.zeros(2, 3, dtype=torch.long))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        gather_logprobs(torch.zeros(2, 3, 10), **args)


# ---------------------------------------------------------------- peak memory, measured
#
# Peak resident memory of this process while one variant runs: on Linux, writing "5" to
# /proc/self/clear_refs resets VmHWM (the RSS high-water mark) to the current RSS, so
# VmHWM - VmRSS(before) is the peak growth caused by the call. Torch's CPU allocator gets
# large blocks straight from the OS (mmap), so a full [N, V] float32 log-softmax shows up in
# full. Where clear_refs cannot be written, each variant runs in a fresh interpreter and the
# growth of ru_maxrss is used instead.

ROWS, VOCAB, CHUNK = 256, 65536, 8  # logits 64 MiB float32, one chunk 2 MiB
FULL_BYTES = ROWS * VOCAB * 4


def _make_inputs():
    generator = torch.Generator().manual_seed(0)
    logits = torch.empty(ROWS, VOCAB).normal_(generator=generator)  # in place: no transient copy
    tokens = torch.randint(0, VOCAB, (ROWS,), generator=generator)
    return logits, tokens


def _run_variant(variant, logits, tokens):
    chunked, with_grad = variant.split("-")
    if with_grad == "grad":
        logits = logits.detach().requires_grad_()
        if chunked == "chunked":
            out = gather_logprobs(logits, tokens, chunk_size=CHUNK)
        else:
            out = _naive_logprobs(logits, tokens)
        out.sum().backward()
        del out
        logits.grad = None
        return
    with torch.no_grad():
        if chunked == "chunked":
            gather_logprobs(logits, tokens, chunk_size=CHUNK)
        else:
            _naive_logprobs(logits, tokens)


def _warm_up(logits, tokens):
    # First calls start the intra-op thread pool and its per-thread buffers; keep that out
    # of the measurement.
    for variant in ("chunked-nograd", "naive-nograd", "chunked-grad", "naive-grad"):
        _run_variant(variant, logits[: 4 * CHUNK], tokens[: 4 * CHUNK])


def _status_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _peak_growth_in_process(variant, logits, tokens):
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before = _status_kib("VmRSS")
    _run_variant(variant, logits, tokens)
    return (_status_kib("VmHWM") - before) * 1024


def _peak_growth_in_subprocess(variant):
    root = Path(__file__).resolve().parents[3]
    env = dict(os.environ, PYTHONPATH=str(root))
    done = subprocess.run(
        [sys.executable, __file__, variant], cwd=root, env=env, capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip().splitlines()[-1])


def _measure(variants):
    logits, tokens = _make_inputs()
    _warm_up(logits, tokens)
    try:
        return {variant: _peak_growth_in_process(variant, logits, tokens) for variant in variants}
    except OSError:
        return {variant: _peak_growth_in_subprocess(variant) for variant in variants}


def test_chunked_gather_uses_less_peak_memory_than_naive():
    growth = _measure(["chunked-nograd", "naive-nograd", "chunked-grad", "naive-grad"])
    mib = {key: round(value / 2**20) for key, value in growth.items()}
    # The measurement sees a full-size float32 log-softmax ...
    assert growth["naive-nograd"] > 0.75 * FULL_BYTES, mib
    # ... and the chunked forward stays within a few chunks (2 MiB each).
    assert growth["chunked-nograd"] < 0.5 * FULL_BYTES, mib
    # With autograd: naive keeps the log-softmax for backward and builds two more full
    # tensors; chunked needs only the logits' gradient (unavoidable) plus a few chunks.
    assert growth["chunked-grad"] < 1.35 * FULL_BYTES, mib
    assert growth["naive-grad"] > 1.9 * FULL_BYTES, mib


def _high_water_bytes():
    # VmHWM belongs to this process's own address space. ru_maxrss would not do on Linux:
    # it keeps the parent's peak across fork + exec, hiding any growth below it.
    try:
        return _status_kib("VmHWM") * 1024
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


if __name__ == "__main__":  # fresh-process measurement for _peak_growth_in_subprocess
    _logits, _tokens = _make_inputs()
    # Warm up on one chunk of rows only: any transient here raises VmHWM above the RSS and
    # would hide that much of the growth measured next.
    for _variant in ("chunked-nograd", "chunked-grad", sys.argv[1]):
        _run_variant(_variant, _logits[:CHUNK], _tokens[:CHUNK])
    _before = _high_water_bytes()
    _run_variant(sys.argv[1], _logits, _tokens)
    print(_high_water_bytes() - _before)
