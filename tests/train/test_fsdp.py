"""FSDP (``train.distributed: fsdp``): the plugin shards each backbone block, one process is
a plain run, and two CPU processes (FSDP2 over gloo) train like one and resume exactly,
with checkpoints in the same format as any other run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from longarena import tasks
from longarena.config import ConfigError
from longarena.models.backbone import Block, ModelConfig
from longarena.train import TrainConfig, fit, model_for_task
from longarena.train import checkpoint as train_checkpoint
from longarena.train.checkpoint import ResumeError
from longarena.train.trainer import _autocast_forward, fsdp_plugin, make_accelerator, uses_fsdp
from tests.train.test_cli_train import RUN_YAML, _metrics, _run_two, _torchrun, _train

LAUNCHER_ENV = {  # what `accelerate launch --use_fsdp --fsdp_version 1 ...` exports
    "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_AUTO_WRAP_POLICY": "SIZE_BASED_WRAP",
    "FSDP_MIN_NUM_PARAMS": "1000", "FSDP_OFFLOAD_PARAMS": "true", "FSDP_ACTIVATION_CHECKPOINTING": "true",
    "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT", "FSDP_BACKWARD_PREFETCH": "BACKWARD_PRE",
}
#: two blocks (two FSDP groups besides the root), two micro-batches per step, a checkpoint
#: every 5 steps (all kept), an evaluation of 3 batches (not a multiple of 2) at step 6
OVERRIDES = ["--set", "model.n_layers=2", "--set", "train.grad_accum=2", "--set", "train.checkpoint_every=5",
             "--set", "train.keep_checkpoints=3", "--set", "train.eval_every=6", "--set", "train.eval_batches=3"]


def _config(tmp_path: Path, steps: int) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(RUN_YAML.replace("STEPS", str(steps)))
    return path


def _cut_back(run: Path, step: int) -> None:
    """The folder a run killed after its step-``step`` checkpoint leaves: no later
    checkpoint, no final weights (its metrics lines beyond ``step`` stay; resume drops them)."""
    for path in run.iterdir():
        if path.name.startswith("checkpoint") and train_checkpoint._step_of(path) != step:
            shutil.rmtree(path)
    (run / "model.safetensors").unlink()
    (run / "results.json").unlink()


def _steps_and_losses(run: Path) -> list[tuple[int, float | None]]:
    return [(r["step"], r.get("loss")) for r in _metrics(run)]


def test_distributed_setting_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="distributed must be one of ddp, fsdp; got 'zero'"):
        TrainConfig(distributed="zero")
    bad = _train("--config", str(_config(tmp_path, 2)), "--set", "train.distributed=zero")
    assert bad.exit_code == 2 and "distributed must be one of ddp, fsdp" in bad.output


def test_plugin_shards_each_backbone_block_whatever_the_launcher_exported(monkeypatch):
    for key, value in LAUNCHER_ENV.items():
        monkeypatch.setenv(key, value)
    plugin = fsdp_plugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    from torch.distributed.fsdp import CPUOffloadPolicy

    assert not isinstance(plugin.cpu_offload, CPUOffloadPolicy) and not plugin.activation_checkpointing
    # weights gathered and gradients reduced in fp32 (bf16 is the autocast of every mode)
    policy = plugin.mixed_precision_policy
    assert policy.param_dtype is None and policy.reduce_dtype is None and policy.output_dtype is None

    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    task = tasks.get("associative_recall", vocab_size=16, num_pairs=2, num_queries=2, n_train=64)
    model = model_for_task(task, ModelConfig(d_model=16, n_layers=3, pattern=("s4", "attention", "mamba")))
    plugin.set_auto_wrap_policy(model)
    wraps = fsdp2_prepare_auto_wrap_policy(plugin, model)
    groups = [name for name, module in model.named_modules() if wraps(module)]
    assert groups == [f"backbone.layers.{i}" for i in range(3)]
    assert all(isinstance(model.get_submodule(name), Block) for name in groups)


def test_bf16_autocast_is_patched_on_and_removed_like_accelerates():
    task = tasks.get("associative_recall", vocab_size=16, num_pairs=2, num_queries=2, n_train=64)
    model = model_for_task(task, ModelConfig(d_model=16, n_layers=1, mixer={"attention": {"n_heads": 2}}))
    seen = []
    model.head.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    acc = make_accelerator(TrainConfig(precision="bf16", device="cpu"))
    _autocast_forward(model, acc)
    logits = model(torch.zeros(1, 4, dtype=torch.long)).logits
    assert seen == [torch.bfloat16]
    acc.unwrap_model(model, keep_fp32_wrapper=False)
    model(torch.zeros(1, 4, dtype=torch.long))
    assert seen == [torch.bfloat16, torch.float32] and logits.dtype == torch.bfloat16


def test_one_process_fsdp_is_a_plain_run(monkeypatch):
    assert uses_fsdp(TrainConfig(distributed="fsdp")) and not uses_fsdp(TrainConfig())
    task = tasks.get("associative_recall", vocab_size=16, num_pairs=2, num_queries=2, n_train=128, n_validation=32)
    config = TrainConfig(steps=4, batch_size=16, eval_batches=1, device="cpu")
    runs = []
    for distributed, env in (("ddp", {}), ("fsdp", {}), ("ddp", LAUNCHER_ENV)):
        with monkeypatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            assert uses_fsdp(config.replace(distributed=distributed)) == (distributed == "fsdp" or bool(env))
            assert not make_accelerator(config.replace(distributed=distributed)).is_fsdp2
            torch.manual_seed(0)
            model = model_for_task(task, ModelConfig(d_model=16, n_layers=1, mixer={"attention": {"n_heads": 2}}))
            runs.append([r["loss"] for r in fit(model, task, config.replace(distributed=distributed)).history])
    assert runs[0] == runs[1] == runs[2]


def test_optimizer_state_by_name_is_torch_distributed_checkpoint_layout():
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    # two groups whose order differs from the model's, so indices are not module order
    optimizer = torch.optim.AdamW([{"params": [model[1].weight, model[0].bias]}, {"params": [model[0].weight, model[1].bias], "weight_decay": 0.0}])
    model(torch.randn(2, 3)).sum().backward()
    optimizer.step()
    names = ["1.weight", "0.bias", "0.weight", "1.bias"]
    by_index = optimizer.state_dict()
    by_name = train_checkpoint.optimizer_state_by_name(by_index, names)
    reference = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    assert [g["params"] for g in by_name["param_groups"]] == [g["params"] for g in reference["param_groups"]]
    assert set(by_name["state"]) == set(reference["state"])
    for name, entry in reference["state"].items():
        for key, value in entry.items():
            assert torch.equal(by_name["state"][name][key], value), (name, key)
    back = train_checkpoint.optimizer_state_by_index(reference)
    assert back["param_groups"] == by_index["param_groups"]
    assert all(torch.equal(back["state"][i][k], v) for i, e in by_index["state"].items() for k, v in e.items())
    with pytest.raises(ResumeError, match="holds 4 parameters, the model 3"):
        train_checkpoint.optimizer_state_by_name(by_index, names[:3])


def test_one_process_checkpoint_resumes_on_two_sharded_processes(tmp_path):
    """A run checkpointed by one process continues under FSDP on two: the checkpoint's full
    weights and AdamW state are loaded into the shards, steps 6-12 (with an evaluation and a
    checkpoint) run sharded, and the result matches the uninterrupted one-process run."""
    config = _config(tmp_path, 12)
    whole = _train("--config", str(config), *OVERRIDES, "--out", str(tmp_path / "whole"))
    assert whole.exit_code == 0, whole.output
    shutil.copytree(tmp_path / "whole", tmp_path / "cut")
    _cut_back(tmp_path / "cut", 5)
    _run_two("--out", str(tmp_path / "cut"), "--resume", "--set", "train.distributed=fsdp")

    state = json.loads((tmp_path / "cut" / "checkpoint" / "state.json").read_text())
    assert state["processes"] == 2 and state["step"] == 12
    results = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert (results["processes"], results["distributed"]) == (2, "fsdp")
    a, b = _metrics(tmp_path / "whole"), _metrics(tmp_path / "cut")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert [r.get("loss", 0.0) for r in a] == pytest.approx([r.get("loss", 0.0) for r in b], rel=1e-5)
    assert [r.get("val_loss", 0.0) for r in a] == pytest.approx([r.get("val_loss", 0.0) for r in b], rel=1e-5)
    # the final weights and checkpoint are full and in the one-process layout
    for name in ("model.safetensors", "checkpoint/model.safetensors", "checkpoint/optimizer.safetensors"):
        wa, wb = load_file(str(tmp_path / "whole" / name)), load_file(str(tmp_path / "cut" / name))
        assert sorted(wa) == sorted(wb), name
        for key in wa:
            torch.testing.assert_close(wb[key], wa[key], rtol=1e-4, atol=1e-6, msg=f"{name}: {key}")
    groups = lambda run: json.loads((run / "checkpoint" / "optimizer.json").read_text())["param_groups"]
    assert groups(tmp_path / "whole") == groups(tmp_path / "cut")
    from longarena.models import checkpoint as model_checkpoint

    model_checkpoint.load(tmp_path / "cut", expect="lm")


@pytest.mark.slow
def test_two_sharded_processes_match_one(tmp_path):
    """FSDP from the first step: per-step losses and final metrics equal one process's."""
    config = _config(tmp_path, 30)
    _run_two("--config", str(config), *OVERRIDES, "--set", "train.distributed=fsdp", "--out", str(tmp_path / "two"))
    one = _train("--config", str(config), *OVERRIDES, "--out", str(tmp_path / "one"))
    assert one.exit_code == 0, one.output
    a, b = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert [r.get("loss", 0.0) for r in a] == pytest.approx([r.get("loss", 0.0) for r in b], rel=1e-5)
    assert a[-1]["val_loss"] == pytest.approx(b[-1]["val_loss"], rel=1e-5)
    # and the sharded run's checkpoint resumes in one process
    _cut_back(tmp_path / "two", 25)
    resumed = _train("--out", str(tmp_path / "two"), "--resume", "--set", "train.distributed=ddp")
    assert resumed.exit_code == 0, resumed.output
    assert [r.get("loss", 0.0) for r in a] == pytest.approx([r.get("loss", 0.0) for r in _metrics(tmp_path / "two")], rel=1e-5)


