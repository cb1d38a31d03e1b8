"""The backbone and its heads: learning, cached decoding, hybrids, checkpoints, errors."""

from __future__ import annotations

import json

import pytest
import torch

from longarena import mixers, models
from longarena.config import ConfigError
from longarena.models import checkpoint
from longarena.models.backbone import ModelConfig
from longarena.models.checkpoint import CheckpointError


def tiny_lm(**overrides):
    config = dict(vocab_size=32, d_model=32, n_layers=2, mixer={"attention": {"n_heads": 2}})
    config.update(overrides)
    torch.manual_seed(0)
    return models.get("lm", **config)


def test_two_layer_attention_lm_overfits_a_fixed_batch():
    model = tiny_lm()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 32, (4, 24), generator=g)
    inputs, labels = ids[:, :-1], ids[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        loss = model(inputs, labels=labels).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 3.0  # near log(32) at initialisation
    assert loss.item() < 0.1


def _token_presence_accuracy(model) -> float:
    """Train ``model`` (vocabulary 4, 2 classes) for 150 steps on: label = whether token 1
    occurs in the sequence; its training accuracy afterwards, in eval mode."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, 4, (256, 12), generator=g)
    has = torch.rand(256, generator=g) < 0.5
    ids[has, torch.randint(0, 12, (int(has.sum()),), generator=g)] = 1
    labels = has.long()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model(ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return (model(ids).logits.argmax(-1) == labels).float().mean().item()


def test_classifier_learns_a_toy_task():
    """Label = whether token 1 occurs in the sequence: a linear probe of mean pooling cannot
    be perfect at init, a trained classifier must be."""
    torch.manual_seed(0)
    model = models.get("classifier", vocab_size=4, d_model=32, n_layers=1, num_classes=2, mixer={"attention": {"n_heads": 2, "causal": False}})
    assert _token_presence_accuracy(model) > 0.95


def test_generate_with_cache_equals_full_recomputation():
    model = tiny_lm().eval()
    prompt = torch.randint(0, 32, (3, 7), generator=torch.Generator().manual_seed(2))
    fast = model.generate(prompt, 12)
    ids = prompt
    with torch.no_grad():
        for _ in range(12):
            nxt = model(ids).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    assert torch.equal(fast, ids)


def test_generate_stops_at_eos():
    model = tiny_lm().eval()
    prompt = torch.randint(0, 32, (2, 5), generator=torch.Generator().manual_seed(3))
    first = model.generate(prompt, 1)[:, -1]
    out = model.generate(prompt, 10, eos_id=int(first[0]))
    assert out.shape[1] <= 15 and int(out[0, 5]) == int(first[0])


def test_hybrid_pattern_builds_one_mixer_per_layer():
    config = ModelConfig(d_model=32, n_layers=4, pattern=("attention", "attention"),
                         mixer={"attention": {"n_heads": 2}})
    assert config.layer_mixers() == ["attention"] * 4
    model = models.get("lm", config=config)
    assert len(model.backbone.layers) == 4
    assert model.state_size(10) == sum(layer.mixer.state_size(10) for layer in model.backbone.layers)


def test_chunked_prefill_through_the_model_equals_full_forward():
    model = tiny_lm().eval()
    ids = torch.randint(0, 32, (2, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(ids).logits
        a = model(ids[:, :8])
        b = model(ids[:, 8:], state=a.state)
    torch.testing.assert_close(torch.cat([a.logits, b.logits], 1), full, rtol=1e-4, atol=1e-5)


def test_dual_encoder_output_shape_and_symmetric_inputs():
    model = models.get("dual_encoder", vocab_size=10, d_model=16, n_layers=1, num_classes=2,
                       mixer={"attention": {"n_heads": 2, "causal": False}})
    a = torch.randint(0, 10, (3, 9))
    out = model(a, a, labels=torch.tensor([0, 1, 1]))
    assert out.logits.shape == (3, 2) and out.loss.ndim == 0


def test_checkpoint_round_trip_is_exact(tmp_path):
    model = tiny_lm()
    checkpoint.save(model, tmp_path / "ck")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temp folders left behind
    loaded = checkpoint.load(tmp_path / "ck", expect="lm")
    ids = torch.randint(0, 32, (2, 6))
    assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_checkpoint_with_mismatched_config_is_refused(tmp_path):
    checkpoint.save(tiny_lm(), tmp_path / "ck")
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    meta["config"]["d_model"] = 64
    meta["config"]["mixer"]["attention"]["n_heads"] = 4
    (tmp_path / "ck" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="checkpoint has .*config expects"):
        checkpoint.load(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="missing config.json"):
        checkpoint.load(tmp_path / "nothing")
    (tmp_path / "ck" / "config.json").write_text('{"model": "lm", ')
    with pytest.raises(CheckpointError, match=rf"{tmp_path / 'ck' / 'config.json'} is not valid JSON"):
        checkpoint.load(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="expected 'classifier'"):
        checkpoint.save(tiny_lm(), tmp_path / "ck2")
        checkpoint.load(tmp_path / "ck2", expect="classifier")


class _NonCausal(mixers.Mixer):
    """Stand-in non-causal mixer for the error test."""

    causal = False

    def _forward(self, x, state, mask):
        return x.mean(1, keepdim=True).expand_as(x), None


def test_bad_model_configs_and_inputs_are_explained(monkeypatch):
    with pytest.raises(ConfigError, match="known mixers: .*attention"):
        ModelConfig(pattern=("mambo",))
    with pytest.raises(ConfigError, match="multiple of the pattern length"):
        ModelConfig(n_layers=3, pattern=("attention", "attention"))
    with pytest.raises(ConfigError, match="non-causal"):
        models.get("lm", d_model=32, mixer={"attention": {"causal": False}})
    monkeypatch.setitem(mixers.REGISTRY._entries, "noncausal_test", (_NonCausal, "test"))
    with pytest.raises(ConfigError, match="'noncausal_test' \\(layer 0\\).* are non-causal"):
        models.get("lm", d_model=32, pattern=("noncausal_test",))
    model = tiny_lm()
    with pytest.raises(ValueError, match=r"shape \(B, T\)"):
        model(torch.randint(0, 32, (5,)))
    with pytest.raises(ValueError, match="outside the vocabulary 0..31"):
        model(torch.tensor([[1, 40]]))
    state = model(torch.randint(0, 32, (2, 4))).state
    with pytest.raises(mixers.MixerInputError, match="batch size 2"):
        model(torch.randint(0, 32, (3, 4)), state=state)


def test_last_pooling_reads_each_rows_last_real_token():
    """'last' pooling = the encoder state at the highest unmasked position of each row, for
    right padding, left padding and no mask; checked against running each row unpadded."""
    torch.manual_seed(0)
    model = models.get("classifier", vocab_size=8, d_model=16, n_layers=1, num_classes=3, pooling="last",
                       mixer={"attention": {"n_heads": 2, "causal": False}}).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 8, (3, 9), generator=g)
    lengths = [9, 5, 2]
    right = torch.zeros(3, 9, dtype=torch.bool)
    left = torch.zeros(3, 9, dtype=torch.bool)
    for i, n in enumerate(lengths):
        right[i, :n] = True
        left[i, 9 - n:] = True
    with torch.no_grad():
        alone = torch.cat([model(ids[i : i + 1, :n]).logits for i, n in enumerate(lengths)])
        padded_right = model(ids, attention_mask=right).logits
        shifted = torch.stack([torch.roll(ids[i], 9 - n) for i, n in enumerate(lengths)])
        padded_left = model(shifted, attention_mask=left).logits
        unmasked = model(ids).logits
        h, _ = model.encoder.backbone(model.encoder.embed(ids))
    torch.testing.assert_close(padded_right, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded_left, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(unmasked, model.head(h[:, -1]))


def test_unknown_pooling_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match="'mean', 'first', 'last'"):
        models.get("classifier", vocab_size=8, d_model=16, n_layers=1, pooling="max")


def _paper_block_classifier(**overrides):
    config = dict(vocab_size=8, d_model=16, n_layers=1, num_classes=3, norm="batch", prenorm=False, mlp=False,
                  mixer={"attention": {"n_heads": 2, "causal": False}})
    config.update(overrides)
    torch.manual_seed(0)
    return models.get("classifier", **config)


def test_postnorm_batchnorm_block_is_norm_of_the_residual_sum_over_real_tokens():
    """norm="batch", prenorm=False, mlp=False: one layer is BN(x + mixer(x)) with the batch
    statistics of the real tokens; recomputed here from the mixer and the BN parameters."""
    model = _paper_block_classifier()
    bn = model.encoder.backbone.layers[0].norm1
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 8, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2, 2:] = False
    logits = model(ids, attention_mask=mask).logits
    with torch.no_grad():
        x = model.encoder.embed(ids)
        y, _ = model.encoder.backbone.layers[0].mixer(x, mask=mask)
        z = x + y
        real = z[mask]
        mean, var = real.mean(0), real.var(0, unbiased=False)
        h = (z - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias
        m = mask[..., None].float()
        pooled = (h * m).sum(1) / m.sum(1)
        want = model.head(pooled)
    torch.testing.assert_close(logits, want, atol=1e-5, rtol=1e-5)
    assert not hasattr(model.encoder.backbone.layers[0], "mlp") or model.encoder.backbone.layers[0].mlp is None
    assert not any("mlp" in k for k in model.state_dict())
    assert isinstance(model.encoder.backbone.norm, torch.nn.Identity)  # post-norm: no final norm


def test_batchnorm_statistics_ignore_padding():
    """Whatever sits in the padded positions, the real positions' outputs (training mode,
    batch statistics) and the running statistics are the same."""
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 8, (4, 10), generator=g)
    mask = torch.ones(4, 10, dtype=torch.bool)
    mask[0, 4:] = False
    mask[3, 7:] = False
    other = ids.clone()
    other[~mask] = torch.randint(1, 8, (int((~mask).sum()),), generator=g)
    outs, stats = [], []
    for batch in (ids, other):
        model = _paper_block_classifier(prenorm=True, mlp=True, n_layers=2)
        outs.append(model(batch, attention_mask=mask).logits)
        bn = model.encoder.backbone.layers[0].norm1
        stats.append((bn.running_mean.clone(), bn.running_var.clone()))
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(stats[0], stats[1])
    assert not torch.allclose(stats[0][0], torch.zeros_like(stats[0][0]))  # the statistics moved


@pytest.mark.parametrize("train", [True, False])
def test_postnorm_batchnorm_stack_keeps_padding_bounded(train):
    """Post-norm: nothing but the batch norm could normalise the padded positions, and a
    residual SwiGLU grows what it is given faster than linearly. Left unnormalised, padding
    overflowed to inf within 8 layers (MLP weights x30 here, so that it happens at
    initialisation; on a GPU the S4 ListOps block with MLPs got there in training and its
    loss became NaN) and turned every logit NaN."""
    model = _paper_block_classifier(n_layers=8, mlp=True, pattern=("s4d",), mixer={"s4d": {"causal": False}})
    model.train(train)
    with torch.no_grad():
        for layer in model.encoder.backbone.layers:
            layer.mlp.down.weight.mul_(30.0)
    ids = torch.randint(1, 8, (4, 32), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(4, 32, dtype=torch.bool)
    mask[1:, 8:] = False
    outputs = []
    for layer in model.encoder.backbone.layers:
        layer.register_forward_hook(lambda module, args, out: outputs.append(out[0].detach()))
    logits = model(ids, attention_mask=mask).logits
    assert torch.isfinite(logits).all()
    for h in outputs:
        assert h[~mask].abs().max() <= h[mask].abs().max()


@pytest.mark.parametrize("mlp", [True, False])
def test_postnorm_lm_generates_with_cache_as_full_recomputation(mlp):
    model = tiny_lm(prenorm=False, mlp=mlp).eval()
    prompt = torch.randint(0, 32, (3, 6), generator=torch.Generator().manual_seed(4))
    fast = model.generate(prompt, 8)
    ids = prompt
    with torch.no_grad():
        for _ in range(8):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(fast, ids)


def test_language_models_refuse_batch_norm():
    """Training-mode batch statistics span every position: a causal LM would see its future."""
    with pytest.raises(ConfigError, match="later tokens"):
        tiny_lm(norm="batch")


def test_batchnorm_classifier_evaluates_each_sequence_alone():
    """In eval mode BatchNorm uses its running statistics: a sequence's logits do not depend
    on the rest of the batch (they do in training mode)."""
    model = _paper_block_classifier(n_layers=2)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, 8, (4, 9), generator=g)
    for _ in range(3):
        model(torch.randint(1, 8, (8, 9), generator=g))  # move the running statistics
    train_alone, train_batch = model(ids[:1]).logits, model(ids).logits[:1]
    assert not torch.allclose(train_alone, train_batch)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids[:1]).logits, model(ids).logits[:1])


def test_s4d_paper_block_classifier_learns_a_toy_task():
    """S4's LRA block (post-norm BatchNorm, GLU output, no MLP): whether token 1 occurs."""
    torch.manual_seed(0)
    model = models.get("classifier", vocab_size=4, d_model=32, n_layers=2, num_classes=2, pattern=("s4d",),
                       norm="batch", prenorm=False, mlp=False,
                       mixer={"s4d": {"causal": False, "output": "glu", "d_state": 8}})
    assert _token_presence_accuracy(model) > 0.95


