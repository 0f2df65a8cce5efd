"""Autoscaling as config: what the builder hands Serve, judged by Serve's own model; and the
autoscale bench's reading of a ramp."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from ray.serve.config import AutoscalingConfig as ServeAutoscaling

from deployments.app import replicas
from memos_ray.bench.autoscale import plateau, scaling
from memos_ray.config import AutoscalingConfig, MemosConfig


def test_a_fixed_count_without_autoscaling() -> None:
    assert replicas(3, None) == {"num_replicas": 3}


def test_the_builders_autoscaling_is_valid_for_serve() -> None:
    config = MemosConfig(
        serving={"ingress_autoscaling": scaling(4, 2.0, (3.0, 10.0))},
        embedder={"autoscaling": {"max_replicas": 3, "target_ongoing_requests": 4}},
    )
    assert config.serving.ingress_autoscaling is not None
    for given in (config.serving.ingress_autoscaling, config.embedder.autoscaling):
        options = replicas(1, given)
        assert set(options) == {"autoscaling_config"}
        served = ServeAutoscaling(**options["autoscaling_config"])
        assert served.max_replicas == given.max_replicas
        assert served.upscale_delay_s == given.upscale_delay_s
    # Unset fields keep Serve's own defaults.
    defaults = AutoscalingConfig().model_dump()
    for name, value in defaults.items():
        if name not in ("max_replicas",):
            assert getattr(ServeAutoscaling(), name) == value, name


def test_min_above_max_is_refused() -> None:
    with pytest.raises(ValidationError, match="min_replicas is above max_replicas"):
        MemosConfig(embedder={"autoscaling": {"min_replicas": 3, "max_replicas": 2}})


def _step(concurrency: int, rps: float, api: int, phase: str = "up") -> dict:
    return {
        "concurrency": concurrency,
        "rps": rps,
        "phase": phase,
        "replicas": {"MemosIngress": api, "EmbedderDeployment": 1},
    }


def test_plateau_is_where_more_replicas_stop_adding_throughput() -> None:
    steps = [_step(1, 20, 1), _step(4, 40, 2), _step(8, 41, 3), _step(16, 45, 4)]
    assert plateau(steps) == {
        "concurrency": 8,
        "replicas": {"MemosIngress": 3, "EmbedderDeployment": 1},
        "rps": 41,
        "best_rps_before": 40,
    }
    growing = [_step(1, 20, 1), _step(4, 40, 2), _step(8, 60, 3), _step(4, 30, 3, "down")]
    assert plateau(growing) is None
