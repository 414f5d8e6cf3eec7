#!/usr/bin/env bash
# Private service instances for godwit's tests, the quickstart and CI:
# a PostgreSQL cluster (logical WAL, TLS, password auth), a Redis, a 3-node Redis
# Cluster, a TLS-only Redis and a moto (S3/SNS mock), each on free loopback ports
# chosen here. It never uses the services the machine may already run on their
# standard ports.
#
#   scripts/services.sh start   install what is missing, start (or reuse), print env
#   scripts/services.sh stop    stop them all; data stays
#   scripts/services.sh status  exit 0 when all are running
#   scripts/services.sh env     print the env file of the last start (the services'
#                               settings and GODWIT_SHOP_URL, the quickstart's demo database)
#   scripts/services.sh reset   stop and delete the state folder
#
# `start` prints only `export` lines on stdout, so `eval "$(scripts/services.sh start)"`
# works; everything else goes to stderr.
#
# GODWIT_SERVICES_DIR  state folder (default: <repo>/.services)
# GODWIT_TOOLS         where the moto venv lives (default: ~/.cache/godwit)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
DIR="${GODWIT_SERVICES_DIR:-$REPO/.services}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd -P)"
TOOLS="${GODWIT_TOOLS:-${HOME:-/root}/.cache/godwit}"
VENV="$TOOLS/moto-venv"

PG="$DIR/pg"
PGDATA_DIR="$PG/data"
TLS="$DIR/tls"
RDS="$DIR/redis"
RCL="$DIR/redis-cluster"
RTLS="$DIR/redis-tls"
MOTO="$DIR/moto"
ENV_FILE="$DIR/env"

# The caller's libpq settings must not leak into our own psql calls.
unset PGSSLMODE PGSSLROOTCERT PGSERVICE PGSERVICEFILE PGOPTIONS PGREQUIRESSL PGDATABASE PGHOSTADDR

log() { printf 'services: %s\n' "$*" >&2; }
die() { printf 'services: error: %s\n' "$*" >&2; exit 1; }

IS_ROOT=0
[ "$(id -u)" = 0 ] && IS_ROOT=1

# ---------------------------------------------------------------- installing

APT_UPDATED=0
apt_install() {
    [ "$IS_ROOT" = 1 ] || die "need root to apt-get install $*"
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
}

newest_pg_bin() {
    local f
    f="$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)"
    [ -n "$f" ] && dirname "$f"
}

ensure_tools() {
    if [ -z "$(newest_pg_bin)" ]; then
        apt_install postgresql
    fi
    [ -n "$(newest_pg_bin)" ] || die "no PostgreSQL server binaries after installing"
    if [ "$IS_ROOT" = 1 ] && ! id postgres >/dev/null 2>&1; then
        log "creating the postgres OS user"
        useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    fi
    command -v redis-server >/dev/null || apt_install redis-server
    command -v redis-cli >/dev/null || apt_install redis-tools
    command -v openssl >/dev/null || apt_install openssl
    command -v python3 >/dev/null || apt_install python3
    ensure_moto
    ensure_duckdb
    ensure_cargo_lambda
}

ensure_moto() {
    if [ -x "$VENV/bin/moto_server" ] && "$VENV/bin/python" -c 'import moto, flask' 2>/dev/null; then
        return 0
    fi
    log "creating the moto venv in $VENV"
    rm -rf "$VENV"
    mkdir -p "$TOOLS"
    if ! python3 -m venv "$VENV" >&2 2>/dev/null; then
        rm -rf "$VENV"
        apt_install python3-venv
        python3 -m venv "$VENV" >&2 || die "python3 -m venv failed"
    fi
    log "pip install 'moto[server]' (takes a minute the first time)"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check 'moto[server]' >&2 \
        || { rm -rf "$VENV"; die "pip install 'moto[server]' failed"; }
}

# DuckDB (PyPI) in the same venv, for the tests that run `godwit inspect --sql duckdb`.
ensure_duckdb() {
    "$VENV/bin/python" -c 'import duckdb' 2>/dev/null && return 0
    log "pip install duckdb (into $VENV)"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check duckdb >&2 \
        || die "pip install duckdb failed"
}

