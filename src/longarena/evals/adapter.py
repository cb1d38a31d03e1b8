"""One small model interface for every eval: Hugging Face causal LMs and LongArena LMs.

An ``Adapter`` pairs a model with its tokenizer and offers what the runners need:

- ``encode(text) -> list[int]`` / ``decode(ids) -> str``;
- ``token_losses(ids) -> (T-1,)`` next-token negative log-likelihoods (nats) of one sequence;
- ``score(prompt, continuation) -> Score``: log-likelihood of the continuation given the
  prompt, and whether greedy decoding would have produced it (lm-eval's ``loglikelihood``);
- ``generate_ids(ids, max_new_tokens) -> list[int]`` / ``generate(prompt, ...) -> str``:
  greedy decoding;
- ``attention_maps(ids) -> (L, H, T, T)``: softmax attention weights of every layer/head
  (for induction-head scores).

Subclasses implement ``_hidden(ids) -> (1, T, D)``, ``_head(h) -> (1, T', V)``,
``generate_ids`` and ``attention_maps``. Losses project the hidden states through the
output head in chunks of positions, because full (T, V) logits of a 49k-vocabulary model
at 8k tokens are 1.6 GB of float32.

``max_length`` is the context the model was trained for (``None``: not known). It is not
enforced here: runners warn about and mark cells beyond it, since measuring what happens
there is the point of a context-extension study.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: positions projected through the output head at once when computing losses
HEAD_CHUNK = 1024


class EvalError(ValueError):
    """Bad eval input: a missing data file, an unusable model, a length the model cannot take."""


@dataclasses.dataclass
class Score:
    """Log-likelihood (nats) of a continuation, its token count, and whether it is the greedy output."""

    logprob: float
    n_tokens: int
    is_greedy: bool


class Adapter(abc.ABC):
    """The eval-facing view of a causal language model plus its tokenizer."""

    name: str = "model"
    max_length: int | None = None
    eos_id: int | None = None

    @abc.abstractmethod
    def encode(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids of ``text``; ``special`` adds the tokenizer's BOS-style prefix if it has one."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abc.abstractmethod
    def device(self) -> torch.device: ...

    @abc.abstractmethod
    def _hidden(self, ids: Tensor) -> Tensor:
        """ids (1, T) -> final hidden states (1, T, D), after the final norm."""

    @abc.abstractmethod
    def _head(self, h: Tensor) -> Tensor:
        """hidden (1, T', D) -> logits (1, T', V)."""

    @abc.abstractmethod
    def generate_ids(self, ids: Sequence[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation of ``ids``: the new tokens only, stopping after EOS."""

    @abc.abstractmethod
    def attention_maps(self, ids: Sequence[int]) -> Tensor:
        """Attention weights (L, H, T, T) of every attention layer for one sequence."""

    def _tensor(self, ids: Sequence[int] | Tensor) -> Tensor:
        t = torch.as_tensor(list(ids) if not isinstance(ids, Tensor) else ids, dtype=torch.long)
        if t.dim() != 1 or t.numel() == 0:
            raise EvalError(f"expected a non-empty 1-D sequence of token ids, got shape {tuple(t.shape)}")
        if int(t.min()) < 0 or int(t.max()) >= self.vocab_size:
            raise EvalError(
                f"token ids must lie in 0..{self.vocab_size - 1}, got [{int(t.min())}, {int(t.max())}]"
            )
        return t[None].to(self.device)

    @torch.no_grad()
    def token_losses(self, ids: Sequence[int] | Tensor) -> Tensor:
        """Next-token NLL (nats) of one sequence: (T,) ids -> (T-1,) float32 on the CPU.

        Entry ``i`` is ``-log p(ids[i+1] | ids[:i+1])``.
        """
        x = self._tensor(ids)
        h = self._hidden(x)  # (1, T, D)
        out = []
        for s in range(0, x.shape[1] - 1, HEAD_CHUNK):
            e = min(s + HEAD_CHUNK, x.shape[1] - 1)
            logits = self._head(h[:, s:e]).float()  # (1, C, V)
            out.append(F.cross_entropy(logits[0], x[0, s + 1 : e + 1], reduction="none"))
        return torch.cat(out).cpu() if out else torch.zeros(0)

    @torch.no_grad()
    def score_ids(self, context: Sequence[int], continuation: Sequence[int]) -> Score:
        """Log-likelihood of ``continuation`` token ids after ``context`` ids."""
        if not continuation:
            raise EvalError("the continuation to score is empty")
        if not context:
            raise EvalError("the context is empty: score needs at least one token to condition on")
        x = self._tensor(list(context) + list(continuation))
        n = len(continuation)
        h = self._hidden(x)[:, -n - 1 : -1]  # (1, n, D): the states that predict the continuation
        logits = self._head(h).float()[0]  # (n, V)
        target = x[0, -n:]
        logp = torch.log_softmax(logits, dim=-1).gather(1, target[:, None]).sum()
        return Score(float(logp), n, bool((logits.argmax(-1) == target).all()))

    def split(self, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of prompt and continuation, tokenized together as lm-eval does.

        The continuation ids are the tail of ``encode(prompt + continuation)`` beyond the
        prompt's ids, so a merge across the boundary (``" word"``) tokenizes as in running
        text. A space at the end of the prompt is moved to the continuation for that reason.
        """
        n_space = len(prompt) - len(prompt.rstrip(" "))
        if n_space:
            prompt, continuation = prompt[:-n_space], prompt[-n_space:] + continuation
        whole = self.encode(prompt + continuation)
        ctx = self.encode(prompt)
        if whole[: len(ctx)] != ctx:  # the boundary merged: tokenize the parts apart
            return ctx, self.encode(continuation, special=False)
        return ctx, whole[len(ctx) :]

    def score(self, prompt: str, continuation: str) -> Score:
        """Log-likelihood of ``continuation`` after ``prompt`` (lm-eval's ``loglikelihood``)."""
        return self.score_ids(*self.split(prompt, continuation))

    def generate(self, prompt: str, max_new_tokens: int = 32) -> str:
        return self.decode(self.generate_ids(self.encode(prompt), max_new_tokens))

    def check_length(self, n_tokens: int) -> bool:
        """True when ``n_tokens`` exceeds the trained context (runners warn and mark it)."""
        return self.max_length is not None and n_tokens > self.max_length

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "max_length": self.max_length, "vocab_size": self.vocab_size}


# --- Hugging Face ----------------------------------------------------------------------------


class HFAdapter(Adapter):
    """A transformers causal LM (``AutoModelForCausalLM``) with its tokenizer."""

    def __init__(
        self, model: nn.Module, tokenizer: Any, *, name: str | None = None, max_length: int | None = None
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        config = model.config
        self.name = name or getattr(config, "_name_or_path", None) or type(model).__name__
        self.max_length = (
            max_length if max_length is not None else getattr(config, "max_position_embeddings", None)
        )
        eos = getattr(tokenizer, "eos_token_id", None)
        self.eos_id = eos if eos is not None else getattr(config, "eos_token_id", None)
        # logit soft-capping / scaling live in the model's forward, not in the output layer
        self._plain_head = not any(
            getattr(config, a, None) not in (None, 1.0) for a in ("final_logit_softcapping", "logit_scale")
        )

    def encode(self, text: str, *, special: bool = True) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=special))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _hidden(self, ids: Tensor) -> Tensor:
        if not self._plain_head:  # the model's own forward applies the capping/scaling
            return self.model(input_ids=ids, use_cache=False).logits
        return self.model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state

    def _head(self, h: Tensor) -> Tensor:
        if not self._plain_head:  # h already are logits
            return h
        return self.model.get_output_embeddings()(h)

    @torch.no_grad()
    def generate_ids(self, ids: Sequence[int], max_new_tokens: int) -> list[int]:
        x = self._tensor(ids)
        out = self.model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=self.eos_id,
            eos_token_id=self.eos_id,
        )
        new = out[0, x.shape[1] :].tolist()
        if self.eos_id is not None and self.eos_id in new:
            new = new[: new.index(self.eos_id)]
        return new

    @torch.no_grad()
    def attention_maps(self, ids: Sequence[int]) -> Tensor:
        x = self._tensor(ids)
        # fused SDPA kernels do not return weights; the eager path does, and computes the same
        previous = getattr(self.model.config, "_attn_implementation", None)
        self._set_attention("eager")
        try:
            out = self.model(input_ids=x, output_attentions=True, use_cache=False)
        finally:
            if previous is not None:
                self._set_attention(previous)
        if not out.attentions or out.attentions[0] is None:
            raise EvalError(f"{type(self.model).__name__} returned no attention weights")
        return torch.stack([a[0].float() for a in out.attentions]).cpu()  # (L, H, T, T)

    def _set_attention(self, implementation: str) -> None:
        if hasattr(self.model, "set_attn_implementation"):
            self.model.set_attn_implementation(implementation)
        else:  # transformers < 4.48 reads the choice from the config at every forward
            self.model.config._attn_implementation = implementation