def test_scalar_input_encoding_reads_ids_as_intensities():
    """input_encoding="scalar": id v -> proj(2v/(V-1) - 1); so embed(V-1) - embed(0) is twice
    the projection's weight and the map is affine in v."""
    torch.manual_seed(0)
    model = models.get("classifier", vocab_size=256, d_model=8, n_layers=1, num_classes=2, input_encoding="scalar",
                       mixer={"attention": {"n_heads": 2, "causal": False}})
    embed = model.encoder.embed
    with torch.no_grad():
        e = embed(torch.tensor([[0, 255, 51, 204]]))[0]
        w, b = embed.proj.weight[:, 0], embed.proj.bias
    torch.testing.assert_close(e[0], b - w)
    torch.testing.assert_close(e[1], b + w)
    torch.testing.assert_close(e[2], b + w * (2 * 51 / 255 - 1))
    torch.testing.assert_close(e[2] + e[3], e[0] + e[1])  # 51 + 204 = 0 + 255
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(torch.tensor([[256]]))


@pytest.mark.parametrize(
    "field, value, match",
    [("norm", "layer", "'rms', 'batch'"), ("prenorm", "yes", "prenorm must be true or false"),
     ("mlp", 0, "mlp must be true or false"), ("input_encoding", "onehot", "'embedding', 'scalar'")],
)
def test_block_options_refuse_bad_values_naming_the_choices(field, value, match):
    with pytest.raises(ConfigError, match=match):
        models.get("classifier", vocab_size=8, d_model=16, n_layers=1, **{field: value})


