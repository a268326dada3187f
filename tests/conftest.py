import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from .cluster import IMAGE, Cluster
from .pg import PgServer


def _require_docker() -> None:
    """Docker tests fail (never skip) when the engine or the base image is missing."""
    if not shutil.which("docker"):
        pytest.fail("docker CLI not found: these tests need the Docker engine")
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode:
        pytest.fail(f"image {IMAGE} missing or engine unreachable: run scripts/build-image.sh")


@pytest.fixture(scope="module")
def cluster():
    """Broker + one connected hostd (pc1) + one active lease for alice; shared by a test module."""
    _require_docker()
    c = Cluster(Path(tempfile.mkdtemp(prefix="shellrent-test-")))
    try:
        c.start_broker()
        c.add_host("pc1")
        c.lease = c.create_lease()
        yield c
    finally:
        c.close()


@pytest.fixture
def fresh_cluster():
    """A cluster of one's own: broker running, no hosts yet."""
    _require_docker()
    c = Cluster(Path(tempfile.mkdtemp(prefix="shellrent-test-")))
    try:
        c.start_broker()
        yield c
    finally:
        c.close()


@pytest.fixture(scope="session")
def pg_server():
    """One throwaway PostgreSQL server for the run (tests/pg.py); each test takes a fresh schema of it."""
    server = PgServer()
    try:
        yield server
    finally:
        server.stop()
