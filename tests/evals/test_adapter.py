"""The model adapter against independent computations on full forwards of tiny random models."""

from __future__ import annotations

import pytest
import torch

from longarena.evals import adapter as adapter_mod
from longarena.evals.adapter import ByteTokenizer, EvalError, HFAdapter, LongArenaAdapter, as_adapter


@pytest.fixture(params=["hf", "longarena"])
def tiny(request, tiny_llama, tiny_longarena):
    if request.param == "hf":
        model, tok = tiny_llama
        return HFAdapter(model, tok, name="tiny-llama"), lambda ids: model(input_ids=ids).logits
    return LongArenaAdapter(tiny_longarena), lambda ids: tiny_longarena(ids).logits


def _manual_nll(logits_fn, ids):
    x = torch.tensor([ids])
    logp = torch.log_softmax(logits_fn(x).float()[0, :-1], dim=-1)  # (T-1, V)
    return -logp[torch.arange(len(ids) - 1), x[0, 1:]]


def test_token_losses_match_full_forward_across_head_chunks(tiny, monkeypatch):
    adapter, logits_fn = tiny
    ids = adapter.encode("Per-token losses, chunked through the head: ünïcode too.")
    monkeypatch.setattr(adapter_mod, "HEAD_CHUNK", 7)  # several chunks and a ragged last one
    with torch.no_grad():
        expected = _manual_nll(logits_fn, ids)
    got = adapter.token_losses(ids)
    assert got.shape == (len(ids) - 1,)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_score_is_sum_of_continuation_logprobs_and_greedy_flag(tiny):
    adapter, logits_fn = tiny
    ctx, cont = adapter.split("The answer is ", "forty two")
    assert adapter.decode(ctx) == "The answer is" and adapter.decode(cont) == " forty two"
    s = adapter.score("The answer is ", "forty two")
    ids = ctx + cont
    with torch.no_grad():
        nll = _manual_nll(logits_fn, ids)
        logits = logits_fn(torch.tensor([ids]))[0]
    assert s.n_tokens == len(cont)
    assert s.logprob == pytest.approx(-float(nll[-len(cont) :].sum()), abs=1e-4)
    greedy = logits[len(ctx) - 1 : -1].argmax(-1).tolist()
    assert s.is_greedy == (greedy == cont)
    # the greedy continuation itself must be flagged greedy
    first = logits[len(ctx) - 1].argmax().item()
    assert adapter.score_ids(ctx, [first]).is_greedy


def test_generate_matches_a_recomputing_greedy_loop(tiny):
    adapter, logits_fn = tiny
    ids = adapter.encode("Greedy decoding: ")
    seq = list(ids)
    with torch.no_grad():
        for _ in range(6):
            nxt = int(logits_fn(torch.tensor([seq]))[0, -1].argmax())
            if nxt == adapter.eos_id:
                break
            seq.append(nxt)
    assert adapter.generate_ids(ids, 6) == seq[len(ids) :]


def _check_attention(maps, n_layers, n_heads, t):
    assert maps.shape == (n_layers, n_heads, t, t)
    torch.testing.assert_close(maps.sum(-1), torch.ones(n_layers, n_heads, t))
    assert float(maps.triu(1).abs().max()) == 0.0


def test_attention_maps_hf_are_causal_distributions_and_restore_sdpa(tiny_llama):
    model, tok = tiny_llama
    adapter = HFAdapter(model, tok)
    before = model.config._attn_implementation
    ids = tok.encode("attention maps")
    _check_attention(adapter.attention_maps(ids), 2, 4, len(ids))
    assert model.config._attn_implementation == before


def test_attention_maps_longarena_reproduce_the_mixer_output(tiny_longarena):
    adapter = LongArenaAdapter(tiny_longarena)
    ids = adapter.encode("weights rebuilt from q and k")
    maps = adapter.attention_maps(ids)
    _check_attention(maps, 2, 4, len(ids))
    # weights @ v through out_proj must give what the mixer computed with fused SDPA
    inputs = []
    mixer = tiny_longarena.backbone.layers[1].mixer
    hook = mixer.register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
    with torch.no_grad():
        tiny_longarena(torch.tensor([ids]))
        hook.remove()
        x = inputs[0]
        y, _ = mixer(x)
        t = x.shape[1]
        v = mixer.kv_proj(x).view(1, t, 2, mixer.n_kv_heads, mixer.head_dim)[:, :, 1].transpose(1, 2)
        v = v.repeat_interleave(mixer.n_heads // mixer.n_kv_heads, dim=1)  # (1, H, T, K)
        out = (maps[1][None] @ v).transpose(1, 2).reshape(1, t, -1)
        torch.testing.assert_close(mixer.out_proj(out), y, atol=1e-5, rtol=1e-4)


def test_byte_tokenizer_round_trips_unicode_and_rejects_bad_eos():
    tok = ByteTokenizer()
    text = "naïve — 東京 🙂"
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode([0xE6]) == "\ufffd"
    with pytest.raises(EvalError, match=">= 256"):
        ByteTokenizer(eos_id=10)


def test_bad_inputs_raise_clear_errors(tiny_longarena, tiny_llama, tmp_path):
    adapter = LongArenaAdapter(tiny_longarena)
    with pytest.raises(EvalError, match="outside|lie in"):
        adapter.token_losses([1, 2, 999])
    with pytest.raises(EvalError, match="non-empty"):
        adapter.token_losses([])
    with pytest.raises(EvalError, match="empty"):
        adapter.score_ids([1], [])
    with pytest.raises(EvalError, match="not a Hugging Face model folder"):
        adapter_mod.load_hf(tmp_path / "nowhere")
    with pytest.raises(EvalError, match="not a LongArena checkpoint"):
        adapter_mod.load_longarena(tmp_path)
    with pytest.raises(EvalError, match="needs its tokenizer"):
        as_adapter(tiny_llama[0])
    with pytest.raises(EvalError, match="cannot evaluate"):
        as_adapter(torch.nn.Linear(2, 2))
    assert isinstance(as_adapter(tiny_longarena), LongArenaAdapter)


def test_longarena_checkpoint_round_trip(tiny_longarena, tmp_path):
    from longarena.models import checkpoint

    checkpoint.save(tiny_longarena, tmp_path / "lm")
    loaded = adapter_mod.load_longarena(tmp_path / "lm", max_length=64)
    ids = loaded.encode("same weights")
    torch.testing.assert_close(loaded.token_losses(ids), LongArenaAdapter(tiny_longarena).token_losses(ids))
    assert loaded.max_length == 64 and loaded.check_length(65) and not loaded.check_length(64)
