"""The session helper: runs inside a lease's container and starts renter sessions for hostd.

hostd starts it once per lease with `docker exec`, so it and every session it forks have exactly the
confinement an exec has: the container's namespaces, cgroup, capabilities, no-new-privileges, seccomp
and AppArmor profile, and user. It waits on an abstract unix datagram socket in the container's
network namespace, named by a secret hostd wrote to /etc/shellrent/helper.key (read-only, this lease
only).

One datagram per session: a JSON request
    {"argv": [...], "env": {...}, "cwd": "/workspace", "tty": bool, "size": [cols, rows]}
with pipes hostd made, as SCM_RIGHTS: the session's stdin and stdout (and stderr without a tty),
then `ctl`, where the helper answers, and `sig`, where hostd sends signals and window sizes. For each
request the helper forks a keeper, which forks the session (setsid; with a tty, a pty from the
container's /dev/pts that the keeper copies to and from the pipes) and writes JSON lines to `ctl`:
{"pid": N} once started, then {"exit": code} or {"signal": n}. It reads {"signal": "INT"} and
{"size": [cols, rows]} lines from `sig`. Nothing ever goes back to hostd but bytes in pipes.
Standard library only; Python 3.6 or newer.

Everything here belongs to the renter, who may kill or replace it: hostd trusts none of it and
falls back to `docker exec`.
"""
import array
import fcntl
import json
import os
import select
import signal
import socket
import struct
import sys
import termios

MAX_REQUEST = 1 << 18
DRAIN = 0.1  # seconds a terminal may stay quiet after the shell exits before the session ends


def _line(fd, obj):
    try:
        os.write(fd, (json.dumps(obj) + "\n").encode())
    except OSError:
        pass


def _defaults():
    """Every signal at its default and none blocked, as docker exec starts a process."""
    signal.set_wakeup_fd(-1)
    for sig in set(range(1, signal.NSIG)) - {signal.SIGKILL, signal.SIGSTOP}:
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _spawn(req, stdio, slave):
    argv, env = [str(a) for a in req["argv"]], dict(os.environ)
    env.update({str(k): str(v) for k, v in req.get("env", {}).items()})
    pid = os.fork()
    if pid:
        return pid
    try:
        os.setsid()
        if slave is not None:
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        os.closerange(3, 65536)
        _defaults()
        try:
            os.chdir(req.get("cwd") or "/")
        except OSError:
            os.chdir("/")
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        os.write(2, ("shellrent: %s: %s\n" % (argv[0] if argv else "?", exc.strerror)).encode())
    os._exit(127)


def keep(req, fds):
    """One session, in a process of its own: start it, relay its terminal, report its end."""
    tty = bool(req.get("tty"))
    if len(fds) != (4 if tty else 5):
        raise ValueError("wrong number of fds")
    ctl, sig = fds[-2], fds[-1]
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    master = None
    if tty:
        master, slave = os.openpty()
        cols, rows = req.get("size") or (80, 24)
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", int(rows), int(cols), 0, 0))
        pid = _spawn(req, [slave] * 3, slave)
        os.close(slave)
        stdin, stdout = fds[0], fds[1]
    else:
        pid = _spawn(req, fds[:3], None)
        for fd in fds[:3]:
            os.close(fd)
        stdin = stdout = None
    _line(ctl, {"pid": pid})
    watch = [sig, wake_r] + ([stdin, master] if tty else [])
    buf, status = b"", None
    while status is None:
        try:
            ready = select.select(watch, [], [])[0]
        except InterruptedError:
            continue
        if wake_r in ready:
            os.read(wake_r, 4096)
            done, code = os.waitpid(pid, os.WNOHANG)
            if done:
                status = code
                break
        if sig in ready:
            data = os.read(sig, 4096)
            if not data:  # hostd has gone: a terminal hangs up, a command goes on by itself
                os._exit(0)
            buf = (buf + data)[-65536:]
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                _control(line, pid, master)
        if tty and stdin in ready:
            data = os.read(stdin, 65536)
            if data:
                os.write(master, data)
            else:
                watch.remove(stdin)
        if tty and master in ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                data = b""
            if data:
                os.write(stdout, data)
            else:
                watch.remove(master)
    if tty:  # what the shell wrote last, unless something left running holds the terminal open
        while select.select([master], [], [], DRAIN)[0]:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            os.write(stdout, data)
    end = {"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"exit": os.WEXITSTATUS(status)}
    _line(ctl, end)
    os._exit(0)


def _control(line, pid, master):
    try:
        msg = json.loads(line.decode())
        if "signal" in msg:
            os.killpg(pid, getattr(signal, "SIG" + str(msg["signal"])))
        elif "size" in msg and master is not None:
            cols, rows = msg["size"]
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", int(rows), int(cols), 0, 0))
    except (ValueError, KeyError, TypeError, AttributeError, OSError, struct.error):
        pass


def serve(name):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind("\0" + name)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # keepers are reaped by the kernel
    while True:
        msg, anc, _, _ = srv.recvmsg(MAX_REQUEST, socket.CMSG_SPACE(8 * 4))
        fds = []
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += array.array("i", payload[:len(payload) - len(payload) % 4]).tolist()
        if os.fork() == 0:
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                srv.close()
                keep(json.loads(msg.decode()), fds)
            except Exception as exc:
                if len(fds) >= 2:
                    _line(fds[-2], {"error": str(exc)[:200]})
            os._exit(1)
        for fd in fds:
            os.close(fd)


if __name__ == "__main__":
    with open(sys.argv[1] if len(sys.argv) > 1 else "/etc/shellrent/helper.key") as f:
        serve(f.read().strip())
