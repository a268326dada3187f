"""The session helper (hostd.inside): sessions it starts are confined exactly as a `docker exec` is,
and a renter who kills, replaces or starves it costs only their own lease a slower session."""
import json
import os
import subprocess
import time

import pytest

from .cluster import rss_mb, run, wait_for

pytestmark = pytest.mark.docker

# Everything that confines a process, as the process itself sees it.
CONFINEMENT = r"""
grep -E '^(Uid|Gid|Groups|Cap...|NoNewPrivs|Seccomp|Seccomp_filters|SigBlk|SigIgn):' /proc/self/status
for ns in cgroup ipc mnt net pid uts user; do echo "$ns $(readlink /proc/self/ns/$ns)"; done
cat /proc/self/cgroup
echo "apparmor $(cat /proc/self/attr/current 2>/dev/null)"
echo "limits $(grep -E 'processes|open files' /proc/self/limits | tr -s ' ')"
"""


def _via(c, lease: str) -> list[str]:
    return ["helper" if line.split(" via ", 1)[1].startswith("helper") else "docker exec"
            for line in c.log("hostd-pc1").splitlines() if f"lease {lease}: session via" in line]


def _session(c, lease: str, command: str, **kw):
    before = len(_via(c, lease))
    out = c.ssh(command, user=f"rent+{lease}", **kw)
    wait_for(lambda: len(_via(c, lease)) > before, what="hostd to log the session")
    return out, _via(c, lease)[-1]


def _helper_up(c, lease: str):
    wait_for(lambda: _session(c, lease, "true")[1] == "helper", what="the helper to serve sessions")


def test_a_helper_session_is_confined_exactly_as_docker_exec(cluster):
    c = cluster
    _helper_up(c, c.lease)
    out, via = _session(c, c.lease, CONFINEMENT, check=True)
    assert via == "helper"
    reference = run("docker", "exec", f"shellrent-{c.lease}", "sh", "-c", CONFINEMENT).stdout
    assert out.stdout == reference
    assert b"NoNewPrivs:\t1" in reference and b"Seccomp:\t2" in reference  # the test sees real confinement
    # ... and it runs where a session should, with what a session should see.
    env, via = _session(c, c.lease, "pwd; id -un; echo $SHELLRENT_LEASE_ID $HOME; tty || true", check=True)
    assert env.stdout.decode().split() == ["/workspace", "root", c.lease, "/root", "not", "a", "tty"]


def test_a_terminal_through_the_helper(cluster):
    c = cluster
    _helper_up(c, c.lease)
    out, via = _session(c, c.lease, "tty; stty size; echo $TERM", opts=["-tt"], check=True)
    lines = out.stdout.decode().split("\r\n")
    assert via == "helper" and lines[0].startswith("/dev/pts/") and lines[2] == "xterm", lines


def test_a_killed_helper_means_docker_exec_then_a_new_helper(cluster):
    c = cluster
    _helper_up(c, c.lease)
    c.ssh("pkill -KILL -f 'shellrent/helpe[r].py'", user=f"rent+{c.lease}")
    out, via = _session(c, c.lease, "echo still; exit 3")
    assert (out.stdout, out.returncode, via) == (b"still\n", 3, "docker exec")
    _helper_up(c, c.lease)  # hostd started another


FAKE = r"""
import array, os, socket, sys, time
name = open('/etc/shellrent/helper.key').read().strip()
mode = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM if mode == 'stream' else socket.SOCK_DGRAM)
s.bind('\0' + name)
if mode == 'stream':
    s.listen(8)
print('listening', flush=True)
held = []
while True:
    if mode == 'stream':
        held.append(s.accept()[0])
        continue
    msg, anc, _, _ = s.recvmsg(1 << 18, socket.CMSG_SPACE(64))
    fds = array.array('i', anc[0][2]).tolist() if anc else []
    if mode == 'hang':
        held += fds  # never answers, never lets go
        continue
    answer = {'garbage': b'\xff' * 100, 'nested': b'[' * 4000, 'badpid': b'{"pid": "1"}'}[mode]
    os.write(fds[-2], answer + b'\n')
    for fd in fds:
        os.close(fd)
"""


def _hostd_pipes_threads(c) -> tuple[int, int]:
    """hostd's open pipes (what a session through the helper holds) and threads."""
    pid = c.procs["hostd-pc1"].pid
    pipes = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            pipes += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:")
        except FileNotFoundError:
            pass
    return pipes, len(os.listdir(f"/proc/{pid}/task"))


