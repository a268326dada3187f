"""The writable layer's walk (hostd.runtime._walk): what the filesystem holds, each inode once, stopped
as soon as a lease is over a bound, and a walk that cannot finish says why instead of counting as
within the share."""
import os
import time

import pytest

from shellrent.hostd.runtime import DiskCheckError, _walk


def _tree(root):
    (root / "d").mkdir()
    for i in range(10):
        (root / "d" / f"e{i}").touch()
    (root / "big").write_bytes(b"x" * (1 << 20))
    os.link(root / "big", root / "d" / "same")  # a hard link: one inode, one MB
    with open(root / "sparse", "wb") as f:
        f.truncate(1 << 30)  # a GB that holds no block
    return root


def test_the_walk_counts_inodes_and_the_blocks_really_held(tmp_path):
    used = {"bytes": 0, "inodes": 0}
    assert _walk(str(_tree(tmp_path)), used, set(), float("inf"), float("inf"), time.monotonic() + 10) is False
    assert used["inodes"] == 13  # d, ten empty files, big (once), sparse
    assert (1 << 20) <= used["bytes"] < (1 << 20) + 64 * 4096


def test_the_walk_stops_once_over_a_bound(tmp_path):
    _tree(tmp_path)
    used = {"bytes": 0, "inodes": 0}
    assert _walk(str(tmp_path), used, set(), float("inf"), 5, time.monotonic() + 10) is True
    assert used["inodes"] == 6


def test_a_walk_that_cannot_finish_says_why(tmp_path):
    _tree(tmp_path)
    with pytest.raises(DiskCheckError, match=r"walking the writable layer took too long \(0 files, 0.00 GB"):
        _walk(str(tmp_path), {"bytes": 0, "inodes": 0}, set(), float("inf"), float("inf"), time.monotonic() - 1)
