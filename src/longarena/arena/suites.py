"""Named suites of arena cells and studies.

A suite is data: cells (one task, the mixers compared on it, one shared model shape and
training budget) and studies (measurements beside the training, run after the cells; see
:mod:`longarena.arena.studies`). Suites are registered by name with :func:`register_suite`
or read from a JSON/YAML file with :func:`load_suite`; both give a :class:`Suite` whose
names have been checked against the registries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from longarena.config import Config, ConfigError, read_mapping_file
from longarena.train.objective import TrainConfig


def _expect_types(config: Config, **types: type | tuple[type, ...]) -> None:
    """Raise ``ConfigError`` naming the first field whose value is not of its type."""
    for field, expected in types.items():
        value = getattr(config, field)
        # bool is an int to Python, never a width or a depth
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
            raise ConfigError(f"{type(config).__name__}.{field} must be {names}, got {type(value).__name__} {value!r}")


@dataclasses.dataclass
class Cell(Config):
    """One comparison: ``mixers`` each train the same model shape on ``task``.

    ``mixers`` may be the string ``"causal"`` / ``"all"`` to mean every registered mixer
    (causal ones only for LM tasks). ``mixer_overrides`` holds per-mixer config changes
    that keep the comparison fair (e.g. a head count that divides ``d_model``).
    """

    task: str = "associative_recall"
    task_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    mixers: Any = "all"
    d_model: int = 64
    n_layers: int = 2
    mixer_overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    #: further model fields shared by every mixer of the cell (ModelConfig's, e.g. dropout,
    #: and for classifiers ``pooling``)
    backbone: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: whole registered models compared beside the mixers (e.g. "perceiver" on classification),
    #: built with this cell's d_model and the task's vocabulary/classes, plus these overrides
    models: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    train: dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        _expect_types(self, task=str, task_config=dict, d_model=int, n_layers=int, mixer_overrides=dict, backbone=dict,
                      models=dict, train=dict)
        fixed = sorted(set(self.backbone) & {"d_model", "n_layers", "pattern", "mixer", "vocab_size", "num_classes"})
        if fixed:
            raise ConfigError(f"Cell.backbone cannot set {fixed}: the cell's own fields and the task decide them")
        if isinstance(self.mixers, str):
            if self.mixers not in ("all", "causal"):
                raise ConfigError(f"Cell.mixers must be 'all', 'causal' or a list of mixer names, got {self.mixers!r}")
        elif isinstance(self.mixers, (list, tuple)):
            self.mixers = tuple(self.mixers)
            if not all(isinstance(n, str) for n in self.mixers):
                raise ConfigError(f"Cell.mixers must hold mixer names (strings), got {list(self.mixers)!r}")
        else:
            raise ConfigError(f"Cell.mixers must be 'all', 'causal' or a list of mixer names, got {type(self.mixers).__name__}")
        if self.d_model <= 0 or self.n_layers <= 0:
            raise ConfigError(f"Cell needs d_model > 0 and n_layers > 0, got {self.d_model} and {self.n_layers}")
        try:  # names an unknown or out-of-range training field now, not mid-run
            TrainConfig.from_dict(self.train)
        except TypeError as exc:
            raise ConfigError(f"Cell.train {self.train!r} has a value of the wrong type: {exc}") from exc

    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.train)

    def check_names(self) -> None:
        """Raise ``ConfigError`` naming the known ones when the task, a mixer or a model is unknown."""
        from longarena import mixers, models, tasks

        if self.task not in tasks.names():
            raise ConfigError(f"unknown task {self.task!r} in a suite cell; known tasks: {', '.join(tasks.names())}")
        listed = self.mixers if isinstance(self.mixers, tuple) else ()
        unknown = [n for n in (*listed, *self.mixer_overrides) if n not in mixers.names() and n not in self.models]
        if unknown:
            raise ConfigError(f"unknown mixer(s) {unknown} in the {self.task!r} cell; known mixers: {', '.join(mixers.names())}")
        unknown = [n for n in self.models if n not in models.names()]
        if unknown:
            raise ConfigError(f"unknown model(s) {unknown} in the {self.task!r} cell; known models: {', '.join(models.names())}")


@dataclasses.dataclass
class StudySpec(Config):
    """A measurement run after the cells: ``kind`` names a registered study, ``config`` is its settings."""

    kind: str = "bench"
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: the report section's heading (default: the study's own title)
    title: str | None = None

    def validate(self) -> None:
        _expect_types(self, title=(str, type(None)))
        if not isinstance(self.kind, str) or not self.kind:
            raise ConfigError(f"StudySpec.kind must be a study name, got {self.kind!r}")
        if not isinstance(self.config, dict):
            raise ConfigError(f"StudySpec.config must be a dict of the study's settings, got {type(self.config).__name__}")


@dataclasses.dataclass
class Suite(Config):
    name: str = "quick"
    description: str = ""
    cells: tuple[Cell, ...] = ()
    studies: tuple[StudySpec, ...] = ()
    #: torch CPU threads while the suite runs (None: torch's default, one per core). Tiny
    #: models gain little from a second thread, and on a shared machine every parallel op
    #: waits for the slowest thread: the quick suite's cells ran 10-40x slower with two
    #: threads beside another job, about 1.5x with one
    threads: int | None = None

    def validate(self) -> None:
        _expect_types(self, name=str, description=str, threads=(int, type(None)))
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"Suite.threads must be >= 1 or None (torch's default), got {self.threads}")
        for field, cls in (("cells", Cell), ("studies", StudySpec)):
            items = tuple(getattr(self, field))
            bad = [type(v).__name__ for v in items if not isinstance(v, cls)]
            if bad:
                raise ConfigError(f"Suite.{field} must hold {cls.__name__} entries (or dicts of their fields), got {bad}")
            setattr(self, field, items)

    def check_names(self) -> None:
        """Check every cell's task, mixer and model names against the registries."""
        for cell in self.cells:
            cell.check_names()


