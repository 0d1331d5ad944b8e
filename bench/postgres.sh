# shellcheck shell=bash
# A private PostgreSQL server for the postgres column of bench/compare.sh
# (postoffice with [storage] backend = "postgres"). Sourced by compare.sh
# (which provides set -euo pipefail, log, die and wait_port); never the
# machine's own cluster.
#
#   install_postgres                    Debian's postgresql (no cluster started)
#   setup_postgres DIR PORT             initdb into DIR/data (once), socket DIR/sock
#   start_postgres / stop_postgres      postmaster pid in PG_PID; stop by pid
#   pg_sql [DB] SQL                     psql over the private socket, tuples only
#   pg_url                              postgres://postoffice@127.0.0.1:PORT/postoffice
#
# As crates/testkit/src/postgres.rs does for the tests: the superuser and
# the database are both `postoffice`, trust authentication, listening on
# 127.0.0.1:PORT only, with a private socket directory; when the script
# runs as root (initdb refuses root) the server runs as the `postgres`
# system user. PG_SETTINGS are the server's settings (-c name=value, also
# in BENCHMARKS.md): durability as the other servers' (fsync and
# synchronous_commit on: postoffice answers 250 only after COMMIT is on
# disk), memory fit for this machine (2 cores, 24 GiB), and
# pg_stat_statements loaded so compare.sh can count the statements a run
# costs.

PG_PID='' PG_DIR='' PG_PORT='' PG_BIN=''
command -v log >/dev/null || log() { echo "[$(date +%T)] $*" >&2; }
command -v die >/dev/null || die() { log "ERROR: $*"; exit 1; }
PG_SETTINGS=(
    listen_addresses=127.0.0.1
    max_connections=200
    fsync=on
    synchronous_commit=on
    full_page_writes=on
    wal_sync_method=fdatasync
    shared_buffers=512MB
    effective_cache_size=16GB
    work_mem=16MB
    maintenance_work_mem=512MB
    wal_buffers=64MB
    max_wal_size=16GB
    checkpoint_timeout=30min
    checkpoint_completion_target=0.9
    shared_preload_libraries=pg_stat_statements
    pg_stat_statements.track=top
    pg_stat_statements.track_utility=on
    pg_stat_statements.max=10000
)

pg_bin_dir() {
    local d
    d=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -n 1)
    [[ -n $d && -x $d/postgres ]] && echo "$d"
}

install_postgres() {
    if pg_bin_dir >/dev/null && command -v psql >/dev/null; then
        return
    fi
    log "installing postgresql from Debian (no cluster started)"
    # The same guard as for Dovecot: the package scripts start nothing.
    local own_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-contrib >/dev/null ||
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    [[ $own_policy == 0 ]] || rm -f /usr/sbin/policy-rc.d
    pg_bin_dir >/dev/null || die "postgresql installed but no /usr/lib/postgresql/*/bin/postgres"
}

# as_pg CMD...: run CMD as the postgres user when we are root.
as_pg() {
    if [[ $(id -u) == 0 ]]; then
        setpriv --reuid=postgres --regid=postgres --clear-groups "$@"
    else
        "$@"
    fi
}

# setup_postgres DIR PORT: the cluster in DIR/data (initdb once; kept with
# the corpus it holds), its socket directory DIR/sock.
setup_postgres() {
    PG_DIR=$1 PG_PORT=$2
    PG_BIN=$(pg_bin_dir) || die "PostgreSQL is not installed (Debian package postgresql)"
    mkdir -p "$PG_DIR/sock"
    if [[ $(id -u) == 0 ]]; then
        getent passwd postgres >/dev/null || die "user postgres missing (it comes with postgresql-common)"
        chown postgres:postgres "$PG_DIR" "$PG_DIR/sock"
    fi
    if [[ ! -s $PG_DIR/data/PG_VERSION ]]; then
        log "initdb of the private PostgreSQL in $PG_DIR/data"
        rm -rf "$PG_DIR/data"
        as_pg "$PG_BIN/initdb" -A trust -U postoffice -E UTF8 --locale=C -D "$PG_DIR/data" \
            >"$PG_DIR/initdb.log" 2>&1 || { cat "$PG_DIR/initdb.log" >&2; die "initdb failed"; }
    fi
}

pg_url() { echo "postgres://postoffice@127.0.0.1:$PG_PORT/postoffice"; }

# pg_sql [DB] SQL: unaligned, tuples only, over the private socket (so
# that it adds no TCP connection that compare.sh's counters would see).
pg_sql() {
    local db=postoffice
    if [[ $# -gt 1 ]]; then db=$1; shift; fi
    psql -X -q -At -v ON_ERROR_STOP=1 -h "$PG_DIR/sock" -p "$PG_PORT" -U postoffice -d "$db" -c "$1"
}

# start_postgres [LOG]: the postmaster (PG_PID), ready for queries, the
# database postoffice and pg_stat_statements created on the first start.
start_postgres() {
    local out=${1:-$PG_DIR/postgres.log} cmd=() s
    [[ $(id -u) != 0 ]] || cmd=(setpriv --reuid=postgres --regid=postgres --clear-groups)
    cmd+=("$PG_BIN/postgres" -D "$PG_DIR/data" -p "$PG_PORT" -k "$PG_DIR/sock")
    for s in "${PG_SETTINGS[@]}"; do cmd+=(-c "$s"); done
    # A command, not a function, in the background: $! is the postmaster
    # itself (setpriv execs it). The log file is opened here (as root).
    "${cmd[@]}" >>"$out" 2>&1 &
    PG_PID=$!
    for _ in $(seq 600); do
        "$PG_BIN/pg_isready" -q -h "$PG_DIR/sock" -p "$PG_PORT" && break
        kill -0 "$PG_PID" 2>/dev/null || die "PostgreSQL did not start (see $out)"
        sleep 0.1
    done
    "$PG_BIN/pg_isready" -q -h "$PG_DIR/sock" -p "$PG_PORT" || die "PostgreSQL is not ready after 60 s (see $out)"
    if [[ -z $(pg_sql postgres "SELECT 1 FROM pg_database WHERE datname = 'postoffice'") ]]; then
        pg_sql postgres "CREATE DATABASE postoffice"
    fi
    pg_sql "SET client_min_messages = warning; CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null
}

# stop_postgres: fast shutdown (SIGINT) of the postmaster, bounded wait
# (60 s: it checkpoints), then SIGKILL.
# (The postmaster is this shell's child: once it exits it is a zombie
# until waited for, which kill -0 still finds; its data directory's
# postmaster.pid is gone then.)
pg_running() {
    kill -0 "$PG_PID" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$PG_PID/stat" 2>/dev/null) != Z ]]
}
stop_postgres() {
    [[ -n $PG_PID ]] || return 0
    kill -INT "$PG_PID" 2>/dev/null || true
    for _ in $(seq 600); do pg_running || break; sleep 0.1; done
    if pg_running; then
        log "PostgreSQL (pid $PG_PID) did not stop within 60 s; killing it"
        kill -KILL "$PG_PID" 2>/dev/null || true
    fi
    wait "$PG_PID" 2>/dev/null || true
    PG_PID=
}

# pg_segs_in: data segments received so far by the server's side of every
# TCP connection to PG_PORT (ss's data_segs_in): one per request the
# clients sent (a client that pipelines statements sends them in one), so
# its growth over a run counts round trips to the database.
pg_segs_in() {
    ss -Htin state established "( sport = :$PG_PORT )" |
        awk '{for (i = 1; i <= NF; i++) if ($i ~ /^data_segs_in:/) {split($i, a, ":"); n += a[2]}} END {print n + 0}'
}
