"""Interactive shells (pty, resize, Ctrl-C), tmux across disconnects, and ssh -L, through the broker."""
import json
import os
import re
import socket
import subprocess
import urllib.request

import pytest

from .cluster import wait_for
from .tty import Terminal

pytestmark = pytest.mark.docker


@pytest.fixture
def term(cluster):
    terms = []

    def open_(*opts, command=(), width=100, height=30):
        t = Terminal(cluster.ssh_cmd("rent", *opts) + list(command), width, height)
        terms.append(t)
        return t
    yield open_
    for t in terms:
        t.close()


def test_shell_has_a_pty_that_follows_resizes(term):
    t = term("-tt", width=100, height=30)
    t.wait("/workspace#")
    t.type("stty size; tty")
    t.wait("30 100")
    assert "/dev/pts/" in t.screen()
    t.resize(120, 40)
    t.type("clear; stty size")
    t.wait("40 120")


def test_ctrl_c_interrupts_the_program_not_the_session(term):
    t = term("-tt")
    t.wait("/workspace#")
    t.type("sleep 300")
    t.wait("sleep 300")
    t.key("C-c")
    t.type("echo still-here-$?")
    t.wait("still-here-130")
    t.type("exit 7")
    t.wait("EXITED=7")


def test_tmux_session_survives_disconnect_and_reattaches(cluster, term):
    r = cluster.ssh("tmux new -d -s keep 'while true; do date +tick-%s; sleep 1; done'")
    assert r.returncode == 0
    assert cluster.ssh("tmux has-session -t keep").returncode == 0  # survived that connection closing
    t = term("-t", command=["tmux", "attach", "-t", "keep"])
    t.wait("tick-")
    t.key("C-b")
    t.key("d")
    t.wait("detached")
    assert cluster.ssh("tmux kill-session -t keep").returncode == 0


def test_local_port_forward_reaches_a_localhost_server_in_the_container(cluster, tmp_path):
    cluster.ssh("mkdir -p /tmp/www && echo jupyter-ish > /tmp/www/index.html && "
                "(cd /tmp/www && nohup python3 -m http.server 8888 --bind 127.0.0.1 >/dev/null 2>&1 &)", check=True)
    wait_for(lambda: cluster.ssh("python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 8888))'").returncode == 0,
             what="http.server in the container")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fwd = subprocess.Popen(cluster.ssh_cmd("rent", "-N", "-L", f"{port}:localhost:8888"))
    try:
        body = wait_for(lambda: _get(f"http://127.0.0.1:{port}/index.html"), what="forwarded port")
        assert body == b"jupyter-ish\n"
    finally:
        fwd.terminate()
        fwd.wait()


def test_dynamic_forward_reaches_localhost_ports_in_the_container(cluster):
    """ssh -D (what VS Code Remote-SSH uses): a SOCKS5 CONNECT to localhost:8888 in the container."""
    cluster.ssh("mkdir -p /tmp/www && echo socks-ok > /tmp/www/s.html && "
                "(cd /tmp/www && nohup python3 -m http.server 8899 --bind 127.0.0.1 >/dev/null 2>&1 &)", check=True)
    wait_for(lambda: cluster.ssh("python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 8899))'")
             .returncode == 0, what="http.server in the container")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fwd = subprocess.Popen(cluster.ssh_cmd("rent", "-N", "-D", f"127.0.0.1:{port}"))
    try:
        body = wait_for(lambda: _socks_get(port, "localhost", 8899, "/s.html"), what="SOCKS forward")
        assert body.endswith(b"socks-ok\n")
    finally:
        fwd.terminate()
        fwd.wait()


def _socks_get(port, host, dport, path):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"\x05\x01\x00")
            if s.recv(2) != b"\x05\x00":
                return None
            name = host.encode()
            s.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + dport.to_bytes(2, "big"))
            reply = s.recv(10)
            if len(reply) < 2 or reply[1] != 0:
                return None
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            return data
    except OSError:
        return None


def test_forward_to_anything_but_localhost_is_refused(cluster):
    r = cluster.ssh(opts=["-v", "-W", "10.0.0.1:80"])
    assert r.returncode == 255
    assert b"open failed: administratively prohibited: only ports on localhost" in r.stderr


def _get(url):
    try:
        return urllib.request.urlopen(url, timeout=5).read()
    except OSError:
        return None


def test_an_interactive_shell_opens_with_the_banner_and_nothing_else_does(cluster, term):
    t = term("-tt")
    t.wait("/workspace#")
    screen = t.screen()
    assert f"shellrent lease {cluster.lease}: " in screen and " on pc1" in screen
    assert "time left " in screen and " UTC; more: ssh -p " in screen and " extend 1h" in screen
    assert "tmux new -A -s main" in screen
    r = cluster.ssh("echo", "hi")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"hi\n", b"")  # exec: no banner
    assert b"shellrent lease" not in cluster.ssh("echo", "x", opts=["-tt"]).stdout  # exec with a pty
    for env, bold in (({}, True), ({"NO_COLOR": "1"}, False)):
        r = subprocess.run(cluster.ssh_cmd("rent", "-tt", "-o", "SendEnv=NO_COLOR"), input=b"exit\n",
                           capture_output=True, timeout=60, env={**os.environ, **env})
        assert b"shellrent lease" in r.stdout and (b"\x1b[1mshellrent lease" in r.stdout) == bold


def test_config_tmux_on_makes_every_shell_the_leases_tmux_session(cluster, term):
    ctl = cluster.ssh("config", "tmux", "on", user="ctl")
    assert ctl.returncode == 0 and ctl.stdout.startswith(b"tmux on: ")
    try:
        lid = cluster.ssh("echo $SHELLRENT_LEASE_ID").stdout.decode().strip()
        t = term("-tt")
        t.wait("/workspace#")
        t.wait(f"lease {lid}: ")  # tmux covers the banner: its status line says which lease, and the time left
        assert re.search(rf"lease {lid}: \d+h\d+m(\d+s)? left", t.screen()), t.screen()
        t.type("echo in-$(tmux display-message -p '#S')-session; sleep 600")
        t.wait("in-main-session")
        t.close()  # the connection drops; the job lives on in tmux
        wait_for(lambda: b"sleep 600" in cluster.ssh("ps -eo args").stdout, what="the job to stay")
        assert cluster.ssh("tmux has-session -t main").returncode == 0
        t = term("-tt")
        t.wait("sleep 600")  # attached again: the same window
        plain = term("-tt", command=["bash"])
        plain.wait("/workspace#")
        plain.type("echo tmux=[$TMUX]")
        plain.wait("tmux=[]")
        assert cluster.ssh("echo", "$TMUX").stdout == b"\n"  # exec is never wrapped
    finally:
        assert cluster.ssh("config", "tmux", "off", user="ctl").returncode == 0
        cluster.ssh("tmux kill-server")
    assert json.loads(cluster.ssh("config", "--json", user="ctl").stdout) == {"tmux": False}