def load_hf(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> HFAdapter:
    """An adapter for the transformers checkpoint folder ``path`` (no download is attempted)."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise EvalError("Hugging Face models need transformers: pip install 'transformers>=4.45'") from exc
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise EvalError(
            f"{path} is not a Hugging Face model folder (no config.json); give a local checkpoint folder"
        )
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True).to(device)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return HFAdapter(model, tokenizer, name=folder.name)


# --- LongArena --------------------------------------------------------------------------------


class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255 (the default 256-token vocabulary of LongArena LMs).

    ``eos_id``, when given, must lie outside the byte range (e.g. 256 in a 257-token model).
    Invalid UTF-8 produced by a model decodes to U+FFFD rather than failing.
    """

    def __init__(self, eos_id: int | None = None) -> None:
        if eos_id is not None and eos_id < 256:
            raise EvalError(f"a byte tokenizer's eos_id must be >= 256 (ids 0..255 are bytes), got {eos_id}")
        self.eos_id = eos_id
        self.vocab_size = 256 if eos_id is None else eos_id + 1

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class LongArenaAdapter(Adapter):
    """A ``longarena.models`` causal LM (``LanguageModel``) with a tokenizer (bytes by default).

    ``tokenizer`` needs ``encode(text) -> list[int]`` and ``decode(ids) -> str``; a Hugging
    Face tokenizer works too.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any = None,
        *,
        name: str = "longarena-lm",
        max_length: int | None = None,
    ) -> None:
        for attr in ("embed", "backbone", "head", "generate"):
            if not hasattr(model, attr):
                raise EvalError(
                    f"{type(model).__name__} is not a LongArena LanguageModel (it has no {attr!r})"
                )
        self.model = model.eval()
        self.tokenizer = tokenizer if tokenizer is not None else ByteTokenizer()
        if self.tokenizer_vocab() > model.config.vocab_size:
            raise EvalError(
                f"the tokenizer has {self.tokenizer_vocab()} ids but the model's vocabulary is {model.config.vocab_size}"
            )
        self.name = name
        self.max_length = max_length
        self.eos_id = getattr(self.tokenizer, "eos_id", getattr(self.tokenizer, "eos_token_id", None))

    def tokenizer_vocab(self) -> int:
        return int(getattr(self.tokenizer, "vocab_size", 0) or 0)

    def encode(self, text: str, *, special: bool = True) -> list[int]:
        return list(self.tokenizer.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _hidden(self, ids: Tensor) -> Tensor:
        h, _ = self.model.backbone(self.model.embed(ids))
        return h

    def _head(self, h: Tensor) -> Tensor:
        return self.model.head(h)

    @torch.no_grad()
    def generate_ids(self, ids: Sequence[int], max_new_tokens: int) -> list[int]:
        x = self._tensor(ids)
        new = self.model.generate(x, max_new_tokens, eos_id=self.eos_id)[0, x.shape[1] :].tolist()
        if self.eos_id is not None and self.eos_id in new:
            new = new[: new.index(self.eos_id)]
        return new

    @torch.no_grad()
    def attention_maps(self, ids: Sequence[int]) -> Tensor:
        """Recomputes softmax(q k^T / sqrt(K) + bias) of each ``attention`` mixer from its input.

        The mixers run fused SDPA, which returns no weights, so a hook captures each mixer's
        input and the weights are rebuilt here with the mixer's own projections and
        positional scheme (causal mask, grouped-query heads).
        """
        from longarena.mixers.attention import Attention

        layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        if not layers:
            raise EvalError(
                "the model has no 'attention' mixer layers; attention maps need softmax attention"
            )
        captured: list[Tensor] = []
        hooks = [
            m.register_forward_pre_hook(
                lambda _m, args, kw: captured.append(args[0] if args else kw["x"]), with_kwargs=True
            )
            for m in layers
        ]
        try:
            self._hidden(self._tensor(ids))
        finally:
            for hook in hooks:
                hook.remove()
        return torch.stack([_attention_weights(m, x) for m, x in zip(layers, captured)]).cpu()


def _attention_weights(mixer: nn.Module, x: Tensor) -> Tensor:
    """(1, T, D) mixer input -> (H, T, T) causal softmax weights, as the mixer computes them."""
    b, t, _ = x.shape
    h, hk, k = mixer.n_heads, mixer.n_kv_heads, mixer.head_dim
    q = mixer.q_proj(x).view(b, t, h, k).transpose(1, 2)  # (B, H, T, K)
    kk = mixer.kv_proj(x).view(b, t, 2, hk, k)[:, :, 0].transpose(1, 2)  # (B, Hkv, T, K)
    pos = torch.arange(t, device=x.device)
    q, kk = mixer.position.rotate(q, pos), mixer.position.rotate(kk, pos)
    bias = mixer.position.score_bias(q, kk, pos, pos)
    kk = kk.repeat_interleave(h // hk, dim=1)  # (B, H, T, K)
    scores = (q @ kk.transpose(-1, -2)).float() / math.sqrt(k)  # (B, H, T, T)
    if bias is not None:
        scores = scores + bias.float()
    if mixer.causal:
        scores = scores.masked_fill(
            torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1), float("-inf")
        )
    return torch.softmax(scores, dim=-1)[0]


def load_longarena(
    path: str | os.PathLike, *, tokenizer: Any = None, max_length: int | None = None
) -> LongArenaAdapter:
    """An adapter for a LongArena checkpoint folder (``config.json`` + ``model.safetensors``)."""
    from longarena.models import checkpoint

    try:
        model = checkpoint.load(path, expect="lm")
    except checkpoint.CheckpointError as exc:
        raise EvalError(str(exc)) from exc
    return LongArenaAdapter(model, tokenizer, name=Path(path).name, max_length=max_length)


def as_adapter(model: Any, tokenizer: Any = None, **kw: Any) -> Adapter:
    """Wrap a model (HF or LongArena) and tokenizer in the matching adapter; adapters pass through."""
    if isinstance(model, Adapter):
        return model
    if hasattr(model, "backbone") and hasattr(model, "embed"):
        return LongArenaAdapter(model, tokenizer, **kw)
    if hasattr(model, "get_output_embeddings") and hasattr(model, "generate"):
        if tokenizer is None:
            raise EvalError("a Hugging Face model needs its tokenizer")
        return HFAdapter(model, tokenizer, **kw)
    raise EvalError(
        f"cannot evaluate a {type(model).__name__}: expected a transformers causal LM or a LongArena LanguageModel"
    )
