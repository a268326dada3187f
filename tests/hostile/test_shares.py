"""A lease sees its share of the machine: nproc inside the container counts the lease's cores (cpuset
pinning), and two leases get different cores. Real broker, hostd, Docker and OpenSSH."""
import ctypes
import json
import os
import shutil
from pathlib import Path

import pytest

from ..cluster import run, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.hostile]


def test_nproc_shows_the_leases_cores(fresh_cluster):
    c = fresh_cluster
    c.add_host("pc1", {"fake_gpus": "RTX 4090:24,RTX 4090:24", "cpu_per_gpu": "1"})
    c.broker("renter", "credit", "alice", "5")
    wait_for(lambda: c.ssh("offers", "--json", user="ctl", check=True).stdout != b"[]\n", what="the offer")
    leases = [json.loads(c.ssh("rent", "--hours", "1", "--yes", "--json", user="ctl", check=True).stdout)["id"]
              for _ in range(2)]
    cores = []
    for lid in leases:
        assert c.ssh("nproc", user=f"rent+{lid}", check=True).stdout.decode().strip() == "1"
        cpuset = run("docker", "inspect", "-f", "{{.HostConfig.CpusetCpus}}", f"shellrent-{lid}").stdout.decode()
        cores.append(cpuset.strip())
    if len(os.sched_getaffinity(0)) > 1:
        assert cores[0] != cores[1], cores  # spread over the machine, not stacked on core 0