SUITES: dict[str, Callable[[], Suite]] = {}


def register_suite(name: str) -> Callable[[Callable[[], Suite]], Callable[[], Suite]]:
    """Decorator: ``@register_suite("mine") def mine() -> Suite: ...`` makes ``--suite mine`` work."""

    def wrap(fn: Callable[[], Suite]) -> Callable[[], Suite]:
        SUITES[name] = fn
        return fn

    return wrap


def get_suite(name: str) -> Suite:
    """The registered suite ``name``, or a suite file (``.json``, ``.yaml``, ``.yml``) at that path."""
    if name not in SUITES:
        if Path(name).suffix in (".json", ".yaml", ".yml"):
            return load_suite(name)
        raise ConfigError(f"unknown suite {name!r}; known suites: {', '.join(sorted(SUITES))} (or a .json/.yaml suite file)")
    suite = SUITES[name]()
    suite.check_names()
    return suite


def load_suite(path: str | Path) -> Suite:
    """A suite from a JSON or YAML file holding ``Suite``'s fields; unknown keys are named."""
    path = Path(path)
    data = read_mapping_file(path, "suite file", "Suite fields (name, description, cells, studies)")
    try:
        suite = Suite.from_dict(data)
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"suite file {path}: {exc}") from exc
    suite.check_names()
    return suite


