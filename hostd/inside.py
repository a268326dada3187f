"""The session helper: runs inside a lease's container and starts renter sessions for hostd.

hostd starts it once per lease with `docker exec`, so it and every session it forks have exactly the
confinement an exec has: the container's namespaces, cgroup, capabilities, no-new-privileges, seccomp
and AppArmor profile, and user. It listens on an abstract unix socket in the container's network
namespace, named by a secret hostd wrote to /etc/shellrent/helper.key (read-only, this lease only).

One connection per session. hostd sends one JSON line
    {"argv": [...], "env": {...}, "cwd": "/workspace", "tty": bool, "size": [cols, rows]}
and, without a tty, the child's stdin, stdout and stderr (pipes hostd made) as SCM_RIGHTS. The helper
forks the session (setsid; with a tty, a pty from the container's /dev/pts whose master goes back to
hostd), answers {"pid": N}, takes {"signal": "INT"} lines for the session's process group, and sends
{"exit": code} or {"signal": n} when it ends. Standard library only; Python 3.6 or newer.

Everything here belongs to the renter, who may kill or replace it: hostd trusts none of its answers
and falls back to `docker exec`.
"""
import array
import fcntl
import json
import os
import selectors
import signal
import socket
import struct
import sys
import termios

MAX_LINE = 1 << 20


def recv_request(conn):
    """The request line and the fds that came with it."""
    data, fds = b"", []
    while not data.endswith(b"\n"):
        msg, anc, _, _ = conn.recvmsg(65536, socket.CMSG_SPACE(16 * 4))
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += array.array("i", payload[:len(payload) - len(payload) % 4]).tolist()
        if not msg or len(data) > MAX_LINE:
            raise ValueError("no request")
        data += msg
    return json.loads(data.decode()), fds


def send(conn, obj, fds=()):
    line = (json.dumps(obj) + "\n").encode()
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    conn.sendmsg([line], anc)


def spawn(req, fds):
    """Fork the session; returns (pid, master fd or None)."""
    argv, env, tty = [str(a) for a in req["argv"]], dict(os.environ), bool(req.get("tty"))
    env.update({str(k): str(v) for k, v in req.get("env", {}).items()})
    master = slave = None
    if tty:
        master, slave = os.openpty()
        cols, rows = req.get("size") or (80, 24)
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", int(rows), int(cols), 0, 0))
        stdio = [slave] * 3
    elif len(fds) == 3:
        stdio = fds
    else:
        raise ValueError("a session without a tty needs three fds")
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            if tty:
                fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
            for target, fd in enumerate(stdio):
                os.dup2(fd, target)
            os.closerange(3, 65536)
            signal.set_wakeup_fd(-1)
            for sig in set(range(1, signal.NSIG)) - {signal.SIGKILL, signal.SIGSTOP}:
                try:  # what docker exec gives: every signal at its default (Python ignores PIPE and XFSZ)
                    signal.signal(sig, signal.SIG_DFL)
                except (OSError, ValueError):
                    pass
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            try:
                os.chdir(req.get("cwd") or "/")
            except OSError:
                os.chdir("/")
            os.execvpe(argv[0], argv, env)
        except OSError as exc:
            os.write(2, ("shellrent: %s: %s\n" % (argv[0] if argv else "?", exc.strerror)).encode())
        os._exit(127)
    if slave is not None:
        os.close(slave)
    for fd in fds:
        os.close(fd)
    return pid, master


def serve(name):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind("\0" + name)
    srv.listen(128)
    rd, wr = os.pipe()
    os.set_blocking(wr, False)
    signal.set_wakeup_fd(wr)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ, "accept")
    sel.register(rd, selectors.EVENT_READ, "child")
    sessions = {}  # pid -> connection (None once hostd has gone)
    while True:
        for key, _ in sel.select():
            if key.data == "accept":
                conn, _ = srv.accept()
                fds = []
                try:
                    conn.settimeout(5)
                    req, fds = recv_request(conn)
                    pid, master = spawn(req, fds)
                    send(conn, {"pid": pid}, [master] if master is not None else [])
                    if master is not None:
                        os.close(master)
                    conn.setblocking(False)
                    sessions[pid] = conn
                    sel.register(conn, selectors.EVENT_READ, pid)
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    for fd in fds:
                        try:
                            os.close(fd)
                        except OSError:
                            pass
                    try:
                        send(conn, {"error": str(exc)[:200]})
                    except OSError:
                        pass
                    conn.close()
            elif key.data == "child":
                os.read(rd, 4096)
                reap(sessions, sel)
            else:
                control(key.fileobj, key.data, sessions, sel)


def control(conn, pid, sessions, sel):
    """A signal for a session, or hostd's end of it."""
    try:
        data = conn.recv(4096)
    except (BlockingIOError, InterruptedError):
        return
    except OSError:
        data = b""
    if not data:
        sel.unregister(conn)
        conn.close()
        sessions[pid] = None
        return
    for line in data.splitlines():
        try:
            sig = getattr(signal, "SIG" + json.loads(line.decode())["signal"])
            os.killpg(pid, sig)
        except (ValueError, KeyError, TypeError, AttributeError, OSError):
            pass


def reap(sessions, sel):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = sessions.pop(pid, None)
        if conn is None:
            continue
        end = {"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"exit": os.WEXITSTATUS(status)}
        try:
            conn.setblocking(True)
            conn.settimeout(2)
            send(conn, end)
        except OSError:
            pass
        sel.unregister(conn)
        conn.close()


if __name__ == "__main__":
    with open(sys.argv[1] if len(sys.argv) > 1 else "/etc/shellrent/helper.key") as f:
        serve(f.read().strip())
