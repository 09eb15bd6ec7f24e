"""The distributed test matrix: a test module that imports `cluster_factory_each_pool` runs each of its tests
once with prefork workers and once with the threads pool (many turns on one shared event loop per worker
process). Not a plugin: importing it overrides `cluster_factory` for that module only."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cluster import Cluster

POOLS = ["prefork", "threads"]


@pytest.fixture(params=POOLS, name="cluster_factory")
def cluster_factory_each_pool(cluster_factory: Any, request: pytest.FixtureRequest) -> Any:
    """`cluster_factory`, once with prefork workers and once with the threads pool (turns on one shared event
    loop per worker process). A test module opts in with `from tests.pools import cluster_factory_each_pool`."""

    def make(**options: Any) -> Cluster:
        return cluster_factory(**{"pool": request.param, **options})

    return make