@register_suite("quick")
def _quick() -> Suite:
    return Suite(
        name="quick",
        description=(
            "Every mixer on two small synthetic tasks, same shape and budget: associative "
            "recall (causal mixers, as LMs) and short ListOps (every mixer, as classifiers); "
            "then a CPU speed sweep, recall against state size (MQAR), train-short-test-long "
            "perplexity and a needle-in-a-haystack grid of SmolLM2."
        ),
        cells=(
            Cell(
                task="associative_recall",
                task_config=dict(vocab_size=16, num_pairs=4, num_queries=4, n_train=16384, n_validation=256),
                mixers="causal",
                d_model=64,
                n_layers=2,
                # a budget that keeps the suite to minutes on 2 CPU cores. Attention solves this
                # task only after an induction phase transition (batch 256, lr 1e-3: by step 300
                # on an H100 host's CPU, not within 500 steps on this CPU), so at this budget it
                # usually stays near 0.37 while mixers with a short convolution (H3, Hyena, Mega)
                # or decay (RetNet) solve it; longer runs are the arena issue's suites
                train=dict(steps=300, batch_size=128, lr=1e-3, warmup=30),
            ),
            Cell(
                task="listops",
                # trees of depth <= 3 (an operator over operators over digits), 11-25 tokens. The
                # answer depends on which digits sit under which operator: no model that sees
                # only token counts can pass 0.46, an MLP on them reaches 0.34, the most
                # frequent class is 0.12 (benchmarks/arena_listops.py). One layer and 200 steps
                # keep the 16 models near two minutes on 2 CPU cores; two layers and 300 steps
                # add ~0.03 to ~0.35 at about 2.5x the time
                task_config=dict(max_depth=3, max_args=4, operator_p=0.5, min_length=10, max_length=64,
                                 n_train=32768, n_validation=512, n_test=0),
                mixers="all",
                d_model=32,
                n_layers=1,
                # Linformer's projections are sized by max_len: at its default (4096) they alone
                # would be 40x the other models' parameters
                mixer_overrides={"nystromformer": {"n_landmarks": 8}, "linformer": {"max_len": 64, "proj_len": 16}},
                models={"perceiver": {"n_latents": 8, "d_latent": 32, "n_latent_layers": 1}},
                train=dict(steps=200, batch_size=128, lr=3e-3, warmup=20),
            ),
        ),
        threads=1,
        # each study kind's defaults are its quick settings (see longarena.arena.study_kinds)
        studies=(
            StudySpec("bench"),
            StudySpec("state_recall"),
            StudySpec("train_short_test_long"),
            StudySpec("niah"),
        ),
    )


@register_suite("smoke")
def _smoke() -> Suite:
    """A seconds-long suite for tests and for checking an installation."""
    return Suite(
        name="smoke",
        description="A few steps per mixer on the quick suite's tasks, no studies: checks that every mixer trains end to end.",
        threads=1,
        cells=(
            Cell(
                task="associative_recall",
                task_config=dict(vocab_size=16, num_pairs=2, num_queries=2, n_train=64, n_validation=32),
                mixers="causal",
                d_model=32,
                n_layers=1,
                train=dict(steps=3, batch_size=16, warmup=1, eval_batches=1),
            ),
            Cell(
                task="listops",
                task_config=dict(max_depth=3, max_args=3, operator_p=0.5, min_length=5, max_length=24,
                                 n_train=64, n_validation=32, n_test=0),
                mixers="all",
                d_model=32,
                n_layers=1,
                mixer_overrides={"nystromformer": {"n_landmarks": 4}, "linformer": {"max_len": 32, "proj_len": 8}},
                models={"perceiver": {"n_latents": 4, "d_latent": 32, "n_latent_layers": 1}},
                train=dict(steps=3, batch_size=16, warmup=1, eval_batches=1),
            ),
        ),
    )


#: optimizer steps of each LRA task in the ``lra`` suite, the same for every family (a
#: fixed, shared budget: the presets hold the published, far longer schedules)
LRA_SUITE_STEPS = {"listops": 20_000, "text": 8_000, "retrieval": 10_000, "image": 14_000, "pathfinder32": 25_000, "pathx": 10_000}


