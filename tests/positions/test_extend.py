"""extend(): patched Hugging Face models equal transformers' built-in scalings; LongArena models; checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from longarena import mixers, positions
from longarena.config import ConfigError
from longarena.positions.extend import extend_checkpoint

transformers = pytest.importorskip("transformers")

THETA, MAX_LEN, HEAD_DIM = 10000.0, 32, 8


def llama_config(**rope):
    """A tiny Llama; ``rope`` gives its RoPE parameters (default: unscaled)."""
    max_len = rope.pop("max_position_embeddings", MAX_LEN)
    rope = {"rope_type": "default", "rope_theta": THETA, **rope}
    return transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=max_len, rope_parameters=rope,
    )


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(llama_config()).eval()
    ids = torch.randint(0, 64, (2, 4 * MAX_LEN + 5))  # well beyond the trained length
    return model.state_dict(), ids


def fresh(state_dict, config=None):
    model = transformers.LlamaForCausalLM(config or llama_config()).eval()
    model.load_state_dict(state_dict)
    return model


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


# what transformers builds when the config asks for the scaling itself
BUILT_IN = {
    "linear": dict(rope_type="linear", factor=4.0, max_position_embeddings=4 * MAX_LEN),
    "dynamic_ntk": dict(rope_type="dynamic", factor=4.0),
    "yarn": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=MAX_LEN, max_position_embeddings=4 * MAX_LEN),
    "ntk": dict(rope_theta=THETA * 4.0 ** (HEAD_DIM / (HEAD_DIM - 2)), max_position_embeddings=4 * MAX_LEN),
}


@pytest.mark.parametrize("method", sorted(BUILT_IN))
def test_patched_model_equals_transformers_built_in_scaling(base, method):
    state_dict, ids = base
    patched = positions.extend(fresh(state_dict), method, 4.0)
    built_in = fresh(state_dict, llama_config(**BUILT_IN[method]))
    assert torch.equal(logits(patched, ids), logits(built_in, ids))
    assert patched.config.max_position_embeddings == built_in.config.max_position_embeddings
    # and transformers' frequencies are ours
    scheme = positions.get(method, head_dim=HEAD_DIM, theta=THETA, factor=4.0,
                           **({"original_max_len": MAX_LEN} if method in ("yarn", "dynamic_ntk") else {}))
    rotary = patched.model.rotary_emb
    # dynamic NTK: transformers keeps the frequencies of the last (longest) input it saw
    expected = scheme.inv_freq_for(ids.shape[1]) if method == "dynamic_ntk" else scheme.inv_freq
    torch.testing.assert_close(rotary.inv_freq, expected, rtol=3e-7, atol=0)
    assert rotary.attention_scaling == pytest.approx(scheme.attention_scale, rel=1e-12)


def test_patching_changes_long_outputs_but_factor_one_changes_nothing(base):
    state_dict, ids = base
    plain = logits(fresh(state_dict), ids)
    assert torch.equal(logits(positions.extend(fresh(state_dict), "linear", 1), ids), plain)
    assert torch.equal(logits(positions.extend(fresh(state_dict), "ntk", 1.0), ids), plain)
    torch.testing.assert_close(logits(positions.extend(fresh(state_dict), "yarn", 1.0), ids), plain, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits(positions.extend(fresh(state_dict), "yarn", 4.0), ids), plain)


def test_yarn_parameters_reach_transformers(base):
    state_dict, ids = base
    patched = positions.extend(fresh(state_dict), "yarn", 2.0, beta_fast=16, beta_slow=2, original_max_len=16)
    built_in = fresh(state_dict, llama_config(
        rope_type="yarn", factor=2.0, beta_fast=16, beta_slow=2, original_max_position_embeddings=16,
        max_position_embeddings=32,
    ))
    assert torch.equal(logits(patched, ids), logits(built_in, ids))


def test_bad_requests_raise_clear_errors(base):
    state_dict, _ = base
    model = fresh(state_dict)
    with pytest.raises(ConfigError, match="known methods: dynamic_ntk, linear, ntk, yarn"):
        positions.extend(model, "rope_yarn", 4)
    for factor in (0.5, 0, -2, float("nan"), float("inf"), "4", True):
        with pytest.raises(ConfigError, match="factor must be a finite number >= 1"):
            positions.extend(model, "linear", factor)
    with pytest.raises(ConfigError, match=r"linear does not take parameter\(s\) \['beta_fast'\]"):
        positions.extend(model, "linear", 2, beta_fast=8)
    positions.extend(model, "linear", 2)
    with pytest.raises(ConfigError, match="already uses RoPE scaling 'linear'"):
        positions.extend(model, "yarn", 2)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=32, n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(ConfigError, match="no rotary position embedding"):
        positions.extend(gpt2, "yarn", 4)


# --- LongArena models ---------------------------------------------------------------------------


class TwoLayers(nn.Module):
    def __init__(self, **config):
        super().__init__()
        self.layers = nn.ModuleList(mixers.get("attention", 16, n_heads=2, **config) for _ in range(2))

    def forward(self, x):
        for layer in self.layers:
            x = x + layer(x)[0]
        return x


def test_extend_a_longarena_model():
    torch.manual_seed(0)
    model = TwoLayers()
    x = torch.randn(1, 40, 16)
    state = model.state_dict()
    positions.extend(model, "yarn", 4.0, original_max_len=10)
    expected_params = {"theta": 10000.0, "factor": 4.0, "original_max_len": 10}
    reference = TwoLayers(position="yarn", position_params=expected_params)
    reference.load_state_dict(state)
    assert all(type(layer.position).__name__ == "YarnRope" for layer in model.layers)
    assert model.layers[0].config.position == "yarn" and model.layers[0].config.position_params == expected_params
    torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="needs original_max_len"):
        positions.extend(TwoLayers(), "dynamic_ntk", 2.0)
    with pytest.raises(ConfigError, match=r"no plain RoPE scheme .*Alibi"):
        positions.extend(TwoLayers(position="alibi"), "linear", 2.0)


# --- checkpoints --------------------------------------------------------------------------------


def test_extend_checkpoint_round_trips(base, tmp_path):
    state_dict, ids = base
    src = tmp_path / "base"
    fresh(state_dict).save_pretrained(src)
    (src / "tokenizer.json").write_text("{}")
    out = extend_checkpoint(src, "yarn", 4, tmp_path / "long")
    assert out == tmp_path / "long" and (out / "tokenizer.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".long.")]  # temp folder renamed away
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert loaded.config.rope_parameters["rope_type"] == "yarn"
    assert loaded.config.max_position_embeddings == 4 * MAX_LEN
    in_memory = positions.extend(fresh(state_dict), "yarn", 4)
    assert torch.equal(logits(loaded, ids), logits(in_memory, ids))

    with pytest.raises(FileExistsError, match="already exists and is not empty"):
        extend_checkpoint(src, "linear", 2, out)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        extend_checkpoint(tmp_path / "missing", "linear", 2, tmp_path / "x")
    with pytest.raises(ConfigError, match="known methods"):
        extend_checkpoint(src, "pi", 2, tmp_path / "y")