# cargo-lambda (PyPI; pulls ziglang) in the same venv: its Lambda runtime emulator
# (`cargo lambda watch`) and `cargo lambda invoke`, for tests/lambda.rs and the README.
ensure_cargo_lambda() {
    [ -x "$VENV/bin/cargo-lambda" ] && return 0
    log "pip install cargo-lambda (into $VENV)"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check cargo-lambda >&2 \
        || die "pip install cargo-lambda failed"
}

# ---------------------------------------------------------------- helpers

# Run as the postgres OS user (initdb and the server refuse root).
AS_PG=()
[ "$IS_ROOT" = 1 ] && AS_PG=(runuser -u postgres --)
as_pg() { (cd / && "${AS_PG[@]}" "$@"); }

# Run a command from / with every descriptor above 2 closed, so that a daemon
# holds none of the caller's pipes open (a `$(...)` or a CI log would wait on it).
close_fds() {
    local f fd
    for f in "/proc/$BASHPID/fd/"*; do
        fd="${f##*/}"
        if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
}
detached() { (cd / && close_fds && exec "$@"); }

# Print N distinct free TCP ports on 127.0.0.1.
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
}

port_is_free() {
    python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
PY
}

# Reuse the port recorded in file $1 when it is free, else take $2.
choose_port() {
    local file="$1" fresh="$2" old
    old="$(cat "$file" 2>/dev/null || true)"
    if [ -n "$old" ] && port_is_free "$old"; then
        echo "$old"
    else
        echo "$fresh"
    fi
}

# A process that exists and is not a zombie (here PID 1 may reap exited daemons late).
proc_alive() {
    local state
    state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)"
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# pid_alive PIDFILE WORD: the pid in the file runs a process whose command line has WORD.
pid_alive() {
    local pid
    pid="$(head -n 1 "$1" 2>/dev/null | tr -dc '0-9')"
    [ -n "$pid" ] || return 1
    proc_alive "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"
}

pg_running() { pid_alive "$PGDATA_DIR/postmaster.pid" postgres; }
redis_running() { pid_alive "$RDS/redis.pid" redis-server; }
redis_cluster_running() {
    local i
    [ -s "$RCL/ports" ] || return 1
    for i in 1 2 3; do
        pid_alive "$RCL/node$i/redis.pid" redis-server || return 1
    done
}
redis_tls_running() { pid_alive "$RTLS/redis.pid" redis-server; }
moto_running() { pid_alive "$MOTO/moto.pid" moto_server; }

# Let the postgres user reach $DIR: every parent folder must be searchable.
open_parents() {
    [ "$IS_ROOT" = 1 ] || return 0
    local d="$DIR"
    local -a chain=()
    while [ "$d" != "/" ] && [ -n "$d" ]; do
        chain=("$d" "${chain[@]}")
        d="$(dirname "$d")"
    done
    for d in "${chain[@]}"; do
        if ! runuser -u postgres -- test -x "$d" 2>/dev/null; then
            log "chmod o+x $d (so the postgres user can reach $DIR)"
            chmod o+x "$d"
        fi
    done
}

# Unix socket paths are limited to ~107 bytes; fall back to /tmp for deep clones.
socket_dir() {
    local s="$PG/sock"
    if [ "$(printf '%s' "$s/.s.PGSQL.65535" | wc -c)" -gt 100 ]; then
        s="/tmp/godwit-pg-$(printf '%s' "$DIR" | md5sum | cut -c1-12)"
    fi
    echo "$s"
}

q() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }

# ---------------------------------------------------------------- TLS

