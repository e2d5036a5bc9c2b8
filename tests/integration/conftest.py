"""Fixtures of the integration tests."""

from __future__ import annotations

import pytest

from tests.integration.local_slurm import cluster


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """One local SLURM cluster for every SLURM test of the session (``local_slurm.cluster``)."""
    yield from cluster(tmp_path_factory.mktemp("slurm"))