def lra_cells(steps: dict[str, int] | None = None, data_root: str | Path = ".") -> tuple[tuple[Cell, ...], list[str]]:
    """One cell per (LRA task, shared shape): every family of ``train.presets`` at its
    preset width and settings, trained for the same ``steps[task]``.

    Families whose presets differ in width (a costlier mixer is narrower, to stay within the
    task's parameter budget) or in their optimizer settings (S4/S5's own state-space
    learning rate) land in separate cells of the same task. Tasks read from files (Text,
    Retrieval, Image) are kept only when their ``data_dir`` exists under ``data_root``;
    the second return value names the skipped ones and where their files go.
    """
    from longarena.train import presets

    steps = {**LRA_SUITE_STEPS, **(steps or {})}
    cells: list[Cell] = []
    skipped: list[str] = []
    for short, (_, task_config) in presets.TASKS.items():
        data_dir = task_config.get("data_dir")
        if data_dir is not None and not (Path(data_root) / data_dir).exists():
            skipped.append(f"{short} (no {data_dir}; docs/tasks.md says how to fetch it)")
            continue
        groups: dict[str, dict[str, Any]] = {}
        for family in presets.FAMILIES:
            run = presets.shared(short, family)
            model = dict(run["model"])
            mixer = model.pop("pattern")[0]
            overrides = model.pop("mixer")[mixer]
            train = {**run["train"], "steps": steps[short], "eval_every": 0, "checkpoint_every": 0}
            train["warmup"] = min(train["warmup"], steps[short] // 10)
            d_model, n_layers = model.pop("d_model"), model.pop("n_layers")
            key = repr((d_model, n_layers, sorted(model.items()), sorted(train.items())))
            group = groups.setdefault(key, {"task": run["task"], "task_config": run["task_config"], "d_model": d_model,
                                           "n_layers": n_layers, "backbone": model, "train": train,
                                           "mixers": [], "mixer_overrides": {}})
            group["mixers"].append(mixer)
            group["mixer_overrides"][mixer] = overrides
        cells.extend(Cell(**{**g, "mixers": tuple(g["mixers"])}) for g in groups.values())
    return tuple(cells), skipped


def _lra_description(skipped: list[str]) -> str:
    text = (
        "Long Range Arena on a GPU: every family in its preset shape within the task's parameter "
        "budget (longarena train --list-presets; S4 in its published block: batch norm, GLU, no MLP), "
        "the same steps per task (arena.suites.LRA_SUITE_STEPS), "
        "bf16. ListOps, Pathfinder-32 and Path-X come from the generators; Text, Retrieval and Image "
        "from local files."
    )
    return text + (f" Skipped: {'; '.join(skipped)}." if skipped else "")


@register_suite("lra")
def _lra() -> Suite:
    cells, skipped = lra_cells()
    return Suite(name="lra", description=_lra_description(skipped), cells=cells)


@register_suite("full")
def _full() -> Suite:
    cells, skipped = lra_cells()
    recall = Cell(
        task="associative_recall",
        task_config=dict(vocab_size=64, num_pairs=16, num_queries=16, n_train=200_000, n_validation=2048),
        mixers="causal",
        d_model=128,
        n_layers=2,
        train=dict(steps=4000, batch_size=256, lr=1e-3, warmup=200, precision="bf16"),
    )
    return Suite(
        name="full",
        description=(
            "The lra suite, associative recall at 16 pairs for every causal mixer, and the studies at "
            "GPU scale: a bf16 speed and memory sweep to 64k tokens with decode steps, recall against "
            "state size up to width 256, train-short-test-long over 16x the training length, and a "
            "needle-in-a-haystack grid of SmolLM2 to 8k tokens, all on the GPU. " + _lra_description(skipped)
        ),
        cells=(recall, *cells),
        # lists, not tuples, in study settings: the suite round-trips through results.json
        studies=(
            StudySpec("bench", {"mixers": ["attention", "mamba", "s4d", "s5", "retnet", "hyena", "performer",
                                           "longformer", "bigbird", "mega"],
                                "lengths": [1024, 4096, 16384, 65536], "modes": ["fwd", "fwd_bwd", "step"],
                                "device": "cuda", "dtype": "bfloat16", "d_model": 256, "batch": 4, "repeats": 5}),
            StudySpec("state_recall", {"mixers": ["attention", "mamba", "retnet", "s4d", "hyena", "mega"],
                                       "widths": [32, 64, 128, 256], "steps": 2000, "batch_size": 64,
                                       "device": "cuda"}),
            StudySpec("train_short_test_long", {"train_len": 64, "multiples": [1, 2, 4, 8, 16], "steps": 2000,
                                                "d_model": 64, "layers": 2, "device": "cuda"}),
            StudySpec("niah", {"lengths": [1024, 2048, 4096, 8192], "depths": [i / 10 for i in range(11)],
                               "device": "cuda"}),
        ),
    )
