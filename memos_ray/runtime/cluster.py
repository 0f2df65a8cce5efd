"""The live half of the cluster check: the config against the Ray nodes it runs on.

`memos_ray.config.cluster_problems` refuses, from the config alone, what a multi-node config
would tie to one node. What the config cannot know is the cluster itself: a single-node
profile deployed onto several nodes (its embedded servers listen on one node's loopback,
its SQLite and engine files sit on one node's disk), or a `cluster.single_host` config whose
nodes turn out to be on different machines. The builder, every API replica at start and the
jobs run this check, so the mistake is one clear error instead of failures on some nodes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ray

from memos_ray.config import MemosConfig
from memos_ray.errors import ConfigError


def alive_nodes() -> list[dict[str, Any]]:
    """Ray's view of the nodes that are up (the connected cluster's)."""
    return [node for node in ray.nodes() if node.get("Alive")]


def check_cluster(config: MemosConfig, nodes: Sequence[Mapping[str, Any]] | None = None) -> None:
    """Raise ConfigError when `config` does not fit the cluster of `nodes` (default: the
    alive nodes of the connected Ray cluster)."""
    nodes = alive_nodes() if nodes is None else nodes
    hosts = sorted({str(node.get("NodeManagerAddress", "")) for node in nodes})
    cluster = config.cluster
    if len(nodes) > 1 and not cluster.multi_node:
        raise ConfigError(
            f"this Ray cluster has {len(nodes)} nodes, but the config is a single-node one: "
            "its embedded stores listen on one node's loopback and keep files on that node's "
            "disk, so replicas and actors placed on other nodes would not reach them. Use "
            "servers every node reaches and set cluster.multi_node (configs/multinode.yaml, "
            "configs/production.yaml), or run on one node"
        )
    if cluster.multi_node and cluster.single_host and len(hosts) > 1:
        raise ConfigError(
            "cluster.single_host says every node runs on one machine, but the Ray nodes have "
            f"{len(hosts)} addresses ({', '.join(hosts)}): loopback store addresses would reach "
            "a different machine from each; give the stores addresses every node reaches and "
            "unset cluster.single_host"
        )