@pytest.mark.slow
def test_sharded_bf16_computes_like_ddp(tmp_path):
    """bf16 under FSDP is DDP's autocast on fp32 weights: the losses agree to 1e-5 (they were
    equal when written), where FSDP's bf16 parameter policy was 1.7e-4 away from DDP's.
    FSDP comes from the launcher here (``accelerate launch --use_fsdp``'s variables)."""
    config = _config(tmp_path, 12)
    bf16 = [*OVERRIDES, "--set", "train.precision=bf16"]
    _run_two("--config", str(config), *bf16, "--out", str(tmp_path / "fsdp"), env=LAUNCHER_ENV)
    _run_two("--config", str(config), *bf16, "--out", str(tmp_path / "ddp"))
    layout = lambda run: json.loads((run / "results.json").read_text())["distributed"]
    assert (layout(tmp_path / "fsdp"), layout(tmp_path / "ddp")) == ("fsdp", "ddp")
    a, b = _metrics(tmp_path / "ddp"), _metrics(tmp_path / "fsdp")
    assert [r.get("loss", 0.0) for r in a] == pytest.approx([r.get("loss", 0.0) for r in b], rel=1e-5)


@pytest.mark.slow
def test_killed_sharded_run_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL to both processes of an FSDP run after a checkpoint; resuming under FSDP ends
    with the same per-step losses and bit-identical weights as an uninterrupted FSDP run."""
    config = _config(tmp_path, 250)
    fsdp = ["--set", "model.n_layers=2", "--set", "train.distributed=fsdp"]
    killed = tmp_path / "killed"
    proc = _torchrun("--config", str(config), *fsdp, "--out", str(killed),
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (killed / "checkpoint" / "state.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"the run ended before its first checkpoint: {proc.stderr.read().decode()[-3000:]}")
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both training processes
    proc.wait()
    proc.stderr.close()
    saved_at = json.loads((killed / "checkpoint" / "state.json").read_text())["step"]
    assert saved_at < 250 and not (killed / "model.safetensors").exists()

    _run_two("--out", str(killed), "--resume")
    _run_two("--config", str(config), *fsdp, "--out", str(tmp_path / "whole"))
    assert _steps_and_losses(tmp_path / "whole") == _steps_and_losses(killed)
    wa, wb = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert sorted(wa) == sorted(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)