ensure_tls() {
    mkdir -p "$TLS"
    chmod 755 "$TLS"
    if [ ! -s "$TLS/ca.crt" ] || [ ! -s "$TLS/ca.key" ]; then
        log "making a private CA in $TLS"
        rm -f "$TLS/server.crt" "$TLS/server.key"
        openssl req -x509 -new -nodes -newkey rsa:2048 -sha256 -days 3650 \
            -keyout "$TLS/ca.key" -out "$TLS/ca.crt" -subj "/CN=godwit test CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -addext "subjectKeyIdentifier=hash" 2>/dev/null
        chmod 600 "$TLS/ca.key"
        chmod 644 "$TLS/ca.crt"
    fi
    if [ ! -s "$TLS/server.crt" ] || [ ! -s "$TLS/server.key" ]; then
        log "making a server certificate for localhost / 127.0.0.1"
        local ext="$TLS/server.ext"
        cat >"$ext" <<'EOF'
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1,IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
EOF
        openssl req -new -nodes -newkey rsa:2048 -sha256 \
            -keyout "$TLS/server.key" -out "$TLS/server.csr" -subj "/CN=localhost" 2>/dev/null
        openssl x509 -req -in "$TLS/server.csr" -CA "$TLS/ca.crt" -CAkey "$TLS/ca.key" \
            -CAcreateserial -out "$TLS/server.crt" -days 3650 -sha256 -extfile "$ext" 2>/dev/null
        rm -f "$TLS/server.csr" "$ext"
        chmod 644 "$TLS/server.crt"
    fi
    chmod 600 "$TLS/server.key"
    [ "$IS_ROOT" = 1 ] && chown postgres: "$TLS/server.key" "$TLS/server.crt"
    return 0
}

# ---------------------------------------------------------------- PostgreSQL

start_pg() {
    local port="$1" bin ver sock
    mkdir -p "$PG"
    [ "$IS_ROOT" = 1 ] && chown postgres: "$PG"
    chmod 755 "$PG"

    # A cluster made by an older major version that is no longer installed is set aside.
    if [ -f "$PGDATA_DIR/PG_VERSION" ]; then
        ver="$(cat "$PGDATA_DIR/PG_VERSION")"
        if [ -x "/usr/lib/postgresql/$ver/bin/postgres" ]; then
            bin="/usr/lib/postgresql/$ver/bin"
        else
            log "PostgreSQL $ver is gone; moving the old cluster to $PG/data.v$ver"
            rm -rf "$PG/data.v$ver"
            mv "$PGDATA_DIR" "$PG/data.v$ver"
        fi
    elif [ -d "$PGDATA_DIR" ]; then
        log "removing an unfinished cluster in $PGDATA_DIR"
        rm -rf "$PGDATA_DIR"
    fi
    bin="${bin:-$(newest_pg_bin)}"

    if [ ! -s "$PG/password" ]; then
        openssl rand -hex 24 >"$PG/password"
    fi
    chmod 600 "$PG/password"
    [ "$IS_ROOT" = 1 ] && chown root: "$PG/password"

    if [ ! -f "$PGDATA_DIR/PG_VERSION" ]; then
        log "initdb ($("$bin/postgres" --version)) in $PGDATA_DIR"
        if ! as_pg "$bin/initdb" -D "$PGDATA_DIR" -U postgres -E UTF8 --locale=C.UTF-8 \
                --auth-local=trust --auth-host=scram-sha-256 >"$PG/initdb.log" 2>&1; then
            rm -rf "$PGDATA_DIR"
            as_pg "$bin/initdb" -D "$PGDATA_DIR" -U postgres -E UTF8 --no-locale \
                --auth-local=trust --auth-host=scram-sha-256 >"$PG/initdb.log" 2>&1 \
                || { cat "$PG/initdb.log" >&2; die "initdb failed"; }
        fi
        echo "include_if_exists = 'godwit.conf'" >>"$PGDATA_DIR/postgresql.conf"
    fi

    sock="$(socket_dir)"
    mkdir -p "$sock"
    [ "$IS_ROOT" = 1 ] && chown postgres: "$sock"
    chmod 755 "$sock"

    # Rewritten on every start: paths follow the folder, the port may change.
    cat >"$PGDATA_DIR/godwit.conf" <<EOF
# written by scripts/services.sh on every start (every test database keeps its slot: room for all)
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$sock'
wal_level = logical
max_replication_slots = 64
max_wal_senders = 64
# A stopped or cut-off CDC client's session leaves its slot after this (default 60s); the
# lease takeover tests wait for it. godwit sends a status update every second.
wal_sender_timeout = 10s
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 256MB
max_connections = 200
password_encryption = 'scram-sha-256'
ssl = on
ssl_cert_file = '$TLS/server.crt'
ssl_key_file = '$TLS/server.key'
timezone = 'UTC'
log_timezone = 'UTC'
EOF
    cat >"$PGDATA_DIR/pg_hba.conf" <<'EOF'
# written by scripts/services.sh
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  trust
local   replication  all                  trust
host    all          all   127.0.0.1/32   scram-sha-256
host    replication  all   127.0.0.1/32   scram-sha-256
host    all          all   ::1/128        scram-sha-256
host    replication  all   ::1/128        scram-sha-256
EOF
    [ "$IS_ROOT" = 1 ] && chown postgres: "$PGDATA_DIR/godwit.conf" "$PGDATA_DIR/pg_hba.conf"

    log "starting PostgreSQL on 127.0.0.1:$port"
    if ! detached "${AS_PG[@]}" "$bin/pg_ctl" -D "$PGDATA_DIR" -l "$PG/server.log" -w -t 60 start \
            </dev/null >/dev/null 2>&1; then
        tail -n 20 "$PG/server.log" >&2 || true
        die "PostgreSQL did not start (log: $PG/server.log)"
    fi
    echo "$bin" >"$PG/bin"
}