def test_all_gpus_rented_leave_the_host_its_pids(fresh_cluster):
    """8 leases of 4,096 PIDs took every PID of a pid_max of 32,768: each GPU's share is sized from it."""
    c = fresh_cluster
    c.add_host("pc1", {"fake_gpus": ",".join(["RTX 4090:24"] * 8), "cpu_per_gpu": "1", "ram_per_gpu": "1",
                       "disk_per_gpu": "1"})
    c.broker("renter", "credit", "alice", "50")
    wait_for(lambda: c.ssh("offers", "--json", user="ctl", check=True).stdout != b"[]\n", what="the offer")
    lid = json.loads(c.ssh("rent", "--gpus", "2", "--hours", "1", "--yes", "--json", user="ctl", check=True).stdout)["id"]
    limit = int(run("docker", "inspect", "-f", "{{.HostConfig.PidsLimit}}", f"shellrent-{lid}").stdout)
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    per_gpu = min(4096, (pid_max - max(4096, pid_max // 4)) // 8)
    assert limit == 2 * per_gpu, limit
    assert pid_max - 8 * per_gpu >= max(4096, pid_max // 4)  # all 8 GPUs rented: the host keeps its reserve
    doctor = c.hostd("pc1", "doctor", check=False).stdout.decode()
    assert f"pid_max {pid_max}: a lease gets {per_gpu} PIDs per GPU" in doctor, doctor


def test_workspace_and_writable_layer_are_held_to_the_disk_share(fresh_cluster):
    c = fresh_cluster
    c.env["HOSTD_DISK_CHECK"] = "1"
    c.add_host("pc1", {"fake_gpus": "RTX 4090:24", "disk_per_gpu": "0.2"})  # 200 MB per GPU
    c.broker("renter", "credit", "alice", "5")
    wait_for(lambda: c.ssh("offers", "--json", user="ctl", check=True).stdout != b"[]\n", what="the offer")
    lid = json.loads(c.ssh("rent", "--hours", "1", "--yes", "--json", user="ctl", check=True).stdout)["id"]
    free = shutil.disk_usage(c.root).free
    r = c.ssh("dd if=/dev/zero of=/workspace/big bs=1M count=400", user=f"rent+{lid}")
    assert r.returncode != 0 and b"No space left on device" in r.stderr
    size = int(c.ssh("df -B1 --output=size /workspace | tail -1", user=f"rent+{lid}", check=True).stdout)
    assert size <= 200_000_000
    assert free - shutil.disk_usage(c.root).free < 250_000_000  # the host kept the rest
    assert c.ssh("rm /workspace/big && echo ok > /workspace/note", user=f"rent+{lid}").returncode == 0
    # Outside /workspace the engine cannot size the layer here (fuse-overlayfs): hostd says so once, watches
    # the layer and ends the lease.
    assert c.log("hostd-pc1").count("the engine cannot size a lease's writable layer (--storage-opt is not") == 1
    c.ssh("head -c 300M /dev/zero > /root/big", user=f"rent+{lid}")
    wait_for(lambda: json.loads(c.ssh("ls", "--json", user="ctl", check=True).stdout)[0]["state"] == "ended",
             timeout=60, what="the lease to end over its share")
    wait_for(lambda: not c.containers(), what="its container to go")
    assert "over its 0.2 GB share" in c.log("hostd-pc1")
    (row,) = json.loads(c.ssh("ls", "--json", user="ctl", check=True).stdout)
    assert row["reason"] == "it went over its disk share"  # the renter is told why


# Makes POSIX message queues of 10 x 8 KiB (the most a queue may be without CAP_SYS_RESOURCE) until the
# kernel refuses; prints how many it made, the errno, and whether the limit could be raised.
QUEUES = """
import ctypes, os, resource
class Attr(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long), ("msgsize", ctypes.c_long),
                ("curmsgs", ctypes.c_long), ("pad", ctypes.c_long * 4)]
libc = ctypes.CDLL(None, use_errno=True)
n = 0
while n < 256 and libc.mq_open(f"/q{n}".encode(), os.O_CREAT | os.O_RDWR, 0o600, ctypes.byref(Attr(0, 10, 8192))) >= 0:
    n += 1
err = ctypes.get_errno()
try:
    resource.setrlimit(resource.RLIMIT_MSGQUEUE, (1 << 30, 1 << 30))
    raised = True
except (ValueError, OSError):
    raised = False
print(n, err, raised, resource.getrlimit(resource.RLIMIT_MSGQUEUE)[1])
"""


def test_message_queues_are_held_to_the_kernels_default(fresh_cluster):
    """Every lease's root is the host's uid 0, whose POSIX message queues share one byte count: each lease's
    limit is set to the kernel's 800 KiB, whatever the engine inherited, and cannot be raised from inside."""
    c = fresh_cluster
    c.add_host("pc1")
    lid = c.create_lease()
    c.ssh(f"cat > /workspace/q.py <<'EOF'\n{QUEUES}\nEOF", user=f"rent+{lid}", check=True)
    made, err, raised, hard = c.ssh("python3 /workspace/q.py", user=f"rent+{lid}", check=True).stdout.decode().split()
    assert (raised, int(hard)) == ("False", 819200)
    assert 1 <= int(made) < 10 and int(err) == 24, (made, err)  # EMFILE: 800 KiB in all, not 256 queues of 80
    ulimits = json.loads(run("docker", "inspect", "-f", "{{json .HostConfig.Ulimits}}", f"shellrent-{lid}").stdout)
    assert {"Name": "msgqueue", "Soft": 819200, "Hard": 819200} in ulimits  # set, not inherited from the engine


# Holds every inotify instance one process of a lease can (its open files' limit, at most 20,000),
# then says how many it got and how many it tried for.
HOARD = ("nohup python3 -c \"import ctypes, resource, time; _, hard = resource.getrlimit(resource.RLIMIT_NOFILE); "
         "resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard)); want = min(hard - 16, 20000); "
         "libc = ctypes.CDLL(None); n = 0\nwhile n < want and libc.inotify_init1(0) >= 0: n += 1\n"
         "open('/workspace/held', 'w').write(f'{n} {want}'); time.sleep(600)\" >/dev/null 2>&1 &")
ONE = "python3 -c 'import ctypes; print(ctypes.CDLL(None).inotify_init1(0))'"


def test_a_lease_holding_every_inotify_instance_it_can_leaves_others_theirs(fresh_cluster):
    """Every lease's root is the host's uid 0, and inotify instances are counted per user (128 by
    default): hostd sizes the limit out of one lease's reach, so another lease and the host get theirs."""
    c = fresh_cluster
    c.add_host("pc1", {"fake_gpus": "RTX 4090:24,RTX 4090:24", "ram_per_gpu": "1"})
    c.broker("renter", "credit", "alice", "5")
    wait_for(lambda: c.ssh("offers", "--json", user="ctl", check=True).stdout != b"[]\n", what="the offer")
    hoarder, other = [json.loads(c.ssh("rent", "--hours", "1", "--yes", "--json", user="ctl", check=True).stdout)["id"]
                      for _ in range(2)]
    c.ssh(HOARD, user=f"rent+{hoarder}", check=True)
    wait_for(lambda: c.ssh("cat /workspace/held", user=f"rent+{hoarder}").stdout, timeout=60, what="the hoard")
    held, want = map(int, c.ssh("cat /workspace/held", user=f"rent+{hoarder}").stdout.split())
    assert held == want > 1000, (held, want)                          # far past the 128 a user had
    assert int(c.ssh(ONE, user=f"rent+{other}", check=True).stdout) >= 0  # the other lease gets one
    fd = ctypes.CDLL(None, use_errno=True).inotify_init1(0)               # and so does root on the host
    assert fd >= 0, os.strerror(ctypes.get_errno())
    os.close(fd)
    doctor = c.hostd("pc1", "doctor", check=False).stdout.decode()
    assert "per-user limits: fs.inotify.max_user_instances 2147483647" in doctor and "not isolated" in doctor


# Ways to hold 300 MB of the layer that no name shows: a deleted file kept open, one kept only by an
# mmap (Python's mmap keeps a descriptor of its own; libc's mmap through ctypes keeps none), and one
# whose only descriptor is in flight over a unix socket (SCM_RIGHTS), which no /proc entry shows.
FILL = "f = os.open('/root/x', os.O_RDWR | os.O_CREAT); [os.write(f, bytes(1 << 20)) for _ in range(300)]; os.fsync(f)"
HIDE = {
    "open": f"{FILL}; os.unlink('/root/x')",
    "mmap": f"{FILL}; m = mmap.mmap(f, 300 << 20); os.close(f); os.unlink('/root/x')",
    "libc-mmap": f"{FILL}; libc = ctypes.CDLL(None); libc.mmap.restype = ctypes.c_void_p; "
                 "libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, "
                 "ctypes.c_long]; assert libc.mmap(None, 300 << 20, 1, 1, f, 0) not in (None, 2**64 - 1); "
                 "os.close(f); os.unlink('/root/x')",
    "in-flight": f"{FILL}; a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM); "
                 "a.sendmsg([b'x'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [f]))]); "
                 "os.close(f); os.unlink('/root/x')",
}


@pytest.mark.parametrize("how", list(HIDE))
def test_what_the_layer_holds_counts_however_it_is_hidden(fresh_cluster, how):
    c = fresh_cluster
    c.env["HOSTD_DISK_CHECK"] = "1"
    c.add_host("pc1", {"disk_per_gpu": "0.2"})
    lid = c.create_lease()
    code = f"import array, ctypes, mmap, os, socket, time; {HIDE[how]}; time.sleep(600)"
    c.ssh(f'nohup python3 -c "{code}" >/dev/null 2>&1 &', user=f"rent+{lid}", check=True)
    wait_for(lambda: json.loads(c.broker("lease", "list", "--json").stdout)[0]["state"] == "ended", timeout=60,
             what="the lease to end though what it holds has no name")
    held = [x for x in c.log("hostd-pc1").splitlines() if " holds " in x]
    assert held and "over its 0.2 GB share" in held[0], held
    wait_for(lambda: not c.containers(), what="its container to go")


def test_inodes_are_part_of_the_disk_share(fresh_cluster):
    """50,000 empty files counted 0 bytes and took 50,000 of the host's inodes; a 0.2 GB share holds 12,207."""
    c = fresh_cluster
    c.env["HOSTD_DISK_CHECK"] = "1"
    c.add_host("pc1", {"disk_per_gpu": "0.2"})
    lid = c.create_lease()
    code = "import os; os.mkdir('/root/d'); [open(f'/root/d/{i}', 'w').close() for i in range(50000)]"
    c.ssh(f'nohup python3 -c "{code}" >/dev/null 2>&1 &', user=f"rent+{lid}", check=True)
    wait_for(lambda: json.loads(c.broker("lease", "list", "--json").stdout)[0]["state"] == "ended", timeout=90,
             what="the lease to end over its inodes")
    held = [x for x in c.log("hostd-pc1").splitlines() if " holds " in x]
    assert held and "over 12207 inodes of the host's, its share" in held[0], held
    wait_for(lambda: not c.containers(), what="its container to go")


# Ignores SIGTERM and writes its layer for as long as it runs, 4 MB at a time, each step counted in
# /workspace (which stays readable after the lease).
GREEDY = ("nohup bash -c \"trap '' TERM; n=0; while true; do head -c 4M /dev/zero >> /root/fill; "
          "n=\\$((n+4)); echo \\$n > /workspace/written; done\" >/dev/null 2>&1 &")


def test_a_lease_over_its_disk_share_writes_nothing_more_once_seen(fresh_cluster):
    """A writer that ignores SIGTERM wrote 7.5 GB past a 1 GB share through the grace; now frozen when seen."""
    c = fresh_cluster
    c.env["HOSTD_DISK_CHECK"] = "1"
    c.add_host("pc1", {"disk_per_gpu": "0.2", "grace": "20s"})
    lid = c.create_lease()
    assert c.ssh(GREEDY, user=f"rent+{lid}").returncode == 0
    wait_for(lambda: "over its 0.2 GB share" in c.log("hostd-pc1"), timeout=60, what="the watch to see it")
    seen = c.hostd_log_time("over its 0.2 GB share")
    wait_for(lambda: json.loads(c.broker("lease", "list", "--json").stdout)[0]["state"] == "ended", timeout=30,
             what="the lease to end")
    ended = c.hostd_log_time(f"lease {lid} ended")
    assert ended - seen < 10, ended - seen  # no 20 s grace for a lease frozen over its share
    line = next(x for x in c.log("hostd-pc1").splitlines() if "over its 0.2 GB share" in x)
    held_mb = float(line.split(" holds ")[1].split(" GB")[0]) * 1000
    wait_for(lambda: not c.containers(), what="its container to go")
    batch, got = c.root / "get.batch", c.root / "written"
    batch.write_text(f"get /workspace/written {got}\n")
    run("sftp", "-b", batch, "-P", str(c.ssh_port), *c.ssh_opts(), f"rent+{lid}@127.0.0.1")  # an ended lease's files
    written = int(got.read_text())
    assert written <= held_mb + 64, (written, held_mb)  # at most what was on its way when the watch looked
