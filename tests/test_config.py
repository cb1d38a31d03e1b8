"""Configs round-trip through plain dicts and JSON; registries explain unknown names."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from longarena import mixers, models, positions, tasks
from longarena.arena.suites import SUITES, Suite, get_suite
from longarena.config import ConfigError
from longarena.models.backbone import ModelConfig
from longarena.registry import Registry, UnknownNameError


@settings(max_examples=30, deadline=None)
@given(
    d_model=st.sampled_from([8, 16, 32, 64]),
    n_layers=st.integers(1, 4),
    n_heads=st.sampled_from([1, 2, 4, 8]),
    theta=st.floats(2.0, 1e6, allow_nan=False),
)
def test_model_config_round_trips_through_json(d_model, n_layers, n_heads, theta):
    config = ModelConfig(
        d_model=d_model, n_layers=n_layers, pattern=("attention",),
        mixer={"attention": {"n_heads": n_heads, "position_params": {"theta": theta}}},
    )
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("name", sorted(SUITES))
def test_suites_round_trip(name):
    suite = get_suite(name)
    assert Suite.from_dict(json.loads(json.dumps(suite.to_dict()))) == suite


@settings(max_examples=15, deadline=None)
@given(cut=st.integers(1, 15), seed=st.integers(0, 2**16))
def test_attention_prefill_at_any_split_point_equals_full_forward(cut, seed):
    torch.manual_seed(seed)
    m = mixers.get("attention", 16, n_heads=2, n_kv_heads=1)
    x = torch.randn(1, 16, 16)
    with torch.no_grad():
        full, _ = m(x)
        a, state = m(x[:, :cut])
        b, _ = m(x[:, cut:], state=state)
    torch.testing.assert_close(torch.cat([a, b], 1), full, rtol=1e-4, atol=1e-5)


def test_unknown_fields_and_names_list_what_is_known():
    with pytest.raises(ConfigError, match="known fields: .*d_model"):
        ModelConfig.from_dict({"d_modle": 3})
    for registry, name in ((mixers, "mixer"), (models, "model"), (positions, "position scheme"), (tasks, "task")):
        with pytest.raises(UnknownNameError, match=f"known {name}s: "):
            registry.get("definitely-not-registered")


def test_registry_refuses_a_second_component_under_one_name():
    reg: Registry = Registry("thing")
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(lambda: 2)
    assert reg.names() == ["a"] and reg.summaries() == {"a": ""}


def test_optional_tuple_fields_round_trip():
    import dataclasses as dc

    from longarena.config import Config

    @dc.dataclass
    class WithOptionalTuple(Config):
        gammas: tuple[float, ...] | None = None

    config = WithOptionalTuple(gammas=(0.9, 0.99))
    assert WithOptionalTuple.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_numbers_are_refused_naming_the_field(bad):
    """A component's own range check speaks first; the generic check catches what it lets
    through (inf passes ``lr > 0``)."""
    from longarena.train import TrainConfig

    with pytest.raises(ConfigError, match=r"lr"):
        TrainConfig(lr=bad)
    with pytest.raises(ConfigError, match=r"betas"):
        TrainConfig.from_dict({"betas": [0.9, bad]})
    # as a run file or --set may hold them: json reads Infinity and NaN
    with pytest.raises(ConfigError, match=r"lr"):
        TrainConfig.from_dict(json.loads('{"lr": %s}' % json.dumps(bad)))
    with pytest.raises(ConfigError, match=r"AttentionConfig\.position_params\.theta must be a finite number"):
        mixers.get("attention", 16, position_params={"theta": bad})


def test_inf_learning_rate_is_refused_at_validation():
    from longarena.train import TrainConfig

    with pytest.raises(ConfigError, match=r"TrainConfig\.lr must be a finite number, got inf"):
        TrainConfig(lr=float("inf"))
