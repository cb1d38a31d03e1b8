"""The training loop on Hugging Face accelerate: one device or several, fp32 or bf16,
gradient accumulation, a run folder with metrics and checkpoints, and exact resume.
``train(model, task, config)`` is the one-call entry (no run folder); ``fit`` the whole thing.

Data: each epoch is one seeded permutation of the training split, cut into batches of
``batch_size`` examples (a last partial batch is dropped, so every step sees the same
number of examples). A step's batch is split into ``grad_accum`` micro-batches and each
micro-batch into one shard per process: process ``r`` of ``P`` takes the ``r``-th
contiguous slice. The batches are built from indices, so resuming at batch ``b`` of an
epoch costs one permutation, not ``b`` collates, and the loader of ``accelerate`` (whose
sharding depends on the process count) is not needed.

Loss: each micro-batch contributes its summed loss divided by the step's scored count
(all processes, all micro-batches), times ``P`` because DDP averages gradients over
processes (FSDP's reduce-scatter averages too). The gradient of a step is then exactly the
gradient of the mean loss over the whole batch, whatever ``grad_accum`` and ``P`` are.

Several processes replicate the model (DDP) or, with ``train.distributed: fsdp``, shard
it (FSDP2: each backbone block's parameters, gradients and AdamW state are split over the
processes and gathered block by block). A sharded run differs in five places: the
optimizer state of a checkpoint is loaded after sharding, checkpoints gather full state
dicts first, bf16 autocast is patched on here rather than by accelerate, gradients are
reduce-scattered after every micro-batch, and every process runs every evaluation batch
(each forward is a collective).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

import longarena
from longarena import models
from longarena.atomic import temporary_name, write_text
from longarena.config import ConfigError
from longarena.jsonl import CorruptFileError, read_records
from longarena.models.backbone import Block
from longarena.tasks.base import Task
from longarena.train import checkpoint
from longarena.train.checkpoint import ResumeError
from longarena.train.configfile import FORMAT_VERSION, changed_keys, resume_conflicts
from longarena.train.objective import (
    TrainConfig,
    TrainResult,
    evaluate,
    loss_sum,
    lr_at,
    param_groups,
    scored_count,
)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
WEIGHTS_FILE = "model.safetensors"


def uses_fsdp(config: TrainConfig) -> bool:
    """Whether a run of several processes shards the model: ``train.distributed: fsdp``, or
    a launcher that asked for FSDP (``accelerate launch --use_fsdp``)."""
    return config.distributed == "fsdp" or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_plugin():
    """accelerate's FSDP2 plugin for the trainer: every backbone ``Block`` is its own shard
    group (its parameters are gathered just before its forward and backward and freed
    after), the rest (embeddings, final norm, head) is the root group.

    Every option is set here, so the ``FSDP_*`` variables of ``accelerate launch
    --use_fsdp`` change nothing. Weights are gathered and gradients reduced in fp32 whatever
    the precision: bf16 is the autocast of the other modes (``fit`` patches it on), so a run
    computes the same way under one process, DDP or FSDP and can move between them on
    resume. FSDP's bf16 parameter policy would halve the gathers' traffic but put the
    residual stream, the norms and the state-space parameters in bf16 too.
    """
    from accelerate import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=[Block.__name__],
        reshard_after_forward=True,
        # fp32 (all None); a policy left unset would become accelerate's bf16 one
        mixed_precision_policy=MixedPrecisionPolicy(),
        cpu_offload=False,
        activation_checkpointing=False,
        activation_checkpointing_offload=False,
        cpu_ram_efficient_loading=False,
        state_dict_type="FULL_STATE_DICT",
    )


def make_accelerator(config: TrainConfig):
    """An ``Accelerator`` for ``config``'s device, precision and (several processes) DDP or FSDP.

    accelerate keeps its state in process-wide singletons that refuse a second, different
    setting; the arena trains many models in one process, some in fp32 and some in bf16,
    so a single-process state of another precision or device is reset first. Under
    ``accelerate launch`` the process group is kept and only the precision may change.
    With one process FSDP has nothing to shard over and the run is a plain one.
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'")
    mixed = "bf16" if config.precision == "bf16" else "no"
    # "cpu" also when there is no GPU: accelerate only recognises a multi-process CPU run
    # (torchrun, gloo) when told the device is the CPU
    cpu = config.device == "cpu" or not torch.cuda.is_available()
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    partial = PartialState._shared_state
    if partial and not distributed:
        on_cpu = getattr(partial.get("device"), "type", "cpu") == "cpu"
        if on_cpu != cpu:
            AcceleratorState._reset_state(reset_partial_state=True)
    plugin = fsdp_plugin() if distributed and uses_fsdp(config) else None
    shared = AcceleratorState._shared_state
    # a plugin lives in the state too: a new one, or none after an FSDP run, needs a fresh state
    was_fsdp = shared.get("distributed_type") == DistributedType.FSDP
    if shared and (shared.get("_mixed_precision") != mixed or plugin is not None or was_fsdp):
        AcceleratorState._reset_state()
    if was_fsdp:
        # accelerate writes FSDP into the process state too; the next run starts from the
        # process group's own type
        PartialState._shared_state["distributed_type"] = DistributedType.MULTI_CPU if cpu else DistributedType.MULTI_GPU
    # some mixers leave parameters out of a given forward (a variant's unused projection);
    # DDP then waits forever for their gradients unless told to look for them
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    launcher_fsdp = os.environ.get("ACCELERATE_USE_FSDP")
    # accelerate turns FSDP on only for GPU process groups; FSDP2 also runs on CPU processes
    # over gloo, so there the plugin is attached to the state by hand (tests, debugging)
    acc = Accelerator(mixed_precision=mixed, cpu=cpu, kwargs_handlers=[ddp], fsdp_plugin=None if cpu else plugin)
    if plugin is not None and not acc.is_fsdp2:
        # both states, as accelerate does: a later AcceleratorState() copies the process state
        acc.state.fsdp_plugin = plugin
        acc.state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    # accelerate records a given plugin in the environment, which would make every later run
    # of this process FSDP; only the launcher's own setting is kept
    if launcher_fsdp is None:
        os.environ.pop("ACCELERATE_USE_FSDP", None)
    return acc


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> Tensor:
    """Example indices of every full batch of an epoch: (n // batch_size, batch_size)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    per_epoch = n // batch_size
    return order[: per_epoch * batch_size].view(per_epoch, batch_size)


def step_shards(indices: Tensor, grad_accum: int, processes: int, rank: int) -> Tensor:
    """This process's example indices of one step: (B,) -> (A, B / (A P)), micro-batch by row.

    Micro-batch ``a`` is the ``a``-th contiguous slice of the step's batch and process ``r``
    takes the ``r``-th contiguous part of each, so the processes' shards are disjoint and
    together make up the batch.
    """
    return indices.view(grad_accum, processes, -1)[:, rank]


def _tokens(batch: dict[str, Tensor]) -> int:
    return sum(int(v.sum()) for k, v in batch.items() if k.startswith("attention_mask"))


class RunFolder:
    """``config.json``, ``metrics.jsonl``, checkpoints and final weights of one run.

    Every process reads; only the main process writes.
    """

    def __init__(self, path: str | os.PathLike, *, main: bool, tensorboard: bool = False) -> None:
        self.path = Path(path)
        self.main = main
        self._records: list[dict[str, Any]] | None = None  # metrics.jsonl of the run resumed
        self._metrics = None
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ConfigError(
                    f"--tensorboard needs the tensorboard package ({exc}); install it with "
                    "`pip install tensorboard`, or drop the flag (metrics.jsonl has the same numbers)"
                ) from exc
            self._tb_class = SummaryWriter
        self.tensorboard = tensorboard

    def saved(self) -> dict[str, Any] | None:
        path = self.path / CONFIG_FILE
        if not path.is_file():
            return None
        try:
            meta = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ResumeError(f"{path} is not valid JSON ({exc}); this run folder cannot be resumed") from exc
        if not isinstance(meta, dict):
            raise ResumeError(
                f"{path} holds a JSON {type(meta).__name__}, expected an object; this run folder cannot be resumed"
            )
        return meta

    def check(self, run_config: dict[str, Any], resume: bool) -> list[str]:
        """Refuse what cannot work before anything is written; returns changed keys on resume."""
        saved = self.saved()
        if not resume:
            if saved is not None or (self.path / METRICS_FILE).exists():
                raise ResumeError(
                    f"{self.path} already holds a run; pass --resume to continue it, or choose a new --out"
                )
            return []
        if saved is None:
            raise ResumeError(f"nothing to resume in {self.path}: it has no {CONFIG_FILE}")
        check_version(saved, self.path)
        metrics = self.path / METRICS_FILE
        if metrics.is_file():
            try:
                self._records = read_records(metrics)
            except CorruptFileError as exc:
                raise ResumeError(f"{exc}; this run folder cannot be resumed until then") from exc
        conflicts = resume_conflicts(saved.get("run", {}), run_config)
        if conflicts:
            detail = ", ".join(f"{k} ({_get(saved.get('run', {}), k)!r} -> {_get(run_config, k)!r})" for k in conflicts)
            raise ResumeError(f"cannot resume {self.path} with a different {detail}; these keys must match the saved run")
        return changed_keys(saved.get("run", {}), run_config)

    def start(self, meta: dict[str, Any], resume_step: int | None) -> None:
        if not self.main:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(self.path / CONFIG_FILE, json.dumps(meta, indent=2))
        metrics = self.path / METRICS_FILE
        if resume_step is not None and self._records is not None:
            # lines written after the checkpoint by the killed run are replayed by this one, and
            # a finished run resumed to train longer gets a new final line
            kept = [r for r in self._records if r.get("step", 0) <= resume_step and not r.get("final")]
            write_text(metrics, "".join(json.dumps(r) + "\n" for r in kept))
        elif resume_step is None and metrics.exists():
            metrics.unlink()
        self._metrics = metrics.open("a")
        if self.tensorboard:
            self._tb = self._tb_class(str(self.path / "tensorboard"))

    def refuse_lost_checkpoint(self) -> None:
        """Called when a resume finds no checkpoint: refuse if the metrics show one was completed
        (the run trained past its first checkpoint step, or finished), rather than restart the
        run from step 0 and drop its record. A run killed before its first checkpoint passes."""
        records = self._records or []
        steps = [r["step"] for r in records if type(r.get("step")) is int]
        if not steps:
            return
        last = max(steps)
        every = _get(self.saved() or {}, "run.train.checkpoint_every")
        if any(r.get("final") for r in records):
            why = "the run finished, which saves a checkpoint"
        elif isinstance(every, int) and 0 < every < last:
            why = f"a checkpoint was saved at step {every} (checkpoint_every)"
        else:
            return
        raise ResumeError(
            f"{self.path}: {METRICS_FILE} records training to step {last} and {why}, but no checkpoint "
            f"is left (checkpoint/ and checkpoint-<step>/ are gone); resuming would restart from step 0. "
            f"Restore the checkpoint folder, or start a new run folder (or delete {METRICS_FILE} to train "
            f"this one again from step 0)"
        )

    def log(self, record: dict[str, Any]) -> None:
        if self._metrics is None:
            return
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, record["step"])

    def finish(self, weights: dict[str, Tensor], results: dict[str, Any]) -> None:
        """Write the final weights (the model's full state dict) and results."""
        if not self.main:
            return
        tmp = temporary_name(self.path / WEIGHTS_FILE)
        save_file(checkpoint.tensors_for_saving(weights), str(tmp))
        os.replace(tmp, self.path / WEIGHTS_FILE)
        write_text(self.path / RESULTS_FILE, json.dumps(results, indent=2))

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def check_version(meta: dict[str, Any], path: Path) -> None:
    """Refuse a run folder of another layout version (nothing older can be migrated: the
    first versioned layout is the first with training state)."""
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        found = "no format_version (written before run folders were versioned)" if version is None else f"format_version {version}"
        raise ResumeError(
            f"{path} has {found}; this LongArena reads format_version {FORMAT_VERSION}. "
            f"Start a new run folder; the old weights can still be loaded with longarena.models.checkpoint.load"
        )


def _get(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _registry_name(model: nn.Module) -> str | None:
    for name in models.names():
        if type(model) is models.REGISTRY.factory(name):
            return name
    return None


def _meta(model: nn.Module, run_config: dict[str, Any]) -> dict[str, Any]:
    """``config.json``: the run, and the model's registry name and config, so the run folder
    is also a model checkpoint that ``longarena.models.checkpoint.load`` and ``eval`` read."""
    meta: dict[str, Any] = {"format_version": FORMAT_VERSION, "longarena_version": longarena.__version__}
    name = _registry_name(model)
    if name is not None and hasattr(model, "config"):
        meta["model"] = name
        meta["config"] = model.config.to_dict()
    meta["run"] = run_config
    return meta


def _default_run_config(model: nn.Module, task: Task, config: TrainConfig) -> dict[str, Any]:
    model_fields = model.config.to_dict() if hasattr(model, "config") and hasattr(model.config, "to_dict") else {}
    for key in ("vocab_size", "num_classes"):
        model_fields.pop(key, None)
    return {"task": task.registry_name or type(task).__name__, "task_config": task.config.to_dict(), "model": model_fields, "train": config.to_dict()}


def train(
    model: nn.Module,
    task: Task,
    config: TrainConfig | None = None,
    *,
    progress: bool = False,
    description: str = "train",
) -> TrainResult:
    """Train ``model`` on ``task`` for ``config.steps`` steps; evaluate on the validation split.

    The one-call entry the arena and the tests use: ``fit`` without a run folder.
    """
    return fit(model, task, config or TrainConfig(), progress=progress, description=description)


def fit(
    model: nn.Module,
    task: Task,
    config: TrainConfig,
    *,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    run_config: dict[str, Any] | None = None,
    progress: bool = False,
    description: str = "train",
    tensorboard: bool = False,
    console: Any = None,
) -> TrainResult:
    """Train ``model`` on ``task``; with ``run_dir``, log, checkpoint and (``resume``) continue.

    ``run_config`` is the resolved run (``configfile.resolve(...).raw``) recorded in
    ``config.json`` and compared on resume; by default it is derived from the arguments.
    """
    acc = make_accelerator(config)
    rank, world = acc.process_index, acc.num_processes
    sharded = acc.is_fsdp2
    micro = config.batch_size // config.grad_accum
    if micro % world:
        raise ConfigError(
            f"each micro-batch ({config.batch_size} examples / grad_accum {config.grad_accum} = {micro}) must split "
            f"evenly over the {world} processes; choose a batch_size divisible by {config.grad_accum * world}"
        )
    # rank 0 generates (and caches) the splits first; the others then read them, instead of
    # every process generating the same seeded data at once. Validation is read now, not
    # after the whole run, so a missing file fails before training.
    with acc.main_process_first():
        data = task.split("train")
        task.split("validation")
        if config.test_batches != 0:
            task.split("test")
    per_epoch = len(data) // config.batch_size
    if per_epoch == 0 and config.steps > 0:
        raise ConfigError(f"batch_size {config.batch_size} is larger than the {len(data)} training examples of {task!r}")

    run = RunFolder(run_dir, main=acc.is_main_process, tensorboard=tensorboard) if run_dir is not None else None
    run_config = run_config or _default_run_config(model, task, config)
    changed = run.check(run_config, resume) if run else []
    if changed and console is not None and acc.is_main_process:
        console.print(f"resuming with changed settings: {', '.join(changed)}")

    model.to(acc.device).train()
    ckpt_path, state = checkpoint.load_latest(run.path, rank) if run is not None and resume else (None, None)
    if run is not None and resume and state is None:
        run.refuse_lost_checkpoint()
    if state is not None:
        model.load_state_dict(state["model"])
    groups = param_groups(model, config.weight_decay, (config.ssm_lr or config.lr) / config.lr)
    settings = [{"weight_decay": g["weight_decay"], "lr_scale": g["lr_scale"], "betas": tuple(config.betas)} for g in groups]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas))
    # the optimizer's parameters by name, in its order: FSDP replaces the parameter objects
    names = {id(p): n for n, p in model.named_parameters()}
    param_names = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    if state is not None:
        if len(state["optimizer"]["param_groups"]) != len(optimizer.param_groups):
            raise ResumeError(f"{ckpt_path}: the optimizer has {len(optimizer.param_groups)} parameter groups, the checkpoint {len(state['optimizer']['param_groups'])}")
        if not sharded:  # FSDP loads it into the shards, once the model is sharded
            optimizer.load_state_dict(state["optimizer"])
            _apply_settings(optimizer, settings)
        checkpoint.set_rng_state(state["rng"])
        position = state["position"]
        step, epoch, batch_index = int(position["step"]), int(position["epoch"]), int(position["batch"])
    else:
        # per process, so the processes' dropout masks are independent draws (rank 0 draws
        # as a single process does)
        torch.manual_seed(config.seed + rank)
        step, epoch, batch_index = 0, 0, 0
    acc.wait_for_everyone()
    if run is not None:
        run.start(_meta(model, run_config), step if resume else None)
        if acc.is_main_process:
            checkpoint.clean_partial(run.path)
    if sharded and not any(isinstance(m, Block) for m in model.modules()):
        # a model without backbone blocks (a user's own) is sharded as one group
        acc.state.fsdp_plugin.transformer_cls_names_to_wrap = []
    # FSDP2 needs the model and its optimizer prepared together: accelerate shards the model
    # and swaps the optimizer's parameters for the shards
    model, optimizer = acc.prepare(model, optimizer)
    raw_model = acc.unwrap_model(model)
    if sharded:
        # FSDP2 warns of every module output that is a view (a linear layer's 3-D output is
        # one); the warning is about in-place edits of such outputs, which nothing here makes
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        if state is not None:
            checkpoint.load_sharded_optimizer(model, optimizer.optimizer, state["optimizer"], param_names)
            _apply_settings(optimizer, settings)
        if config.precision == "bf16":
            _autocast_forward(model, acc)
    state = None  # the checkpoint's full copies are loaded; free them for the run
    # under FSDP every forward gathers parameters from all processes, so each process must
    # run every evaluation batch; with DDP they share the batches
    eval_acc = _EveryBatch(acc.device) if sharded else acc

    history: list[dict[str, Any]] = []
    start_time = time.perf_counter()
    bar = _progress(progress and acc.is_main_process)
    bar_task = bar.add_task(description, total=config.steps, completed=step) if bar else None
    optimizer.zero_grad(set_to_none=True)
    steps_left = max(0, config.steps - step)
    batches = _prefetched(
        _step_batches(task, data, config, world, rank, epoch, batch_index, steps_left),
        enabled=acc.device.type == "cuda",
    )
    last = time.perf_counter()
    try:
        for epoch, batch_index, micro_batches in batches:
            lr = lr_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            loss_value, tokens = accumulate_gradients(model, micro_batches, task.kind, acc)
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss became {loss_value} at step {step}; lower the learning rate (now {config.lr})")
            if config.grad_clip:
                acc.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            record: dict[str, Any] = {"step": step, "epoch": epoch}
            # the position saved is the next batch to train on
            epoch, batch_index = (epoch, batch_index + 1) if batch_index + 1 < per_epoch else (epoch + 1, 0)
            seconds = max(time.perf_counter() - last, 1e-9)
            record |= {
                "loss": loss_value, "lr": lr,
                "examples_per_s": config.batch_size / seconds, "tokens_per_s": tokens / seconds,
            }
            evaluated = config.eval_every and step % config.eval_every == 0 and step < config.steps
            if evaluated:
                metrics = evaluate(raw_model, task, batch_size=config.eval_batch_size, max_batches=config.eval_batches, accelerator=eval_acc)
                record.update({f"val_{k}": v for k, v in metrics.items()})
            history.append(record)
            if run is not None and (evaluated or step % config.log_every == 0):
                run.log(record)
            if run is not None and config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.steps:
                _save_checkpoint(acc, run, model, optimizer, config, step, epoch, batch_index)
            if bar:
                bar.update(bar_task, advance=1, description=f"{description} loss {loss_value:.3f}")
            last = time.perf_counter()  # evaluation and checkpoints are not the step's time
        if bar:
            bar.stop()
            bar = None
        final = evaluate(raw_model, task, batch_size=config.eval_batch_size, max_batches=config.eval_batches, accelerator=eval_acc)
        if config.test_batches != 0:
            test = evaluate(raw_model, task, "test", batch_size=config.eval_batch_size, max_batches=config.test_batches, accelerator=eval_acc)
            final.update({f"test_{k}": v for k, v in test.items()})
        seconds = time.perf_counter() - start_time
        params = sum(p.numel() for p in raw_model.parameters())
        if run is not None:
            layout: dict[str, Any] = {"processes": world, "distributed": "fsdp" if sharded else "ddp" if world > 1 else "single"}
            if acc.device.type == "cuda":  # rank 0's peak, before the final checkpoint's gathers
                layout["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(acc.device) / 2**30
            weights = _save_checkpoint(acc, run, model, optimizer, config, step, epoch, batch_index)
            scores = {k if k.startswith("test_") else f"val_{k}": v for k, v in final.items()}
            run.log({"step": step, "final": True, **scores})
            run.finish(weights, {"step": step, "parameters": params, "seconds": seconds, **layout, **scores})
            acc.wait_for_everyone()
    finally:
        batches.close()  # stops the prefetch thread if the run ends early
        if bar:
            bar.stop()
        if run is not None:
            run.close()
        # leave the caller's model as it was given: no DDP wrapper, no autocast patch
        acc.unwrap_model(model, keep_fp32_wrapper=False)
    return TrainResult(history=history, final=final, seconds=seconds, parameters=params)


def accumulate_gradients(model: nn.Module, micro_batches: list[dict[str, Tensor]], kind: str, accelerator: Any = None) -> tuple[float, float]:
    """Backward over one step's micro-batches (this process's shards); returns the mean loss
    over the whole step's batch (every process) and its number of real tokens.

    Each micro-batch's summed loss is divided by the step's total scored count, so the
    accumulated gradient is the gradient of the step's mean loss however the batch was cut.
    """
    world = accelerator.num_processes if accelerator is not None else 1
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    counts = torch.tensor(
        [sum(scored_count(b, kind) for b in micro_batches), sum(_tokens(b) for b in micro_batches)], dtype=torch.float64
    )
    if world > 1:
        counts = accelerator.reduce(counts.to(device), reduction="sum").cpu()
    scored, tokens = max(float(counts[0]), 1.0), float(counts[1])
    total = torch.zeros((), dtype=torch.float64, device=device)
    # DDP all-reduces gradients on every backward unless told not to: once per step is enough.
    # FSDP reduce-scatters every micro-batch: skipping it would keep whole gradients until the
    # step's last one, the memory that sharding is for
    sync_each = accelerator is None or getattr(accelerator, "is_fsdp2", False)
    for a, mb in enumerate(micro_batches):
        mb = {k: v.to(device) for k, v in mb.items()}
        last = a == len(micro_batches) - 1
        with contextlib.nullcontext() if last or sync_each else accelerator.no_sync(model):
            loss, _, _ = loss_sum(model, mb, kind)
            scaled = loss * (world / scored)  # DDP averages over processes; this makes it a sum
            accelerator.backward(scaled) if accelerator is not None else scaled.backward()
        total += loss.detach().double()
    if world > 1:
        total = accelerator.reduce(total, reduction="sum")
    return total.item() / scored, tokens


def _step_batches(task: Task, data: Any, config: TrainConfig, world: int, rank: int, epoch: int, batch_index: int, steps: int):
    """``steps`` items ``(epoch, batch index, this process's micro-batches)`` from a position on."""
    per_epoch = len(data) // config.batch_size
    while steps > 0:
        plan = epoch_batches(len(data), config.batch_size, config.seed, epoch)
        while batch_index < per_epoch and steps > 0:
            shards = step_shards(plan[batch_index], config.grad_accum, world, rank)
            yield epoch, batch_index, [task.collate([data[i] for i in shard.tolist()]) for shard in shards]
            batch_index += 1
            steps -= 1
        epoch, batch_index = epoch + 1, 0


def _prefetched(items, *, enabled: bool):
    """``items``, the next one built in a thread while the caller works on the current one.

    On a GPU the collate of the next step then overlaps the current step's kernels; on the
    CPU the thread would only compete with the step for the same cores, so it is off.
    """
    if not enabled:
        yield from items
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(next, items, None)
        while (item := pending.result()) is not None:
            pending = pool.submit(next, items, None)
            yield item


def _save_checkpoint(acc, run: RunFolder, model: nn.Module, optimizer, config: TrainConfig, step: int, epoch: int, batch_index: int) -> dict[str, Tensor]:
    """Write a checkpoint from the main process; returns the model's full state dict there
    (empty elsewhere). ``model`` is the prepared model: under FSDP its shards are gathered
    from every process first."""
    from accelerate.utils import gather_object

    rngs = gather_object([checkpoint.rng_state()]) if acc.num_processes > 1 else [checkpoint.rng_state()]
    model_state: dict[str, Tensor] = {}
    if acc.is_fsdp2:
        model_state, optimizer_state = checkpoint.gather_sharded(model, optimizer.optimizer)
    elif acc.is_main_process:
        model_state, optimizer_state = acc.unwrap_model(model).state_dict(), optimizer.state_dict()
    if acc.is_main_process:
        checkpoint.save(
            run.path,
            model_state=model_state,
            optimizer_state=optimizer_state,
            rng_states=rngs,
            position={"format_version": FORMAT_VERSION, "step": step, "epoch": epoch, "batch": batch_index},
            keep=config.keep_checkpoints,
        )
    acc.wait_for_everyone()
    return model_state


def _apply_settings(optimizer, settings: list[dict[str, Any]]) -> None:
    """The current config, not a checkpoint's saved groups, sets decay, betas and lr scales."""
    for group, fresh in zip(optimizer.param_groups, settings):
        group.update(fresh)


def _autocast_forward(model: nn.Module, acc) -> None:
    """bf16 autocast around ``model``'s forward, as accelerate patches it under DDP; FSDP2
    models are not patched by accelerate. ``unwrap_model(..., keep_fp32_wrapper=False)``
    removes it again."""
    from types import MethodType

    from accelerate.utils import convert_outputs_to_fp32
    from accelerate.utils.modeling import get_mixed_precision_context_manager

    autocast = get_mixed_precision_context_manager(acc.native_amp, acc.autocast_handler)
    model._original_forward = model.forward
    model.forward = MethodType(convert_outputs_to_fp32(autocast(model.forward.__func__)), model)


class _EveryBatch:
    """The accelerator ``evaluate`` sees under FSDP: one process of one, so every process
    scores every batch (the same sums everywhere; nothing left to reduce)."""

    process_index = 0
    num_processes = 1

    def __init__(self, device: torch.device) -> None:
        self.device = device


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True)
    bar.start()
    return bar