# Set the password (every start, so the file and the role never disagree).
pg_set_password() {
    local port="$1" bin sock
    bin="$(cat "$PG/bin" 2>/dev/null || newest_pg_bin)"
    sock="$(socket_dir)"
    "$bin/psql" -X -q -v ON_ERROR_STOP=1 -h "$sock" -p "$port" -U postgres -d postgres \
        -c "ALTER ROLE postgres PASSWORD '$(cat "$PG/password")'" </dev/null >&2 \
        || die "could not set the postgres password"
}

stop_pg() {
    [ -f "$PGDATA_DIR/postmaster.pid" ] || return 0
    local bin
    bin="$(cat "$PG/bin" 2>/dev/null || true)"
    if [ -z "$bin" ] && [ -f "$PGDATA_DIR/PG_VERSION" ]; then
        bin="/usr/lib/postgresql/$(cat "$PGDATA_DIR/PG_VERSION")/bin"
    fi
    if pg_running; then
        as_pg "$bin/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 60 stop </dev/null >/dev/null 2>&1 || {
            local pid
            pid="$(head -n 1 "$PGDATA_DIR/postmaster.pid")"
            kill -TERM "$pid" 2>/dev/null || true
        }
    fi
}

# ---------------------------------------------------------------- Redis

redis_ping() {
    # Plain RESP over bash's /dev/tcp: no redis-cli needed.
    local port="$1" line fd
    { exec {fd}<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null || return 1
    printf 'PING\r\n' >&"$fd"
    read -r -t 2 line <&"$fd" || true
    exec {fd}>&-
    [ "${line%$'\r'}" = "+PONG" ]
}

start_redis() {
    local port="$1"
    mkdir -p "$RDS"
    rm -f "$RDS/redis.pid"
    log "starting Redis on 127.0.0.1:$port"
    detached redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize yes --pidfile "$RDS/redis.pid" --logfile "$RDS/redis.log" --dir "$RDS" \
        </dev/null >/dev/null 2>&1 || die "redis-server failed (log: $RDS/redis.log)"
    for _ in $(seq 1 100); do
        redis_ping "$port" && return 0
        sleep 0.1
    done
    tail -n 20 "$RDS/redis.log" >&2 || true
    die "Redis did not answer on port $port"
}

# A 3-node Redis Cluster (no replicas), rebuilt from scratch on every start: its data is
# test data, and a fresh cluster cannot disagree with an old nodes.conf about ports.
# $1..$3 client ports, $4..$6 cluster bus ports (set explicitly: port+10000 may not exist).
start_redis_cluster() {
    local i port bus addrs=() d
    stop_redis_cluster
    rm -rf "$RCL"
    mkdir -p "$RCL"
    for i in 1 2 3; do
        port="${*:$i:1}"
        bus="${*:$((i + 3)):1}"
        d="$RCL/node$i"
        mkdir -p "$d"
        detached redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
            --cluster-port "$bus" --cluster-config-file "$d/nodes.conf" \
            --cluster-node-timeout 5000 --save '' --appendonly no \
            --daemonize yes --pidfile "$d/redis.pid" --logfile "$d/redis.log" --dir "$d" \
            </dev/null >/dev/null 2>&1 || die "redis-server (cluster node $i) failed (log: $d/redis.log)"
        addrs+=("127.0.0.1:$port")
    done
    log "starting a Redis Cluster on ${addrs[*]}"
    for i in 1 2 3; do
        port="${*:$i:1}"
        for _ in $(seq 1 100); do
            redis_ping "$port" && break
            sleep 0.05
        done
        redis_ping "$port" || die "Redis Cluster node on port $port did not answer (log: $RCL/node$i/redis.log)"
    done
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes \
        </dev/null >"$RCL/create.log" 2>&1 \
        || { tail -n 20 "$RCL/create.log" >&2; die "redis-cli --cluster create failed"; }
    for _ in $(seq 1 100); do
        local ok=1
        for i in 1 2 3; do
            redis-cli -p "${*:$i:1}" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || ok=0
        done
        if [ "$ok" = 1 ]; then
            echo "${*:1:3}" >"$RCL/ports"
            return 0
        fi
        sleep 0.1
    done
    die "the Redis Cluster did not reach cluster_state:ok (logs: $RCL/node*/redis.log)"
}

stop_redis_cluster() {
    local i
    for i in 1 2 3; do
        kill_pidfile "$RCL/node$i/redis.pid" redis-server
    done
}

# A certificate for the TLS Redis, signed by the CA in $TLS (made by ensure_tls).
ensure_redis_cert() {
    ensure_tls
    if [ ! -s "$TLS/redis.crt" ] || [ ! -s "$TLS/redis.key" ] || [ "$TLS/ca.crt" -nt "$TLS/redis.crt" ]; then
        log "making a Redis server certificate for localhost / 127.0.0.1"
        local ext="$TLS/redis.ext"
        cat >"$ext" <<'EOF2'
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1,IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
EOF2
        openssl req -new -nodes -newkey rsa:2048 -sha256 \
            -keyout "$TLS/redis.key" -out "$TLS/redis.csr" -subj "/CN=localhost" 2>/dev/null
        openssl x509 -req -in "$TLS/redis.csr" -CA "$TLS/ca.crt" -CAkey "$TLS/ca.key" \
            -CAcreateserial -out "$TLS/redis.crt" -days 3650 -sha256 -extfile "$ext" 2>/dev/null
        rm -f "$TLS/redis.csr" "$ext"
        chmod 644 "$TLS/redis.crt"
        chmod 600 "$TLS/redis.key"
    fi
}

start_redis_tls() {
    local port="$1"
    ensure_redis_cert
    mkdir -p "$RTLS"
    rm -f "$RTLS/redis.pid"
    log "starting a TLS-only Redis on 127.0.0.1:$port"
    detached redis-server --port 0 --tls-port "$port" --bind 127.0.0.1 \
        --tls-cert-file "$TLS/redis.crt" --tls-key-file "$TLS/redis.key" \
        --tls-ca-cert-file "$TLS/ca.crt" --tls-auth-clients no --save '' --appendonly no \
        --daemonize yes --pidfile "$RTLS/redis.pid" --logfile "$RTLS/redis.log" --dir "$RTLS" \
        </dev/null >/dev/null 2>&1 || die "redis-server (TLS) failed (log: $RTLS/redis.log)"
    for _ in $(seq 1 100); do
        if [ "$(redis-cli --tls --cacert "$TLS/ca.crt" -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ]; then
            return 0
        fi
        sleep 0.05
    done
    tail -n 20 "$RTLS/redis.log" >&2 || true
    die "the TLS Redis did not answer on port $port"
}

# ---------------------------------------------------------------- moto

moto_answers() {
    local url="http://127.0.0.1:$1/moto-api/"
    if command -v curl >/dev/null; then
        curl -s -f -o /dev/null --max-time 2 "$url"
    else
        python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$url" 2>/dev/null
    fi
}

start_moto() {
    local port="$1"
    mkdir -p "$MOTO"
    log "starting moto on 127.0.0.1:$port"
    (cd / && close_fds && exec nohup "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port") \
        </dev/null >"$MOTO/moto.log" 2>&1 &
    echo $! >"$MOTO/moto.pid"
    for _ in $(seq 1 150); do
        moto_answers "$port" && return 0
        moto_running || break
        sleep 0.2
    done
    tail -n 20 "$MOTO/moto.log" >&2 || true
    die "moto did not answer on port $port"
}

# kill_pidfile FILE WORD: TERM, wait up to 10 s, then KILL.
kill_pidfile() {
    local file="$1" word="$2" pid
    if pid_alive "$file" "$word"; then
        pid="$(head -n 1 "$file" | tr -dc '0-9')"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            proc_alive "$pid" || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

# ---------------------------------------------------------------- commands

write_env() {
    local pg_port redis_port moto_port pw cl_ports tls_port nodes
    pg_port="$(cat "$PG/port")"
    redis_port="$(cat "$RDS/port")"
    read -r -a cl_ports <"$RCL/ports"
    nodes="127.0.0.1:${cl_ports[0]},127.0.0.1:${cl_ports[1]},127.0.0.1:${cl_ports[2]}"
    tls_port="$(cat "$RTLS/port")"
    moto_port="$(cat "$MOTO/port")"
    pw="$(cat "$PG/password")"
    {
        echo "export GODWIT_PG_HOST=$(q 127.0.0.1)"
        echo "export GODWIT_PG_PORT=$(q "$pg_port")"
        echo "export GODWIT_PG_USER=$(q postgres)"
        echo "export GODWIT_PG_PASSWORD=$(q "$pw")"
        echo "export GODWIT_PG_URL=$(q "postgres://postgres:$pw@127.0.0.1:$pg_port/postgres?sslmode=disable")"
        # The demo database scripts/quickstart seeds; pipelines/quickstart.toml reads it.
        echo "export GODWIT_SHOP_URL=$(q "postgres://postgres:$pw@127.0.0.1:$pg_port/shop?sslmode=disable")"
        echo "export GODWIT_PG_CA=$(q "$TLS/ca.crt")"
        echo "export PGHOST=$(q 127.0.0.1)"
        echo "export PGPORT=$(q "$pg_port")"
        echo "export PGUSER=$(q postgres)"
        echo "export PGPASSWORD=$(q "$pw")"
        echo "export PGDATABASE=$(q postgres)"
        echo "export GODWIT_REDIS_URL=$(q "redis://127.0.0.1:$redis_port")"
        echo "export GODWIT_REDIS_CLUSTER_URL=$(q "redis://127.0.0.1:${cl_ports[0]}")"
        echo "export GODWIT_REDIS_CLUSTER_NODES=$(q "$nodes")"
        echo "export GODWIT_REDIS_TLS_URL=$(q "rediss://127.0.0.1:$tls_port")"
        echo "export GODWIT_REDIS_CA=$(q "$TLS/ca.crt")"
        echo "export GODWIT_S3_ENDPOINT=$(q "http://127.0.0.1:$moto_port")"
        echo "export AWS_ACCESS_KEY_ID=$(q test)"
        echo "export AWS_SECRET_ACCESS_KEY=$(q test)"
        echo "export AWS_REGION=$(q us-east-1)"
        echo "export AWS_EC2_METADATA_DISABLED=$(q true)"
        # A Python with the duckdb module (tests/lake_sql.rs).
        echo "export GODWIT_PYTHON=$(q "$VENV/bin/python")"
        # cargo-lambda's runtime emulator and invoke (tests/lambda.rs).
        echo "export GODWIT_CARGO_LAMBDA=$(q "$VENV/bin/cargo-lambda")"
    } >"$ENV_FILE.tmp"
    chmod 600 "$ENV_FILE.tmp"
    mv "$ENV_FILE.tmp" "$ENV_FILE"
}

cmd_start() {
    # Keep the real stdout on fd 3 for the export lines; the rest goes to stderr.
    exec 3>&1 1>&2
    local t0=$SECONDS need=()
    pg_running || need+=(pg)
    redis_running || need+=(redis)
    redis_cluster_running || need+=(redis-cluster)
    redis_tls_running || need+=(redis-tls)
    moto_running || need+=(moto)

    if [ "${#need[@]}" = 0 ] && [ -s "$ENV_FILE" ]; then
        log "reusing the running services in $DIR"
        ensure_duckdb
        ensure_cargo_lambda
        write_env
    else
        ensure_tools
        open_parents
        local fresh p
        read -r -a fresh <<<"$(free_ports 10)"
        mkdir -p "$PG" "$RDS" "$RTLS" "$MOTO"
        for p in "${need[@]}"; do
            case "$p" in
                pg)
                    choose_port "$PG/port" "${fresh[0]}" >"$PG/port.new"
                    ensure_tls
                    start_pg "$(cat "$PG/port.new")"
                    mv "$PG/port.new" "$PG/port"
                    ;;
                redis)
                    choose_port "$RDS/port" "${fresh[1]}" >"$RDS/port.new"
                    start_redis "$(cat "$RDS/port.new")"
                    mv "$RDS/port.new" "$RDS/port"
                    ;;
                redis-cluster)
                    start_redis_cluster "${fresh[@]:3:6}"
                    ;;
                redis-tls)
                    choose_port "$RTLS/port" "${fresh[9]}" >"$RTLS/port.new"
                    start_redis_tls "$(cat "$RTLS/port.new")"
                    mv "$RTLS/port.new" "$RTLS/port"
                    ;;
                moto)
                    choose_port "$MOTO/port" "${fresh[2]}" >"$MOTO/port.new"
                    start_moto "$(cat "$MOTO/port.new")"
                    mv "$MOTO/port.new" "$MOTO/port"
                    ;;
            esac
        done
        pg_set_password "$(cat "$PG/port")"
        write_env
        log "ready in $((SECONDS - t0)) s (state: $DIR)"
    fi
    cat "$ENV_FILE" >&3
}