@pytest.mark.parametrize("mode", ["garbage", "nested", "badpid", "hang", "stream"])
def test_a_fake_helper_costs_only_a_slower_session(fresh_cluster, mode):
    c = fresh_cluster
    c.add_host("pc1")
    a, b = c.create_lease(), c.create_lease()
    _helper_up(c, a)
    _helper_up(c, b)
    # In one session, so that hostd has no moment to start a new helper in between.
    c.ssh(f"cat >/tmp/fake.py; pkill -KILL -f 'shellrent/helpe[r].py'; "
          f"nohup python3 /tmp/fake.py {mode} >/tmp/fake.log 2>&1 &", user=f"rent+{a}", input=FAKE.encode())
    wait_for(lambda: b"listening" in c.ssh("cat /tmp/fake.log", user=f"rent+{a}").stdout, what="the fake helper")
    before = len(_via(c, a))
    pipes, threads = _hostd_pipes_threads(c)
    for flags in ([], ["-tt"]) * 3:
        out, via = _session(c, a, "echo mine; tty >/dev/null && echo tty; true", opts=flags)
        assert out.returncode == 0 and out.stdout.replace(b"\r", b"") == b"mine\n" + (b"tty\n" if flags else b"")
        assert via == "docker exec"
    assert len(_via(c, a)) == before + 6
    # hostd holds nothing of those sessions: no fd, no thread
    wait_for(lambda: _hostd_pipes_threads(c) == (pipes, threads), what="hostd to hold what it held")
    # The other lease and hostd go on as before.
    out, via = _session(c, b, "echo theirs", check=True)
    assert (out.stdout, via) == (b"theirs\n", "helper")
    status = json.loads(c.hostd("pc1", "status", "--json").stdout)
    assert status["connected"]


def test_an_image_without_python_uses_docker_exec(fresh_cluster):
    c = fresh_cluster
    c.add_host("pc1")
    a = c.create_lease()
    _helper_up(c, a)
    c.ssh("rm -f $(command -v python3) /usr/bin/python3*; pkill -KILL -f 'shellrent/helpe[r].py'",
          user=f"rent+{a}")
    for _ in range(3):
        out, via = _session(c, a, "echo ok", check=True)
        assert (out.stdout, via) == (b"ok\n", "docker exec")
        time.sleep(1)


FLOOD = r"""
import array, os, socket
name = open('/etc/shellrent/helper.key').read().strip()
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind('\0' + name)
print('listening', flush=True)
while True:
    msg, anc, _, _ = s.recvmsg(1 << 18, socket.CMSG_SPACE(64))
    fds = array.array('i', anc[0][2]).tolist()
    if os.fork() == 0:  # output before the answer, then for ever
        for i in range(64):
            os.write(fds[1], b'x' * 65536)
        os.write(fds[-2], b'{"pid": 1}\n')
        while True:
            os.write(fds[1], b'x' * 65536)
    for fd in fds:
        os.close(fd)
"""


def test_output_before_the_answer_still_waits_for_a_reader(fresh_cluster):
    """Flow control holds from the first byte: output a session makes while it starts is not read
    into hostd faster than the renter takes it (a fake helper floods before and after it answers)."""
    c = fresh_cluster
    c.add_host("pc1")
    a = c.create_lease()
    _helper_up(c, a)
    c.ssh("cat >/tmp/flood.py; pkill -KILL -f 'shellrent/helpe[r].py'; "
          "nohup python3 /tmp/flood.py >/tmp/flood.log 2>&1 &", user=f"rent+{a}", input=FLOOD.encode())
    wait_for(lambda: b"listening" in c.ssh("cat /tmp/flood.log", user=f"rent+{a}").stdout, what="the flood")
    hostd = c.procs["hostd-pc1"].pid
    before = rss_mb(hostd)
    reader = subprocess.Popen(c.ssh_cmd(f"rent+{a}", "-T") + ["true"], stdout=subprocess.PIPE,
                              stdin=subprocess.DEVNULL)  # never reads
    try:
        wait_for(lambda: "session via helper" in c.log("hostd-pc1").rsplit("flood", 1)[-1], what="the session")
        time.sleep(4)
        assert rss_mb(hostd) < before + 64  # at most windows and buffers, not the flood (GBs in 4 s)
    finally:
        reader.kill()
        reader.wait()
        reader.stdout.close()


def test_a_departed_renter_leaves_nothing_open_even_with_stdin_unread(cluster):
    c = cluster
    _helper_up(c, c.lease)
    _session(c, c.lease, "true")
    pipes, threads = _hostd_pipes_threads(c)
    clients = [subprocess.Popen(c.ssh_cmd("rent", "-T") + ["sleep 100000"], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(6)]
    time.sleep(2)
    for p in clients:  # more than every window and pipe on the way can hold, never read
        try:
            p.stdin.write(b"x" * (3 << 20))
            p.stdin.flush()
        except BrokenPipeError:
            pass
    for p in clients:
        p.kill()
        p.wait()
        p.stdin.close()
    wait_for(lambda: _hostd_pipes_threads(c) == (pipes, threads), what="hostd to close the departed sessions")
