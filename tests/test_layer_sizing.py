"""A lease's writable layer is sized where the engine can (the `size` storage option), and where it
cannot the engine's reason is said once and the container made without it; a stand-in engine."""
import logging

import pytest
from docker.errors import APIError

from shellrent.hostd.runtime import Runtime


class Containers:
    def __init__(self, sizes: bool, refuse: str | None = None):
        self.sizes, self.refuse, self.made = sizes, refuse, []

    def create(self, image, command, **kw):
        if self.refuse:
            raise APIError("refused", explanation=self.refuse)
        if "storage_opt" in kw and not self.sizes:
            raise APIError("refused", explanation="--storage-opt is supported only for overlay over xfs with "
                                                  "'pquota' mount option")
        self.made.append(kw)
        return kw


def runtime(containers) -> Runtime:
    rt = Runtime.__new__(Runtime)
    rt.client = type("Client", (), {"containers": containers})()
    rt.layer_sized = None
    return rt


def test_an_engine_that_sizes_layers_gets_the_share():
    rt = runtime(Containers(sizes=True))
    made = rt.create_sized("img", ["true"], 2_000_000_000, name="a")
    assert made["storage_opt"] == {"size": "2000000000"} and rt.layer_sized is True


def test_an_engine_that_cannot_is_said_once_and_the_layer_is_only_counted(caplog):
    rt = runtime(Containers(sizes=False))
    with caplog.at_level(logging.INFO):
        for name in "ab":
            assert "storage_opt" not in rt.create_sized("img", ["true"], 10**9, name=name)
    assert rt.layer_sized is False and [r.message for r in caplog.records].count(
        "disk shares: the engine cannot size a lease's writable layer (--storage-opt is supported only for overlay "
        "over xfs with 'pquota' mount option): it is counted and a lease over its share is frozen") == 1


def test_a_refusal_of_its_own_is_raised_and_teaches_nothing():
    rt = runtime(Containers(sizes=True, refuse="No such image: img"))
    with pytest.raises(APIError, match="refused"):
        rt.create_sized("img", ["true"], 10**9, name="a")
    assert rt.layer_sized is None