cmd_stop() {
    stop_pg
    kill_pidfile "$RDS/redis.pid" redis-server
    stop_redis_cluster
    kill_pidfile "$RTLS/redis.pid" redis-server
    kill_pidfile "$MOTO/moto.pid" moto_server
    log "stopped (data kept in $DIR)"
}

cmd_status() {
    local rc=0
    if pg_running; then log "postgres  running on port $(cat "$PG/port" 2>/dev/null)"; else log "postgres  stopped"; rc=1; fi
    if redis_running; then log "redis     running on port $(cat "$RDS/port" 2>/dev/null)"; else log "redis     stopped"; rc=1; fi
    if redis_cluster_running; then log "redis cluster running on ports $(cat "$RCL/ports" 2>/dev/null)"; else log "redis cluster stopped"; rc=1; fi
    if redis_tls_running; then log "redis tls running on port $(cat "$RTLS/port" 2>/dev/null)"; else log "redis tls stopped"; rc=1; fi
    if moto_running; then log "moto      running on port $(cat "$MOTO/port" 2>/dev/null)"; else log "moto      stopped"; rc=1; fi
    return "$rc"
}

cmd_env() {
    [ -s "$ENV_FILE" ] || die "no $ENV_FILE yet: run scripts/services.sh start"
    # An env file written before a setting was added gets it now (same ports and password).
    if ! grep -q '^export GODWIT_SHOP_URL=' "$ENV_FILE" && [ -s "$RCL/ports" ] && [ -s "$RTLS/port" ]; then
        lock
        write_env
    fi
    cat "$ENV_FILE"
}

cmd_reset() {
    cmd_stop 2>/dev/null || true
    case "$DIR" in
        / | "$REPO" | "${HOME:-/root}") die "refusing to delete $DIR" ;;
    esac
    rm -rf "$DIR" "/tmp/godwit-pg-$(printf '%s' "$DIR" | md5sum | cut -c1-12)"
    log "deleted $DIR"
}

# One start/stop/reset at a time per state folder (daemons do not inherit fd 9).
lock() {
    if command -v flock >/dev/null; then
        exec 9>"$DIR/.lock"
        flock -w 120 9 || die "another scripts/services.sh holds $DIR/.lock"
    fi
}

case "${1:-}" in
    start) lock; cmd_start ;;
    stop) lock; cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    reset) lock; cmd_reset ;;
    *)
        echo "usage: $0 start|stop|status|env|reset" >&2
        exit 2
        ;;
esac