def test_masked_batchnorm_without_padding_is_torch_batchnorm():
    """With every position real, the masked statistics path gives BatchNorm1d's outputs and
    running statistics (the weighted-sum path against torch's own kernel)."""
    from longarena.models.backbone import MaskedBatchNorm

    torch.manual_seed(0)
    ours, ref = MaskedBatchNorm(6), torch.nn.BatchNorm1d(6)
    with torch.no_grad():
        for bn in (ours, ref):
            bn.weight.copy_(torch.linspace(0.5, 1.5, 6))
            bn.bias.copy_(torch.linspace(-1, 1, 6))
    x = torch.randn(3, 7, 6) * 2 + 1
    full = torch.ones(3, 7, dtype=torch.bool)
    for _ in range(2):
        out = ours(x, full)
        want = ref(x.reshape(-1, 6)).view_as(x)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x, full), ref(x.reshape(-1, 6)).view_as(x))


def test_masked_batchnorm_keeps_bf16_inputs_bf16_and_computes_in_fp32():
    from longarena.models.backbone import MaskedBatchNorm

    torch.manual_seed(0)
    bn = MaskedBatchNorm(6)
    x = torch.randn(3, 7, 6) * 3 + 2
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[2, 3:] = False
    want = bn(x, mask)
    bn.reset_running_stats()
    got = bn(x.bfloat16(), mask)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, atol=3e-2, rtol=2e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(bn(x, mask).float(), want, atol=1e-5, rtol=1e-5)


def test_paper_block_classifier_under_bf16_autocast_matches_fp32():
    """The S4 LRA block (post-norm batch norm, GLU, no MLP, scalar input) with padding: bf16
    autocast logits and gradients stay close to fp32."""
    torch.manual_seed(0)
    model = models.get("classifier", vocab_size=256, d_model=32, n_layers=2, num_classes=3, pattern=("s4d",),
                       norm="batch", prenorm=False, mlp=False, input_encoding="scalar",
                       mixer={"s4d": {"causal": False, "output": "glu", "d_state": 8}})
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 256, (4, 40), generator=g)
    mask = torch.ones(4, 40, dtype=torch.bool)
    mask[1, 25:] = False
    labels = torch.tensor([0, 1, 2, 1])
    grads = []
    for autocast in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        grads.append((out.logits.float().detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=5e-2, rtol=5e-2)
    for lo, hi in zip(grads[1][1], grads[0][1]):
        assert (lo - hi).norm() <= 0.05 * hi.norm() + 1e-6
