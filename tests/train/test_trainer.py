"""The accelerate loop: accumulation gives the full batch's gradient, run folders hold
parseable metrics and complete checkpoints, bf16 really autocasts, resume is exact."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from longarena import tasks
from longarena.config import ConfigError
from longarena.models.backbone import ModelConfig
from longarena.tasks.base import IGNORE
from longarena.train import TrainConfig, fit, model_for_task
from longarena.train import checkpoint as train_checkpoint
from longarena.train.checkpoint import ResumeError
from longarena.train.objective import param_groups
from longarena.train.trainer import _prefetched, _step_batches, accumulate_gradients, epoch_batches, step_shards

SMALL = ModelConfig(d_model=16, n_layers=1, mixer={"attention": {"n_heads": 2}})


@pytest.fixture(scope="module")
def task():
    return tasks.get("associative_recall", vocab_size=16, num_pairs=2, num_queries=2, n_train=128, n_validation=32)


def _model(task, seed=0):
    torch.manual_seed(seed)
    return model_for_task(task, SMALL)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_accumulated_micro_batches_give_the_full_batch_gradient(task):
    data = task.split("train")
    examples = [data[i] for i in range(12)]
    batch = task.collate(examples)
    # drop some targets so the micro-batches score different numbers of tokens: a mean of
    # per-micro-batch means would then differ from the batch mean
    drop = torch.zeros_like(batch["labels"], dtype=torch.bool)
    drop[:5] = batch["labels"][:5] != IGNORE
    drop[:5, : drop.shape[1] // 2] = False
    batch["labels"] = batch["labels"].masked_fill(drop, IGNORE)

    model = _model(task)
    logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    reference = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE)
    reference.backward()
    expected = _grads(model)

    model.zero_grad(set_to_none=True)
    micro = [{k: v[i : i + 4] for k, v in batch.items()} for i in (0, 4, 8)]
    counts = [int((m["labels"] != IGNORE).sum()) for m in micro]
    assert len(set(counts)) > 1
    loss, tokens = accumulate_gradients(model, micro, "lm")
    assert loss == pytest.approx(reference.item(), rel=1e-6)
    assert tokens == int(batch["attention_mask"].sum())
    for name, grad in _grads(model).items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-5, atol=1e-7, msg=name)


def test_grad_accum_trains_like_one_big_batch(task):
    config = TrainConfig(steps=6, batch_size=16, lr=3e-3, warmup=2, eval_batches=1, device="cpu")
    one, four = _model(task), _model(task)
    a = fit(one, task, config)
    b = fit(four, task, config.replace(grad_accum=4))
    assert [r["loss"] for r in a.history] == pytest.approx([r["loss"] for r in b.history], rel=1e-5)
    for (name, p), q in zip(one.named_parameters(), four.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


def test_state_space_parameters_get_no_decay_and_their_own_learning_rate(task):
    config = SMALL.replace(pattern=("s4", "attention"), n_layers=2, mixer={"s4": {"d_state": 4}, "attention": {"n_heads": 2}})
    model = model_for_task(task, config)
    groups = param_groups(model, weight_decay=0.1, ssm_lr_scale=0.25)
    names = {id(p): n for n, p in model.named_parameters()}
    ssm = sorted(names[id(p)] for p in groups[2]["params"])
    assert ssm == [f"backbone.layers.0.mixer.{n}" for n in ("b", "lam_im", "log_dt", "log_neg_re", "p")]
    assert groups[2]["weight_decay"] == 0.0 and groups[2]["lr_scale"] == 0.25
    decayed = {names[id(p)] for p in groups[0]["params"]}
    assert "backbone.layers.0.mixer.c" in decayed and "backbone.layers.1.mixer.q_proj.weight" in decayed
    assert not any("embed" in n or "norm" in n for n in decayed)
    # Adam's first step moves every parameter with a gradient by about its learning rate
    # (m / sqrt(v) = sign(g)), so the step sizes show the learning rate each group got
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fit(model, task, TrainConfig(steps=1, batch_size=16, warmup=0, lr=1e-2, ssm_lr=1e-3, eval_batches=1, device="cpu"))
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()}
    assert moved["backbone.layers.0.mixer.log_dt"] == pytest.approx(1e-3, rel=1e-3)
    assert moved["backbone.layers.0.mixer.lam_im"] == pytest.approx(1e-3, rel=1e-3)
    assert moved["backbone.layers.0.norm1.weight"] == pytest.approx(1e-2, rel=1e-3)


def test_epochs_are_seeded_permutations_cut_into_full_batches():
    plan = epoch_batches(10, 3, seed=5, epoch=1)
    assert plan.shape == (3, 3)
    assert len(set(plan.flatten().tolist())) == 9  # no repeats; one example left over
    assert torch.equal(plan, epoch_batches(10, 3, seed=5, epoch=1))
    assert not torch.equal(plan, epoch_batches(10, 3, seed=5, epoch=2))


def test_each_process_takes_a_disjoint_share_of_every_micro_batch():
    batch = torch.randperm(24)
    shards = [step_shards(batch, grad_accum=3, processes=2, rank=r) for r in range(2)]
    assert all(s.shape == (3, 4) for s in shards)
    for a in range(3):  # micro-batch a is the a-th third of the batch, split between the ranks
        assert torch.equal(torch.cat([shards[0][a], shards[1][a]]), batch[8 * a : 8 * (a + 1)])
    assert torch.equal(step_shards(batch, 3, 1, 0).flatten(), batch)


def test_resuming_mid_epoch_continues_the_same_batch_sequence(task):
    config = TrainConfig(batch_size=48, grad_accum=2)  # 128 examples: 2 batches per epoch
    data = task.split("train")
    key = lambda items: [(e, b, [m["input_ids"].tolist() for m in mbs]) for e, b, mbs in items]
    whole = key(_step_batches(task, data, config, 1, 0, epoch=0, batch_index=0, steps=5))
    assert [(e, b) for e, b, _ in whole] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)]
    tail = key(_step_batches(task, data, config, 1, 0, epoch=1, batch_index=1, steps=2))
    assert tail == whole[3:]
    # the GPU path builds the next step in a thread; same items, same order
    assert key(_prefetched(_step_batches(task, data, config, 1, 0, 0, 0, 5), enabled=True)) == whole


def test_run_folder_metrics_and_checkpoint(task, tmp_path):
    config = TrainConfig(steps=8, batch_size=16, eval_every=4, eval_batches=1, checkpoint_every=3, keep_checkpoints=2, device="cpu")
    fit(_model(task), task, config, run_dir=tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if not r.get("final")]
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert all({"loss", "lr", "examples_per_s", "tokens_per_s", "epoch"} <= set(r) for r in steps)
    assert [r["step"] for r in steps if "val_loss" in r] == [4]  # step 8 is the final evaluation
    assert lines[-1]["final"] and 0.0 <= lines[-1]["val_accuracy"] <= 1.0
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["format_version"] == 1 and meta["model"] == "lm" and meta["run"]["train"]["steps"] == 8
    # the newest checkpoint (the final one) and one older (step 6) are kept
    kept = sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith("checkpoint"))
    assert kept == ["checkpoint", "checkpoint-00000006"]
    state = train_checkpoint.load(train_checkpoint.latest(tmp_path / "run"))
    assert state["position"] == {"format_version": 1, "step": 8, "epoch": 1, "batch": 0, "processes": 1}
    assert set(state["optimizer"]["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    # the run folder is also a model checkpoint
    from longarena.models import checkpoint as model_checkpoint

    model_checkpoint.load(tmp_path / "run", expect="lm")


def test_resume_continues_exactly_after_an_interruption(task, tmp_path, monkeypatch):
    config = TrainConfig(steps=10, batch_size=16, eval_batches=1, checkpoint_every=4, device="cpu", seed=3)
    # dropout draws from the global generator, so equality needs the restored RNG state too
    shape = SMALL.replace(dropout=0.2)
    torch.manual_seed(0)
    whole = model_for_task(task, shape)
    fit(whole, task, config, run_dir=tmp_path / "whole")

    calls = {"n": 0}
    real_save = train_checkpoint.save

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # after the step-8 checkpoint
            raise KeyboardInterrupt

    monkeypatch.setattr(train_checkpoint, "save", save_then_die)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        fit(model_for_task(task, shape), task, config, run_dir=tmp_path / "cut")
    monkeypatch.setattr(train_checkpoint, "save", real_save)
    torch.manual_seed(1234)  # the global generator is restored from the checkpoint
    resumed = model_for_task(task, shape)  # weights come from the checkpoint, not this init
    fit(resumed, task, config, run_dir=tmp_path / "cut", resume=True)
    for (name, p), q in zip(whole.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name
    read = lambda name: [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("loss")) for r in read("whole")] == [(r["step"], r.get("loss")) for r in read("cut")]


def test_resume_refusals_name_the_problem(task, tmp_path):
    config = TrainConfig(steps=2, batch_size=16, eval_batches=1, device="cpu")
    fit(_model(task), task, config, run_dir=tmp_path / "run")
    with pytest.raises(ResumeError, match="already holds a run"):
        fit(_model(task), task, config, run_dir=tmp_path / "run")
    with pytest.raises(ResumeError, match=r"train\.batch_size \(16 -> 32\)"):
        fit(_model(task), task, config.replace(batch_size=32), run_dir=tmp_path / "run", resume=True)
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    del meta["format_version"]
    (tmp_path / "run" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ResumeError, match="no format_version"):
        fit(_model(task), task, config, run_dir=tmp_path / "run", resume=True)
    with pytest.raises(ResumeError, match="nothing to resume"):
        fit(_model(task), task, config, run_dir=tmp_path / "empty", resume=True)


def test_bf16_autocasts_the_forward_and_leaves_the_model_plain(task):
    model = _model(task)
    seen = []
    model.head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    result = fit(model, task, TrainConfig(steps=2, batch_size=16, eval_batches=1, precision="bf16", device="cpu"))
    assert torch.bfloat16 in seen and all(torch.isfinite(torch.tensor([r["loss"] for r in result.history])))
    assert next(model.parameters()).dtype == torch.float32  # fp32 master weights
    seen.clear()
    model(torch.zeros(1, 4, dtype=torch.long))
    assert seen == [torch.float32]  # the autocast patch is removed after training
    # fp32 again in the same process: accelerate's process-wide state is switched back
    fit(_model(task), task, TrainConfig(steps=1, batch_size=16, eval_batches=1, device="cpu"))


def test_batch_that_cannot_be_filled_or_split_is_refused(task):
    with pytest.raises(ConfigError, match="larger than the 128 training examples"):
        fit(_model(task), task, TrainConfig(steps=1, batch_size=256, device="cpu"))
    with pytest.raises(ConfigError, match="divide batch_size"):
        TrainConfig(batch_size=10, grad_accum=3)


def _killed_run(task, run, config, kill_after_saves):
    """A run killed (KeyboardInterrupt) after its ``kill_after_saves``-th checkpoint save."""
    calls = {"n": 0}
    real_save = train_checkpoint.save

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == kill_after_saves:
            raise KeyboardInterrupt

    train_checkpoint.save = save_then_die
    try:
        with pytest.raises(KeyboardInterrupt):
            fit(_model(task), task, config, run_dir=run)
    finally:
        train_checkpoint.save = real_save


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(task, tmp_path):
    config = TrainConfig(steps=6, batch_size=16, eval_batches=1, checkpoint_every=2, device="cpu")
    run = tmp_path / "run"
    _killed_run(task, run, config, kill_after_saves=2)
    metrics = run / "metrics.jsonl"
    with metrics.open("ab") as f:  # the kill tore the line being appended, mid-character
        f.write('{"step": 5, "loss": 0.5, "note": "é'.encode()[:-1])
    with pytest.warns(UserWarning, match=rf"{metrics}:5 .*torn.*dropped"):
        fit(_model(task), task, config, run_dir=run, resume=True)
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in lines if not r.get("final")] == [1, 2, 3, 4, 5, 6]
    # a bad line before the last is not a torn append: refused, naming the line
    metrics.write_text(metrics.read_text().replace('{"step": 2,', '{"step": 2', 1))
    with pytest.raises(ResumeError, match=rf"{metrics}:2 is not valid JSON"):
        fit(_model(task), task, config, run_dir=run, resume=True)


def test_resume_never_restarts_silently_from_step_0(task, tmp_path):
    config = TrainConfig(steps=6, batch_size=16, eval_batches=1, checkpoint_every=2, device="cpu")
    run = tmp_path / "run"
    _killed_run(task, run, config, kill_after_saves=2)
    # killed before any checkpoint: nothing was saved, so step 0 is where it resumes
    early = tmp_path / "early"
    _killed_run(task, early, config.replace(checkpoint_every=5), kill_after_saves=1)
    import shutil

    shutil.rmtree(early / "checkpoint")
    fit(_model(task), task, config.replace(checkpoint_every=5), run_dir=early, resume=True)
    # an unreadable state.json: the only checkpoint fails its check, and resume is refused
    state = run / "checkpoint" / "state.json"
    state.write_text("{")
    with pytest.raises(ResumeError, match=rf"no checkpoint in {run} can be resumed[\s\S]*{state}"):
        fit(_model(task), task, config, run_dir=run, resume=True)
    # a run whose metrics show a completed checkpoint, with every checkpoint gone
    shutil.rmtree(run / "checkpoint")
    with pytest.raises(ResumeError, match=rf"{run}: metrics.jsonl records training to step 4[\s\S]*no checkpoint"):
        fit(_model(task), task, config, run_dir=run, resume=True)
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 4  # nothing trimmed
