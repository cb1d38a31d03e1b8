"""Long-context probes for LLMs: text prompts with known answers, synthesised without data.

Every maker returns a ``Probe``: the ``prompt`` to feed a model, the ``answers`` it must
produce, and where the evidence sits. All are seeded (same arguments, same text) and fit
a token budget measured with the caller's tokenizer.

- ``make_passkey``: a five-digit pass key hidden at ``depth`` in repeated filler
  (Mohtashami & Jaggi 2023).
- ``make_needle``: needle-in-a-haystack: a "special number" sentence inserted at a sentence
  boundary at ``depth`` in generated prose; the haystack is fitted to the token budget
  by binary search over its words, so the prompt lands within a few tokens of it (and
  the haystack may end mid-sentence).
- ``make_multikey`` / ``make_multivalue``: RULER's variants: several needles with other
  keys as distractors, or several values under one key, all of which must be returned.
- ``make_multiquery``: RULER's multi-query variant: several needles, all asked about.
- ``make_variable_tracking``: RULER's chains ``VAR A = 12345``, ``VAR B = A`` … spread
  through the haystack; the model must list every variable that holds the value.
- ``make_kv_retrieval``: Lost in the Middle: a JSON object of UUID pairs, the gold pair at
  ``gold_index``; the model must return the gold key's value.

``tokenizer`` may be None (a built-in word/punctuation count, about 1.3× fewer tokens than
a BPE), an object with ``encode`` (a Hugging Face tokenizer; special tokens are not
counted) or a function ``text -> int``. ``Probe.score(output)`` is the fraction of the
answers found in a model's output (RULER's string-match metric).

Depth is the fraction of the haystack's tokens that precede the needle: 0 puts it first,
1 last. ``Probe.depth`` reports the depth reached, which can differ from the requested one
by the length of one sentence because needles go between sentences.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from longarena.config import ConfigError

_WORD = re.compile(r"\w+|[^\w\s]")


def approx_tokens(text: str) -> int:
    """A tokenizer-free count: words and punctuation marks."""
    return len(_WORD.findall(text))


def token_counter(tokenizer: Any = None) -> Callable[[str], int]:
    """A function ``text -> number of tokens`` for any supported tokenizer argument."""
    if tokenizer is None:
        return approx_tokens
    if hasattr(tokenizer, "encode"):

        def count(text: str) -> int:
            try:
                return len(tokenizer.encode(text, add_special_tokens=False))
            except TypeError:  # tokenizers.Tokenizer and simple encoders take no such keyword
                out = tokenizer.encode(text)
                return len(getattr(out, "ids", out))

        return count
    if callable(tokenizer):

        def count(text: str) -> int:
            n = tokenizer(text)
            return n if isinstance(n, int) else len(n)

        return count
    raise TypeError(
        f"tokenizer must be None, have an encode method, or be callable; got {type(tokenizer).__name__}"
    )


@dataclasses.dataclass
class Probe:
    """A prompt and what a model must answer. ``depth``: where the (first) evidence sits."""

    kind: str
    prompt: str
    answers: list[str]
    depth: float | None
    tokens: int
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def answer(self) -> str:
        return ", ".join(self.answers)

    def score(self, output: str) -> float:
        """Fraction of the answers that appear in ``output`` (case-insensitive)."""
        low = output.lower()
        return sum(a.lower() in low for a in self.answers) / len(self.answers)


# --- filler -----------------------------------------------------------------------------------
_REPEAT = (
    "The river runs down to the sea. The hills are quiet in the evening. "
    "Birds fly over the open field. The road goes on and on. "
)
_SUBJECTS = (
    "The old farmer",
    "A quiet child",
    "The ship's captain",
    "My neighbour",
    "The young painter",
    "A tired traveller",
    "The village baker",
    "Her grandmother",
    "The night watchman",
    "A curious student",
    "The mayor",
    "Our teacher",
    "The gardener",
    "A stranger in a grey coat",
    "The fisherman",
)
_VERBS = (
    "walked slowly towards",
    "looked for a while at",
    "wrote a long letter about",
    "thought again about",
    "carried a basket to",
    "sang a song about",
    "drew a careful picture of",
    "told a story about",
    "waited patiently near",
    "spoke softly about",
    "remembered",
    "cleaned",
    "visited",
    "admired",
)
_OBJECTS = (
    "the red barn",
    "a distant hill",
    "the harbour",
    "the narrow bridge",
    "an empty church",
    "the orchard",
    "the market square",
    "a broken clock",
    "the winter garden",
    "the lighthouse",
    "a field of barley",
    "the old mill",
    "the school by the river",
    "a row of cottages",
    "the forest path",
)
_ENDINGS = (
    "before dawn.",
    "in the rain.",
    "after supper.",
    "on a cold morning.",
    "without a word.",
    "while the bells rang.",
    "as the sun went down.",
    "for the last time that year.",
    "with great care.",
    "once the snow had melted.",
    "in the middle of the week.",
    "just as the wind changed.",
)


_NEEDLE_INTRO = (
    "The text below hides a few special numbers, each tied to a name. "
    "Read it carefully and keep them in mind: questions about them follow."
)


def _needle_sentence(key: str, value: str) -> str:
    return f"The special number for {key} is {value}."


def _needle_question(key: str) -> str:
    return f"Which special number was given for {key} in the text above? The special number for {key} is"


def _sentences(rng: random.Random, filler: str) -> Callable[[], str]:
    if filler == "repeat":
        parts = [s.strip() + "." for s in _REPEAT.split(".") if s.strip()]
        state = {"i": 0}

        def nxt() -> str:
            s = parts[state["i"] % len(parts)]
            state["i"] += 1
            return s

        return nxt
    if filler == "prose":
        return lambda: (
            f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_ENDINGS)}"
        )
    raise ConfigError(f"filler must be 'prose' or 'repeat', got {filler!r}")


# --- assembly -----------------------------------------------------------------------------------
def _check_depth(depth: float) -> None:
    if not 0.0 <= depth <= 1.0:
        raise ConfigError(f"depth must be in [0, 1], got {depth}")


def _insert(
    words: list[str], inserts: Sequence[tuple[float, str]], count: Callable[[str], int] | None
) -> tuple[str, list[float]]:
    """Haystack text with each (depth, sentence) placed at the sentence boundary nearest its depth.

    With ``count`` the depth is measured in tokens (binary search over boundaries); without
    it in words, which is the cheap estimate used while the haystack length is searched.
    """
    # a needle goes only between whole sentences; the haystack's cut-off tail (the last
    # few words that fill the budget) stays after it even at depth 1
    bounds = [0] + [i + 1 for i, w in enumerate(words) if w.endswith(".")]
    total = count(" ".join(words)) if count else len(words)
    at: list[int] = []
    reached: list[float] = []
    for depth, _ in inserts:
        target = depth * total

        def size(b: int) -> int:
            return count(" ".join(words[:b])) if count else b

        lo, hi = 0, len(bounds) - 1
        while lo < hi:  # first boundary whose prefix reaches the target
            mid = (lo + hi) // 2
            if size(bounds[mid]) < target:
                lo = mid + 1
            else:
                hi = mid
        best = min({lo, max(lo - 1, 0)}, key=lambda j: abs(size(bounds[j]) - target))
        at.append(bounds[best])
        reached.append(size(bounds[best]) / total if total else 0.0)
    pieces: list[str] = []
    order = sorted(range(len(inserts)), key=lambda i: (at[i], i))
    start = 0
    for i in order:
        pieces.extend(words[start : at[i]])
        pieces.append(inserts[i][1])
        start = at[i]
    pieces.extend(words[start:])
    return " ".join(pieces), reached


def _fit(
    budget: int,
    intro: str,
    question: str,
    inserts: Sequence[tuple[float, str]],
    seed: int,
    tokenizer: Any,
    filler: str,
) -> tuple[str, list[float], int]:
    """The longest prompt intro + haystack (with inserts) + question within ``budget`` tokens."""
    count = token_counter(tokenizer)
    rng = random.Random(seed)
    nxt = _sentences(rng, filler)

    def prompt(words: list[str], exact: bool) -> tuple[str, list[float]]:
        hay, reached = _insert(words, inserts, count if exact else None)
        return f"{intro}\n\n{hay}\n\n{question}", reached

    fixed = count(prompt([], False)[0])
    if fixed > budget:
        raise ConfigError(
            f"a budget of {budget} tokens cannot hold even the probe's template ({fixed} tokens)"
        )
    words: list[str] = []
    while True:  # grow the word stream until it overflows the budget
        words.extend(" ".join(nxt() for _ in range(max(64, len(words) // 8 + 1))).split())
        if count(prompt(words, False)[0]) > budget:
            break
    lo, hi = 0, len(words)  # largest k with prompt(words[:k]) within budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(prompt(words[:mid], False)[0]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    k = lo
    # the exact, token-measured placement can move a needle by a sentence; keep within budget
    while True:
        text, reached = prompt(words[:k], True)
        n = count(text)
        if n <= budget or k == 0:
            return text, reached, n
        k -= 1


def _digits(rng: random.Random, n: int) -> str:
    return str(rng.randrange(10 ** (n - 1), 10**n))


_KEY_ADJ = "amber brisk calm dusty eager faint gentle hollow icy jolly keen lucid".split()
_KEY_NOUN = "otter falcon lantern meadow quartz harbor violin thistle cobalt ember glacier".split()


def _key_word(rng: random.Random) -> str:
    return f"{rng.choice(_KEY_ADJ)}-{rng.choice(_KEY_NOUN)}-{rng.randrange(100, 1000)}"


def _distinct_keys(rng: random.Random, n: int) -> list[str]:
    """``n`` different key words, drawn until no repeat."""
    keys: list[str] = []
    while len(keys) < n:
        k = _key_word(rng)
        if k not in keys:
            keys.append(k)
    return keys


# --- probes ------------------------------------------------------------------------------------------
def make_passkey(length_tokens_approx: int, depth: float, seed: int = 0, tokenizer: Any = None) -> Probe:
    """A pass key hidden at ``depth`` in repeated filler, in about ``length_tokens_approx`` tokens."""
    _check_depth(depth)
    rng = random.Random(f"passkey/{seed}")
    key = _digits(rng, 5)
    intro = (
        "Somewhere in the long text below there is one important piece of information. "
        "Find it and remember it: you will be asked about it afterwards."
    )
    needle = f"The pass key is {key}. Keep it in mind: {key} is the pass key."
    question = "What is the pass key? The pass key is"
    text, reached, n = _fit(
        length_tokens_approx, intro, question, [(depth, needle)], seed, tokenizer, "repeat"
    )
    return Probe(
        "passkey", text, [key], reached[0], n, {"requested_depth": depth, "budget": length_tokens_approx}
    )


def make_needle(
    length_tokens: int,
    depth: float,
    seed: int = 0,
    tokenizer: Any = None,
    *,
    filler: str = "prose",
    needle: str | None = None,
    question: str | None = None,
    answer: str | None = None,
) -> Probe:
    """Needle-in-a-haystack: a sentence at ``depth`` of a haystack fitted to ``length_tokens``.

    Give ``needle``, ``question`` and ``answer`` together to use your own needle; by
    default it is "The special number for <key> is <7 digits>."
    """
    _check_depth(depth)
    custom = (needle, question, answer)
    if any(x is not None for x in custom) and not all(x is not None for x in custom):
        raise ConfigError("give needle, question and answer together (or none of them)")
    rng = random.Random(f"needle/{seed}")
    if needle is None:
        key, value = _key_word(rng), _digits(rng, 7)
        needle, question = _needle_sentence(key, value), _needle_question(key)
        answer = value
    intro = _NEEDLE_INTRO
    text, reached, n = _fit(length_tokens, intro, question, [(depth, needle)], seed, tokenizer, filler)
    return Probe(
        "needle",
        text,
        [answer],
        reached[0],
        n,
        {"requested_depth": depth, "budget": length_tokens, "needle": needle},
    )


def make_multikey(
    length_tokens: int,
    depth: float,
    num_keys: int = 4,
    seed: int = 0,
    tokenizer: Any = None,
    *,
    filler: str = "prose",
) -> Probe:
    """RULER multi-key NIAH: ``num_keys`` needles, one asked about (at ``depth``), the rest distractors."""
    _check_depth(depth)
    if num_keys < 1:
        raise ConfigError(f"num_keys must be >= 1, got {num_keys}")
    rng = random.Random(f"multikey/{seed}")
    keys = _distinct_keys(rng, num_keys)
    values = [_digits(rng, 7) for _ in keys]
    inserts = [(depth, _needle_sentence(keys[0], values[0]))]
    inserts += [(rng.random(), _needle_sentence(k, v)) for k, v in zip(keys[1:], values[1:])]
    intro = _NEEDLE_INTRO
    question = _needle_question(keys[0])
    text, reached, n = _fit(length_tokens, intro, question, inserts, seed, tokenizer, filler)
    return Probe(
        "multikey",
        text,
        [values[0]],
        reached[0],
        n,
        {"requested_depth": depth, "budget": length_tokens, "key": keys[0], "distractor_keys": keys[1:]},
    )


def make_multiquery(
    length_tokens: int,
    depth: float,
    num_queries: int = 4,
    seed: int = 0,
    tokenizer: Any = None,
    *,
    filler: str = "prose",
) -> Probe:
    """RULER multi-query NIAH: ``num_queries`` needles (the first at ``depth``), all asked about."""
    _check_depth(depth)
    if num_queries < 1:
        raise ConfigError(f"num_queries must be >= 1, got {num_queries}")
    rng = random.Random(f"multiquery/{seed}")
    keys = _distinct_keys(rng, num_queries)
    values = [_digits(rng, 7) for _ in keys]
    depths = [depth] + [rng.random() for _ in keys[1:]]
    inserts = [(d, _needle_sentence(k, v)) for d, k, v in zip(depths, keys, values)]
    names = ", ".join(keys[:-1]) + (f" and {keys[-1]}" if len(keys) > 1 else keys[0])
    question = f"Which special numbers were given for {names} in the text above? They are"
    text, reached, n = _fit(length_tokens, _NEEDLE_INTRO, question, inserts, seed, tokenizer, filler)
    return Probe(
        "multiquery",
        text,
        values,
        reached[0],
        n,
        {"requested_depth": depth, "budget": length_tokens, "keys": keys, "depths": reached},
    )


def make_multivalue(
    length_tokens: int,
    depth: float,
    num_values: int = 4,
    seed: int = 0,
    tokenizer: Any = None,
    *,
    filler: str = "prose",
) -> Probe:
    """RULER multi-value NIAH: one key, ``num_values`` values from ``depth`` on; all must be returned."""
    _check_depth(depth)
    if num_values < 1:
        raise ConfigError(f"num_values must be >= 1, got {num_values}")
    rng = random.Random(f"multivalue/{seed}")
    key = _key_word(rng)
    values = list(dict.fromkeys(_digits(rng, 7) for _ in range(num_values * 2)))[:num_values]
    depths = [depth] + [depth + (1 - depth) * rng.random() for _ in values[1:]]
    inserts = [(d, _needle_sentence(key, v)) for d, v in zip(depths, values)]
    intro = _NEEDLE_INTRO
    question = (
        f"List every special number given for {key} in the text above. The special numbers for {key} are"
    )
    text, reached, n = _fit(length_tokens, intro, question, inserts, seed, tokenizer, filler)
    return Probe(
        "multivalue",
        text,
        values,
        min(reached),
        n,
        {"requested_depth": depth, "budget": length_tokens, "key": key, "depths": reached},
    )


def make_variable_tracking(
    length_tokens: int, num_hops: int = 4, seed: int = 0, tokenizer: Any = None, *, filler: str = "repeat"
) -> Probe:
    """RULER variable tracking: ``VAR A = 12345``, then ``num_hops`` copies ``VAR B = A`` …, in order."""
    if num_hops < 1:
        raise ConfigError(f"num_hops must be >= 1, got {num_hops}")
    rng = random.Random(f"vt/{seed}")
    names: list[str] = []
    while len(names) < num_hops + 1:
        name = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))
        if name not in names:
            names.append(name)
    value = _digits(rng, 5)
    depths = sorted(rng.random() for _ in names)
    statements = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = {a}." for a, b in zip(names, names[1:])]
    intro = (
        "The text below contains variable assignments scattered among other sentences. Keep track of them."
    )
    question = (
        f"Which variables end up holding the value {value}, directly or through other variables? "
        "Answer with every such variable name:"
    )
    text, reached, n = _fit(
        length_tokens, intro, question, list(zip(depths, statements)), seed, tokenizer, filler
    )
    return Probe(
        "variable_tracking",
        text,
        names,
        reached[0],
        n,
        {"budget": length_tokens, "depths": reached, "value": value},
    )


def make_kv_retrieval(num_pairs: int, gold_index: int, seed: int = 0, tokenizer: Any = None) -> Probe:
    """Lost in the Middle key-value retrieval: ``num_pairs`` UUID pairs as JSON, gold at ``gold_index``."""
    if num_pairs < 1 or not 0 <= gold_index < num_pairs:
        raise ConfigError(
            f"need num_pairs >= 1 and 0 <= gold_index < num_pairs, got {num_pairs}, {gold_index}"
        )
    rng = random.Random(f"kv/{seed}")

    def uid() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    pairs = [(uid(), uid()) for _ in range(num_pairs)]
    gold_key, gold_value = pairs[gold_index]
    body = json.dumps(dict(pairs), indent=1)
    prompt = (
        "Extract the value corresponding to the specified key in the JSON object below.\n\n"
        f'JSON data:\n{body}\n\nKey: "{gold_key}"\nCorresponding value:'
    )
    count = token_counter(tokenizer)
    return Probe(
        "kv_retrieval",
        prompt,
        [gold_value],
        gold_index / max(num_pairs - 1, 1),
        count(prompt),
        {"gold_index": gold_index, "num_pairs": num_pairs, "key": gold_key},
    )


PROBES: dict[str, Callable[..., Probe]] = {
    "passkey": make_passkey,
    "needle": make_needle,
    "multikey": make_multikey,
    "multivalue": make_multivalue,
    "multiquery": make_multiquery,
    "variable_tracking": make_variable_tracking,
    "kv_retrieval": make_kv_retrieval,
}


def grid(
    kind: str,
    lengths: Sequence[int],
    depths: Sequence[float],
    seed: int = 0,
    tokenizer: Any = None,
    **kw: Any,
) -> list[Probe]:
    """Probes of ``kind`` (passkey, needle, multikey, multivalue) for every (length, depth) cell."""
    if kind not in ("passkey", "needle", "multikey", "multivalue", "multiquery"):
        raise ConfigError(
            "grid needs a depth-controlled probe: passkey, needle, multikey, multivalue or multiquery; "
            f"got {kind!r}"
        )
    maker = PROBES[kind]
    return [
        maker(length, depth, seed=seed * 1_000_003 + i * 1000 + j, tokenizer=tokenizer, **kw)
        for i, length in enumerate(lengths)
        for j, depth in enumerate(depths)
    ]
