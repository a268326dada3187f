"""hostd.usage: the layer walk (bytes, inodes, its cap and deadline) and deleted files still held."""
import mmap
import os

import pytest

from shellrent.hostd import usage


def test_walk_counts_bytes_and_inodes_and_stops_past_the_cap(tmp_path):
    (tmp_path / "d").mkdir()
    for i in range(50):
        (tmp_path / "d" / str(i)).touch()
    (tmp_path / "big").write_bytes(os.urandom(1 << 20))
    used, inodes = usage.walk([str(tmp_path)], 1000)
    assert inodes == 53  # the top, d, 50 files and big
    assert used >= 1 << 20
    assert usage.walk([str(tmp_path)], 10)[1] == 11  # past the cap: counting stops there
    assert usage.walk([str(tmp_path / "gone"), ""], 10) == (0, 0)


def test_a_walk_that_cannot_finish_in_time_says_so(tmp_path, monkeypatch):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "find").write_text("#!/bin/sh\nexec /bin/sleep 30\n")
    (bin_ / "find").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_))
    with pytest.raises(usage.UsageError, match=r"took over 1 s \(0 inodes counted\)"):
        usage.walk([str(tmp_path)], 100, timeout=1)


def test_deleted_files_held_open_or_mapped_count_once(tmp_path):
    f = os.open(tmp_path / "x", os.O_RDWR | os.O_CREAT)
    os.write(f, bytes(1 << 20))
    os.fsync(f)
    m = mmap.mmap(f, 1 << 20)
    os.unlink(tmp_path / "x")
    try:
        dev = os.stat(tmp_path).st_dev
        assert usage.held_deleted([os.getpid()], dev) >= 1 << 20
        assert usage.held_deleted([os.getpid()], dev) < 2 << 20  # the descriptor and the mapping: one file
        assert usage.held_deleted([os.getpid()], dev + 1) == 0  # another filesystem's files are not the lease's
    finally:
        m.close()
        os.close(f)


def test_the_inode_share_follows_the_disk_share():
    assert usage.inode_share(0.2e9) == 12207
    assert usage.inode_share(1e6) == 4096
