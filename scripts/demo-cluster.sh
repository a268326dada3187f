#!/usr/bin/env bash
# Several brokers on this machine: PostgreSQL (Debian's packages; initdb/pg_ctl in demo-cluster/pg as
# the postgres user, on a unix socket), three brokers of one database, HAProxy in front of their renter
# ports (mode tcp, PROXY protocol v2, health from each broker's /healthz), two hostds with pretend GPUs,
# your SSH key as renter "me" with 100 credits and one lease. Prints the ssh line.
# `scripts/demo-cluster.sh stop` stops all of it. Ports: DEMO_CLUSTER_PORT (default 2322) for renters,
# the brokers on the next ones (see demo-cluster/ports).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD/demo-cluster
bin=$PWD/.venv/bin
front=${DEMO_CLUSTER_PORT:-2322}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
pgbin() { command -v "$1" 2>/dev/null || ls -d /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -1; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

if [ "${1:-}" = stop ]; then
    for p in "$root"/hostd-*.pid "$root"/broker-*.pid "$root"/haproxy.pid; do
        [ -f "$p" ] || continue
        alive "$p" && kill "$(cat "$p")"
        rm -f "$p"
    done
    [ -f "$root/pg/data/postmaster.pid" ] && as_pg "$(pgbin pg_ctl)" -D "$root/pg/data" -m fast stop >/dev/null
    echo "stopped (the leases' containers run on until their end; rm -r $root to forget the cluster)"
    exit 0
fi

for port in "$front" $((front + 11)) $((front + 12)) $((front + 13)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && ! alive "$root/haproxy.pid"; then
        echo "demo-cluster: port $port is taken on 127.0.0.1; choose others with DEMO_CLUSTER_PORT=N" >&2
        exit 1
    fi
done

bash scripts/setup.sh
command -v haproxy >/dev/null || { echo "demo-cluster: haproxy is missing (apt-get install haproxy)" >&2; exit 1; }
[ -n "$(pgbin initdb)" ] || { echo "demo-cluster: PostgreSQL is missing (apt-get install postgresql)" >&2; exit 1; }
mkdir -p "$root/pg"
[ "$(id -u)" = 0 ] && chown postgres: "$root/pg"
if [ ! -d "$root/pg/data" ]; then
    as_pg "$(pgbin initdb)" -D "$root/pg/data" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
fi
if [ ! -f "$root/pg/data/postmaster.pid" ]; then
    as_pg "$(pgbin pg_ctl)" -D "$root/pg/data" -w -l "$root/pg/log" \
        -o "-k $root/pg -c listen_addresses=''" start >/dev/null
fi
db="postgresql://postgres@/postgres?host=$root/pg"

# Broker n: renters on front+10+n, hosts on front+20+n, peers on front+30+n, /healthz on front+40+n.
for n in 1 2 3; do
    home=$root/broker-$n
    if [ ! -f "$home/database" ]; then
        if [ "$n" = 1 ]; then "$bin/broker" --home "$home" init --db "$db" >/dev/null
        else "$bin/broker" --home "$home" init --db "$db" --keys-from "$root/broker-1" >/dev/null; fi
    fi
    if ! alive "$root/broker-$n.pid"; then
        BROKER_PROXY_FROM=127.0.0.1 nohup "$bin/broker" --home "$home" serve \
            --ssh 127.0.0.1:$((front + 10 + n)) --tunnel 127.0.0.1:$((front + 20 + n)) \
            --peer 127.0.0.1:$((front + 30 + n)) --metrics 127.0.0.1:$((front + 40 + n)) \
            >>"$root/broker-$n.log" 2>&1 & echo $! >"$root/broker-$n.pid"
    fi
done
for n in 1 2 3; do
    for _ in $(seq 100); do [ -f "$root/broker-$n/serve.json" ] && break; sleep 0.1; done
    [ -f "$root/broker-$n/serve.json" ] || { echo "demo-cluster: broker $n did not start; see $root/broker-$n.log" >&2; exit 1; }
done
printf 'renters %s (HAProxy)\nbrokers ssh %s-%s, tunnels %s-%s, peers %s-%s, health %s-%s\n' "$front" \
    $((front + 11)) $((front + 13)) $((front + 21)) $((front + 23)) $((front + 31)) $((front + 33)) \
    $((front + 41)) $((front + 43)) >"$root/ports"

cat >"$root/haproxy.cfg" <<EOF
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout check 2s
    retries 2
    option redispatch
frontend renters
    bind 127.0.0.1:$front
    default_backend brokers
backend brokers
    balance leastconn
    option httpchk GET /healthz
$(for n in 1 2 3; do echo "    server b$n 127.0.0.1:$((front + 10 + n)) send-proxy-v2 check port $((front + 40 + n)) inter 1s fall 2 rise 1"; done)
EOF
if ! alive "$root/haproxy.pid"; then
    haproxy -f "$root/haproxy.cfg" -D -p "$root/haproxy.pid"
fi

key=""
for k in ~/.ssh/id_ed25519 ~/.ssh/id_ecdsa ~/.ssh/id_rsa; do [ -f "$k.pub" ] && { key=$k; break; }; done
if [ -z "$key" ]; then
    key=$root/renter_key
    [ -f "$key" ] || ssh-keygen -q -t ed25519 -N '' -C shellrent-demo -f "$key"
fi
b1=("$bin/broker" --home "$root/broker-1")
"${b1[@]}" renter list --json | grep -q '"name": "me"' || "${b1[@]}" renter add me --key "$key.pub"
"${b1[@]}" ledger --renter me --json | grep -q deposit || "${b1[@]}" renter credit me 100

for h in 1 2; do
    hhome=$root/hostd-pc$h
    if [ ! -f "$hhome/broker.json" ]; then
        token=$("${b1[@]}" host invite "pc$h" 2>/dev/null | tail -1)
        "$bin/hostd" --home "$hhome" join "127.0.0.1:$((front + 20 + h))" "$token"
        command -v nvidia-smi >/dev/null || "$bin/hostd" --home "$hhome" config set fake_gpus 'RTX 4090:24'
    fi
    if ! alive "$root/hostd-pc$h.pid"; then
        nohup "$bin/hostd" --home "$hhome" run >>"$root/hostd-pc$h.log" 2>&1 & echo $! >"$root/hostd-pc$h.pid"
    fi
done
for h in 1 2; do
    for _ in $(seq 100); do
        "$bin/hostd" --home "$root/hostd-pc$h" status --json | grep -q '"connected": true' && break
        sleep 0.1
    done
done

ctl=(ssh -p "$front" -i "$key" -o IdentitiesOnly=yes -o BatchMode=yes -o UserKnownHostsFile="$root/known_hosts"
     -o StrictHostKeyChecking=accept-new ctl@127.0.0.1)
for _ in $(seq 50); do [ "$("${ctl[@]}" offers --json)" != "[]" ] && break; sleep 0.2; done
if ! "${ctl[@]}" ls --json | grep -q '"state": "active"'; then
    "${ctl[@]}" rent --hours 8 --yes
fi

ikey=""
case "$key" in "$root"/*) ikey="-i $key ";; esac
echo "shellrent cluster is running: 3 brokers behind HAProxy, 2 hosts (logs and ports in $root)."
echo "Your rental's shell, through whichever broker HAProxy picks:"
echo "    ssh ${ikey}-p $front rent@localhost"
