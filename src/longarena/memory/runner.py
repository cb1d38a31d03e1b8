"""The segment runner: feed a sequence of any length through a segment model, segment by
segment, carrying its state.

Any model with ``forward(input_ids, *, state=None, labels=None, **kwargs) -> out`` where
``out.logits``, ``out.loss`` and ``out.state`` exist works: the four memory models here
and the generic ``lm`` (whose state is its KV caches / recurrent states).

Labels are the *next* tokens of the whole sequence, computed before splitting, so the
last token of a segment is scored against the first token of the next one; every loss
here is the mean over all scored tokens of the sequence, whatever the split.

Truncated back-propagation through segments (``bptt=k``): the carried state is detached
every k segments, so a loss in one window of k segments reaches the tokens and memories
of that window only. :func:`train_segments` calls ``backward`` once per window, which
frees that window's graph: training memory is one window's, flat in the number of
segments. :func:`train_mrbp` gives exact full back-propagation through every segment with
the same flat memory, by replaying segments backwards from stored states (Memformer's
memory replay back-propagation).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from longarena.constants import IGNORE
from longarena.mixers.base import map_state


@dataclasses.dataclass
class SegmentRun:
    """What :func:`run_segments` returns: logits (B, T, V) if kept, the mean loss, the final state."""

    logits: Tensor | None
    loss: Tensor | None
    state: Any
    #: scored tokens behind ``loss``
    tokens: int = 0


def next_token_labels(input_ids: Tensor) -> Tensor:
    """(B, T) ids -> (B, T) labels: ``labels[:, t] = input_ids[:, t + 1]``, the last IGNORE."""
    labels = torch.full_like(input_ids, IGNORE)
    labels[:, :-1] = input_ids[:, 1:]
    return labels


def state_tensors(state: Any) -> list[Tensor]:
    """Every tensor of a state, in a fixed order."""
    found: list[Tensor] = []

    def visit(t: Tensor) -> Tensor:
        found.append(t)
        return t

    map_state(state, visit)
    return found


def detach_state(state: Any) -> Any:
    """The same state with no autograd history: gradients stop here."""
    return map_state(state, lambda t: t.detach())


def state_numel(state: Any) -> int:
    """Numbers carried per batch (all tensors of the state)."""
    return sum(t.numel() for t in state_tensors(state))


def segment_bounds(length: int, segment_len: int) -> list[tuple[int, int]]:
    """[(start, end)] covering ``length`` tokens in segments of ``segment_len`` (the last may be shorter)."""
    if not isinstance(segment_len, int) or segment_len <= 0:
        raise ValueError(f"segment_len must be a positive int, got {segment_len!r}")
    if length <= 0:
        raise ValueError("the sequence is empty; the runner needs at least one token")
    return [(s, min(s + segment_len, length)) for s in range(0, length, segment_len)]


def _segment_len(model: nn.Module, segment_len: int | None) -> int:
    if segment_len is not None:
        return segment_len
    configured = getattr(getattr(model, "config", None), "segment_len", None)
    if configured is None:
        raise ValueError(f"{type(model).__name__} has no config.segment_len; pass segment_len= to the runner")
    return configured


def _check_bptt(bptt: int | None) -> None:
    if bptt is not None and (not isinstance(bptt, int) or bptt <= 0):
        raise ValueError(f"bptt must be a positive number of segments or None (never truncate), got {bptt!r}")


def run_segments(
    model: nn.Module,
    input_ids: Tensor,
    labels: Tensor | None = None,
    *,
    state: Any = None,
    segment_len: int | None = None,
    bptt: int | None = None,
    carry: bool = True,
    keep_logits: bool = True,
    **forward_kwargs: Any,
) -> SegmentRun:
    """Run ``input_ids`` (B, T), any T, through ``model`` segment by segment.

    ``labels`` (B, T) are next tokens (see :func:`next_token_labels`); the returned loss
    is their mean over the whole sequence and keeps the autograd graph, truncated every
    ``bptt`` segments (None: never). ``carry=False`` resets the state at every segment (the
    memory-off ablation). Extra keyword arguments go to every forward (``mem_len=``).
    """
    _check_bptt(bptt)
    bounds = segment_bounds(input_ids.shape[1], _segment_len(model, segment_len))
    logits, total, count = [], None, 0
    for i, (s, e) in enumerate(bounds):
        if bptt is not None and i % bptt == 0:
            state = detach_state(state)
        seg_labels = None if labels is None else labels[:, s:e]
        out = model(input_ids[:, s:e], state=state if carry else None, labels=seg_labels, **forward_kwargs)
        state = out.state
        if keep_logits:
            logits.append(out.logits)
        if seg_labels is not None:
            n = int((seg_labels != IGNORE).sum())
            if n:
                total = out.loss * n if total is None else total + out.loss * n
                count += n
    loss = None
    if labels is not None:
        loss = total / count if count else torch.zeros((), device=input_ids.device)
    return SegmentRun(torch.cat(logits, dim=1) if keep_logits else None, loss, state, count)


def _scored(labels: Tensor) -> int:
    return int((labels != IGNORE).sum())


def train_segments(
    model: nn.Module,
    input_ids: Tensor,
    labels: Tensor | None = None,
    *,
    segment_len: int | None = None,
    bptt: int | None = 1,
    aux_weight: float = 1.0,
    carry: bool = True,
    **forward_kwargs: Any,
) -> float:
    """Accumulate the gradient of the sequence's mean loss with truncated BPTT; returns the loss.

    ``backward`` runs once per window of ``bptt`` segments (None: once for the whole
    sequence), so the graph of one window is alive at a time. Outputs with an
    ``aux_loss`` (the Compressive Transformer's reconstruction loss) add
    ``aux_weight * aux_loss`` per segment. ``carry=False`` resets the state at every
    segment (the memory-off ablation). The caller zeroes and steps the optimizer.
    """
    _check_bptt(bptt)
    labels = next_token_labels(input_ids) if labels is None else labels
    bounds = segment_bounds(input_ids.shape[1], _segment_len(model, segment_len))
    count = _scored(labels)
    if count == 0:
        raise ValueError("no label is scored (all IGNORE); nothing to train on")
    window = len(bounds) if bptt is None else bptt
    state, objective, total = None, None, 0.0
    for i, (s, e) in enumerate(bounds):
        out = model(input_ids[:, s:e], state=state if carry else None, labels=labels[:, s:e], **forward_kwargs)
        n = _scored(labels[:, s:e])
        term = out.loss * (n / count) if n else out.logits.sum() * 0.0
        total += float(term.detach())
        aux = getattr(out, "aux_loss", None)
        if aux is not None and aux_weight and aux.requires_grad:
            term = term + aux_weight * aux / len(bounds)
        objective = term if objective is None else objective + term
        state = out.state
        if (i + 1) % window == 0 or i == len(bounds) - 1:
            objective.backward()
            objective = None
            state = detach_state(state)
    return total


def train_mrbp(
    model: nn.Module,
    input_ids: Tensor,
    labels: Tensor | None = None,
    *,
    segment_len: int | None = None,
    **forward_kwargs: Any,
) -> float:
    """Memory replay back-propagation (Wu et al., 2020): exact full BPTT, one segment's graph at a time.

    A no-grad pass stores only the state entering each segment. Then, from the last
    segment to the first, each segment is replayed from its stored state with gradients
    on, and ``backward`` runs on its loss plus ``<dL/d(state out), state out>``; the gradient
    it leaves on its input state is carried to the segment before. The parameter
    gradients equal those of back-propagating through all segments (``bptt=None``), at
    the cost of a second forward. The model must be deterministic (no dropout in train
    mode). Returns the mean loss.
    """
    labels = next_token_labels(input_ids) if labels is None else labels
    bounds = segment_bounds(input_ids.shape[1], _segment_len(model, segment_len))
    count = _scored(labels)
    if count == 0:
        raise ValueError("no label is scored (all IGNORE); nothing to train on")
    states: list[Any] = [None]
    with torch.no_grad():
        for s, e in bounds[:-1]:
            states.append(model(input_ids[:, s:e], state=states[-1], **forward_kwargs).state)
    grad_out: list[Tensor] | None = None
    total = 0.0
    for i in range(len(bounds) - 1, -1, -1):
        s, e = bounds[i]
        state_in = map_state(states[i], lambda t: t.detach().requires_grad_(t.is_floating_point()))
        out = model(input_ids[:, s:e], state=state_in, labels=labels[:, s:e], **forward_kwargs)
        n = _scored(labels[:, s:e])
        objective = out.loss * (n / count) if n else out.logits.sum() * 0.0
        total += float(objective.detach())
        if grad_out is not None:
            for t, g in zip(state_tensors(out.state), grad_out):
                if g is not None and t.requires_grad:
                    objective = objective + (t * g).sum()
        objective.backward()
        grad_out = [t.grad for t in state_tensors(state_in)]
    return total


@torch.no_grad()
def perplexity(
    model: nn.Module,
    input_ids: Tensor,
    *,
    segment_len: int | None = None,
    **forward_kwargs: Any,
) -> dict[str, float]:
    """Perplexity of long documents ``input_ids`` (B, T) read segment by segment with memory."""
    was_training = model.training
    model.eval()
    try:
        run = run_segments(model, input_ids, next_token_labels(input_ids), segment_len=segment_len,
                           keep_logits=False, **forward_kwargs)
    finally:
        model.train(was_training)
    loss = float(run.loss)
    return {"loss": loss, "perplexity": float(torch.exp(torch.tensor(loss))), "tokens": run.tokens}


@torch.no_grad()
def generate(
    model: nn.Module,
    input_ids: Tensor,
    max_new_tokens: int,
    *,
    segment_len: int | None = None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    **forward_kwargs: Any,
) -> Tensor:
    """Greedy (temperature 0) or sampled continuation of ``input_ids`` (B, T0) -> (B, T0 + new).

    Full segments are committed to the state; the open segment (1..S tokens) is
    recomputed at each new token from the committed state, so every prediction is the one
    the model makes when it reads the whole text segment by segment (the training view).
    A token costs one forward of at most S tokens, whatever the length so far.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if input_ids.shape[1] == 0:
        raise ValueError("generate needs a prompt of at least one token")
    s = _segment_len(model, segment_len)
    tokens, state, committed = input_ids, None, 0
    while tokens.shape[1] - committed > s:
        state = model(tokens[:, committed:committed + s], state=state, **forward_kwargs).state
        committed += s
    for _ in range(max_new_tokens):
        logits = model(tokens[:, committed:], state=state, **forward_kwargs).logits[:, -1]
        if temperature > 0:
            nxt = torch.multinomial(torch.softmax(logits.float() / temperature, dim=-1), 1, generator=generator)
        else:
            nxt = logits.argmax(dim=-1, keepdim=True)
        tokens = torch.cat((tokens, nxt), dim=1)
        if tokens.shape[1] - committed > s:
            state = model(tokens[:, committed:committed + s], state=state, **forward_kwargs).state
            committed += s
    return tokens


class SavedTensorMeter:
    """Measure the activation memory autograd keeps for backward, live and at its peak.

    A context manager over ``torch.autograd.graph.saved_tensors_hooks``: every tensor a
    forward saves is counted until its graph is freed (by ``backward`` or by dropping the
    loss). ``peak`` is the most bytes alive at once, the training-memory figure that a
    truncated segment runner keeps flat in the number of segments. Storage shared by
    several saved views is counted once per save, an upper bound.
    """

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0
        self._hooks: Any = None

    def _pack(self, tensor: Tensor) -> Any:
        size = tensor.numel() * tensor.element_size()
        self.live += size
        self.peak = max(self.peak, self.live)
        # a detached alias: holding an op's saved *output* itself would make a reference
        # cycle through its grad_fn that only the cyclic GC could free, hiding the release
        return _Saved(tensor.detach(), size, self)

    @staticmethod
    def _unpack(saved: Any) -> Tensor:
        return saved.tensor

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


class _Saved:
    __slots__ = ("tensor", "size", "meter")

    def __init__(self, tensor: Tensor, size: int, meter: SavedTensorMeter) -> None:
        self.tensor, self.size, self.meter = tensor, size, meter

    def __del__(self) -> None:
        self.meter.live -= self.size
