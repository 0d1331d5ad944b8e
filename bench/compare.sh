#!/usr/bin/env bash
# postoffice vs. Dovecot (POP3) and Postfix (SMTP), side by side, on this
# machine.
#
#   bench/compare.sh [--quick] [--runs N] [--fresh] [--only LIST] [--no-wait]
#                    [--no-drop-caches] [--build] [--work DIR] [--postgres]
#
# What it does (see BENCHMARKS.md for the meaning of every figure):
#  1. Installs Debian's dovecot-pop3d if missing (without starting the
#     system Dovecot) and creates the mail user (uid/gid 5000); for the
#     smtp scenarios also Debian's postfix (system instance unconfigured,
#     see bench/postfix.sh). For pop3s-*, generates (once, with openssl)
#     an RSA-2048 and an ECDSA P-256 certificate, each signed by its own
#     CA, which both servers then serve.
#  2. Seeds one deterministic corpus twice, once per layout, with
#     `postoffice-bench seed`: 1,000 users x 20 messages (mean ~48 KB), a
#     100,000-message maildrop, a 10 MB message, and (postoffice only)
#     10,000 idle users. The same SHA512-CRYPT passwd-file is Dovecot's
#     passdb and is imported into postoffice, so both verify the same hash.
#     A corpus is reused by later runs with the same parameters (--fresh
#     re-seeds: the old copy is moved aside and deleted only at the end).
#     SMTP recipients are separate users without mail (smtp<n>@smtp.bench.test,
#     imported into postoffice, Postfix's virtual map), so SMTP runs leave
#     the POP3 corpus untouched. For the login-a2* scenarios, 100 more
#     users (argon<n>@bench.test, same mail) are added with `postoffice
#     user add`, i.e. with postoffice's default hash, argon2id.
#  3. Starts a private Dovecot instance, the release postoffice and (for
#     smtp) a private Postfix instance, each on its own loopback port.
#     postoffice runs with its defaults (credential cache on) and is
#     restarted with `[auth] cache_ttl_secs = 0` for the rows without a
#     cache; for the pop3s rows both servers are restarted with the
#     certificate of the row.
#  4. Waits (up to 20 min) until no rustc/cargo build runs, warms both up,
#     then runs every scenario RUNS times (default 3), alternating which
#     server goes first, and prints one markdown table of medians.
#  5. Stops every server it started (by pid, also on error or Ctrl-C).
#
# --postgres: a third column, postoffice-pg: the same release binary with
#          [storage] backend = "postgres" on a private PostgreSQL
#          (bench/postgres.sh) on the same machine, its own ports and
#          data_dir, the corpus copied into the database once with
#          `postoffice migrate --to postgres` (UIDLs kept). Only for the rows
#          s16, login, hold, bigbox and smtp. Its CPU and memory include
#          every PostgreSQL process; the table adds the database statements
#          (pg_stat_statements, BEGIN/COMMIT included) and the requests
#          (TCP data segments received by PostgreSQL = round trips) per
#          session, login or message.
# --quick: tiny numbers (20 users x 5 messages, 200 sessions, 1 run) for a
#          smoke run of the script itself; its figures mean nothing.
# --only:  comma-separated subset of (BENCHMARKS.md says what each means):
#          s16, s64        RETR-all sessions, concurrency 16 / 64
#          login           login-only (USER/PASS, STAT, UIDL), SHA512-CRYPT,
#                          no credential cache on either server
#          login-a2        login-only, postoffice users with argon2id (its
#                          default hash), credential cache on, starting
#                          empty (server restarted before the run)
#          login-a2-nocache  the same with the cache off
#          login-warm      login + STAT + UIDL, argon2id users, cache warm
#          hold, hold10k   idle sessions and server memory
#          pipeline, retrbig, bigbox, bigbox-first
#          pop3s-rsa, pop3s-ecdsa  POP3S (implicit TLS), same certificate
#                          on both servers: RETR all and login only, each
#                          with full handshakes and with resumption
#          smtp            SMTP 10 KiB, 16 clients, 1,000 recipients
#          smtp-hot        SMTP 10 KiB, 16 clients, one recipient
#          smtp-1m         SMTP 1 MiB, 16 clients, 1,000 recipients
#          smtp-big        SMTP 40 concurrent 20 MiB messages, peak RSS
#          smtp-rspamd     SMTP 10 KiB, 16 clients, 1,000 recipients, with
#                          and without a private rspamd (bench/rspamd.sh):
#                          postoffice over HTTP /checkv2, Postfix through
#                          rspamd's milter; CPU includes rspamd's
# Environment: BENCH_WORK (default /var/tmp/postoffice-bench),
#   POSTOFFICE_BIN, BENCH_BIN (default target/release/...),
#   DOVECOT_PORT (21110), POSTOFFICE_PORT (22110), POSTFIX_PORT (21025),
#   POSTOFFICE_SMTP_PORT (22025); the POP3S ports are the POP3 ports + 1;
#   --postgres: PG_PORT (23432, PostgreSQL), POSTOFFICE_PG_PORT (23110,
#   POP3 of postoffice-pg), POSTOFFICE_PG_SMTP_PORT (23025);
#   smtp-rspamd: RSPAMD_PORT (21333, HTTP), RSPAMD_DNS_PORT (21353, its
#   private dnsmasq); the milter is a unix socket in WORK/rspamd/run
#   (RS_MILTER_SOCKET=tcp: 127.0.0.1:RSPAMD_MILTER_PORT, 21332); SMTP_MESSAGES (messages
#   per smtp/smtp-hot/smtp-rspamd run; default 2000, --quick 200).
#   Example: only the new login and TLS rows, with binaries built elsewhere:
#     POSTOFFICE_BIN=/path/postoffice BENCH_BIN=/path/postoffice-bench \
#       bench/compare.sh --only login-a2,login-a2-nocache,login-warm,pop3s-rsa
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
QUICK=0 FRESH=0 RUNS= WAIT_IDLE=1 DROP_CACHES=1 BUILD=0 ONLY=
PG=0
WORK=${BENCH_WORK:-/var/tmp/postoffice-bench}
while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) QUICK=1 ;;
        --fresh) FRESH=1 ;;
        --runs) RUNS=$2; shift ;;
        --only) ONLY=$2; shift ;;
        --no-wait) WAIT_IDLE=0 ;;
        --no-drop-caches) DROP_CACHES=0 ;;
        --build) BUILD=1 ;;
        --work) WORK=$2; shift ;;
        --postgres) PG=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
    esac
    shift
done

PO=${POSTOFFICE_BIN:-$ROOT/target/release/postoffice}
BENCH=${BENCH_BIN:-$ROOT/target/release/postoffice-bench}
D_PORT=${DOVECOT_PORT:-21110}
P_PORT=${POSTOFFICE_PORT:-22110}
F_PORT=${POSTFIX_PORT:-21025}
PS_PORT=${POSTOFFICE_SMTP_PORT:-22025}
RS_PORT=${RSPAMD_PORT:-21333}
RSM_PORT=${RSPAMD_MILTER_PORT:-21332}
RSD_PORT=${RSPAMD_DNS_PORT:-21353}
PGS_PORT=${PG_PORT:-23432}
Q_PORT=${POSTOFFICE_PG_PORT:-23110}
QS_PORT=${POSTOFFICE_PG_SMTP_PORT:-23025}
PASSWORD=benchpass
SEED=42
DOMAIN=bench.test
# SMTP recipients: their own domain, so that each server's Maildirs for
# them are one directory tree (the generator counts new/ files under it)
# and the POP3 users' maildrops are never written to.
SMTP_DOMAIN=smtp.$DOMAIN
MAIL_UID=5000

# ------------------------------------------------------------ parameters
if [[ $QUICK == 1 ]]; then
    USERS=20 MSGS=5 SESSIONS=200 C_LOW=4 C_HIGH=16 HOLD=20 HOLD_SECS=1
    BIG_HOLD=200 BIGBOX=2000 BIGMSG=$((1024 * 1024)) PIPE=1000 REPEAT=3
    SMTP_MSGS=200 A2_USERS=10 SMTP_1M_MSGS=20 SMTP_BIG_C=8 SMTP_BIG_SIZE=$((2 * 1024 * 1024))
    RUNS=${RUNS:-1}
else
    USERS=1000 MSGS=20 SESSIONS=2000 C_LOW=16 C_HIGH=64 HOLD=1000 HOLD_SECS=5
    BIG_HOLD=10000 BIGBOX=100000 BIGMSG=$((10 * 1024 * 1024)) PIPE=1000 REPEAT=5
    SMTP_MSGS=2000 A2_USERS=100 SMTP_1M_MSGS=300 SMTP_BIG_C=40 SMTP_BIG_SIZE=$((20 * 1024 * 1024))
    RUNS=${RUNS:-3}
fi
# SMTP_MESSAGES (environment) overrides the messages per run of smtp,
# smtp-hot and smtp-rspamd, e.g. for a --quick smoke run of smtp-rspamd
# long enough to give a figure.
SMTP_MSGS=${SMTP_MESSAGES:-$SMTP_MSGS}
# SMTP: 10 KB messages from 16 clients, one message per connection, to
# SMTP_USERS recipients round-robin (smtp-hot: all to the first one);
# smtp-1m: 1 MiB messages the same way; smtp-big: SMTP_BIG_C clients each
# send one SMTP_BIG_SIZE message at the same time.
SMTP_USERS=$USERS SMTP_SIZE=10240 SMTP_C=16 SMTP_1M_SIZE=$((1024 * 1024))
# smtp-rspamd: the unmeasured warm-up through rspamd, per server.
SMTP_RSPAMD_WARM=$(( SMTP_MSGS < 500 ? SMTP_MSGS : 500 ))
# TLS certificate kinds of the pop3s-<kind> scenarios.
TLS_KINDS="rsa ecdsa"
IDLE_USERS=$BIG_HOLD
KEY="u$USERS-m$MSGS-b$BIGBOX-x$BIGMSG-i$IDLE_USERS-s$SEED"
CORPUS=$WORK/corpus-$KEY
STAMP=$(date +%Y%m%d-%H%M%S)
RESULTS=$WORK/results/$STAMP
DCONF_DIR=$WORK/dovecot
P_CONF=$WORK/postoffice.toml

log() { echo "[$(date +%T)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
want() { [[ -z $ONLY || ",$ONLY," == *",$1,"* ]]; }
# want_any NAME...: at least one of them is wanted.
want_any() {
    local n
    for n in "$@"; do want "$n" && return 0; done
    return 1
}
want_smtp() { want_any smtp smtp-hot smtp-1m smtp-big smtp-rspamd; }
# Any POP3 row (their warm-up reads the whole corpus: skipped without one).
want_pop3() {
    want_any s16 s64 login login-a2 login-a2-nocache login-warm hold hold10k pipeline retrbig \
        bigbox bigbox-first pop3s-rsa pop3s-ecdsa
}
want_a2() { want_any login-a2 login-a2-nocache login-warm; }
want_tls() { want_any pop3s-rsa pop3s-ecdsa; }
KNOWN=",s16,s64,login,login-a2,login-a2-nocache,login-warm,hold,hold10k,pipeline,retrbig,bigbox,bigbox-first,pop3s-rsa,pop3s-ecdsa,smtp,smtp-hot,smtp-1m,smtp-big,smtp-rspamd,"
for n in ${ONLY//,/ }; do
    [[ $KNOWN == *",$n,"* ]] || die "--only: unknown scenario $n (see --help)"
done
# install_postfix, setup_postfix, start_postfix, stop_postfix (PF_PID), ...,
# and wait_port, which every server start below uses.
# shellcheck source=bench/postfix.sh
source "$ROOT/bench/postfix.sh"
# install_rspamd, setup_rspamd, start_rspamd, stop_rspamd (RS_PID).
# shellcheck source=bench/rspamd.sh
source "$ROOT/bench/rspamd.sh"
# install_postgres, setup_postgres, start_postgres, stop_postgres (PG_PID),
# pg_sql, pg_url, pg_segs_in.
# shellcheck source=bench/postgres.sh
source "$ROOT/bench/postgres.sh"
# The rows with a postoffice-pg column (--postgres).
PG_ROWS="s16 login hold bigbox smtp"
# pg_row SCENARIO: --postgres is on and SCENARIO has a postoffice-pg column.
pg_row() { [[ $PG == 1 && " $PG_ROWS " == *" $1 "* ]]; }
want_pg() {
    [[ $PG == 1 ]] || return 1
    local n
    for n in $PG_ROWS; do want "$n" && return 0; done
    return 1
}
if [[ $PG == 1 ]] && ! want_pg; then
    log "NOTE: --postgres has no effect without one of the rows ${PG_ROWS// /, }"
fi

# ------------------------------------------------------------ cleanup
D_PID= P_PID= GEN_PID=
Q_PID=''
stop_dovecot() {
    [[ -n $D_PID ]] || return 0
    kill -TERM "$D_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$D_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$D_PID" 2>/dev/null || true
    D_PID=
}
stop_postoffice() {
    [[ -n $P_PID ]] || return 0
    kill -TERM "$P_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$P_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$P_PID" 2>/dev/null || true
    wait "$P_PID" 2>/dev/null || true
    P_PID=
}
stop_postoffice_pg() {
    [[ -n $Q_PID ]] || return 0
    kill -TERM "$Q_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$Q_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$Q_PID" 2>/dev/null || true
    wait "$Q_PID" 2>/dev/null || true
    Q_PID=
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -z $GEN_PID ]] || kill -TERM "$GEN_PID" 2>/dev/null || true
    stop_dovecot
    stop_postoffice
    stop_postoffice_pg
    stop_postgres
    stop_postfix
    stop_rspamd
    if [[ -d $WORK/trash ]]; then
        log "deleting what was moved aside during the run ($WORK/trash: old corpora, SMTP deliveries)"
        rm -rf "$WORK/trash"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------ binaries
if [[ $BUILD == 1 || ! -x $PO || ! -x $BENCH ]]; then
    [[ -z ${POSTOFFICE_BIN:-}${BENCH_BIN:-} ]] || [[ $BUILD == 1 ]] ||
        die "POSTOFFICE_BIN/BENCH_BIN given but not executable"
    log "building release binaries (cargo build --release -p postoffice -p postoffice-bench)"
    (cd "$ROOT" && cargo build --release -p postoffice -p postoffice-bench)
fi

# ------------------------------------------------------------ Dovecot
install_dovecot() {
    if command -v dovecot >/dev/null && [[ -x /usr/lib/dovecot/pop3 ]]; then
        return
    fi
    log "installing dovecot-pop3d from Debian"
    # Keep the package scripts from starting the system Dovecot.
    local own_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dovecot-pop3d >/dev/null
    [[ $own_policy == 0 ]] || rm -f /usr/sbin/policy-rc.d
    # If a system instance started anyway, stop it (by its own pid file).
    if [[ -s /run/dovecot/master.pid ]]; then
        kill -TERM "$(cat /run/dovecot/master.pid)" 2>/dev/null || true
    fi
}
install_dovecot
getent group $MAIL_UID >/dev/null || groupadd -g $MAIL_UID pobench
getent passwd $MAIL_UID >/dev/null ||
    useradd -u $MAIL_UID -g $MAIL_UID -M -d /nonexistent -s /usr/sbin/nologin pobench
for u in dovecot dovenull; do
    getent passwd $u >/dev/null || die "user $u missing (it comes with dovecot-core)"
done
if want_smtp; then install_postfix; fi
if want smtp-rspamd; then install_rspamd; fi
if want_pg; then install_postgres; fi
if want_tls; then command -v openssl >/dev/null || die "openssl is needed for the pop3s scenarios"; fi

# Idle sessions need descriptors: raise the soft limit to the hard one.
ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
# postoffice holds two descriptors per session (socket + maildrop lock).
P_HOLD_MAX=$(( (NOFILE - 256) / 2 ))
BIG_HOLD_EFF=$(( BIG_HOLD < P_HOLD_MAX ? BIG_HOLD : P_HOLD_MAX ))

SMTP_PORTS=()
if want_smtp; then SMTP_PORTS=("$F_PORT" "$PS_PORT"); fi
if want smtp-rspamd; then SMTP_PORTS+=("$RS_PORT" "$RSM_PORT" "$RSD_PORT"); fi
if want_pg; then SMTP_PORTS+=("$PGS_PORT" "$Q_PORT" "$((Q_PORT + 1))" "$QS_PORT"); fi
for p in $D_PORT $((D_PORT + 1)) $P_PORT $((P_PORT + 1)) "${SMTP_PORTS[@]}"; do
    if ss -Htln "sport = :$p" | grep -q .; then die "port $p is in use"; fi
done

# ------------------------------------------------------------ corpus
mkdir -p "$WORK" "$RESULTS" "$DCONF_DIR"
chmod 755 "$WORK"
# One run at a time per work directory (same ports, same corpus).
exec 9>"$WORK/.lock"
flock -n 9 || die "another compare.sh is running in $WORK (pid $(cat "$WORK/compare.pid" 2>/dev/null))"
echo $$ >"$WORK/compare.pid"
seed() { "$BENCH" seed --seed $SEED --domain $DOMAIN --password $PASSWORD "$@" | grep -v '^RESULT' >&2; }
if [[ -f $CORPUS/.seeded && $FRESH == 0 ]]; then
    log "reusing the corpus in $CORPUS (--fresh to re-seed)"
else
    # Never delete a previous corpus before timing: mass deletions make file
    # creation on this disk slow for minutes. Move it aside; the EXIT trap
    # deletes it after the run. (Corpora of other parameters, e.g. --quick,
    # are left alone.)
    if [[ -e $CORPUS ]]; then
        mkdir -p "$WORK/trash"
        mv "$CORPUS" "$WORK/trash/$(basename "$CORPUS").$STAMP"
    fi
    mkdir -p "$CORPUS/po" "$CORPUS/dovecot"
    chmod 755 "$CORPUS" "$CORPUS/dovecot"
    for layout in postoffice dovecot; do
        dir=$CORPUS/po owner=()
        if [[ $layout == dovecot ]]; then dir=$CORPUS/dovecot owner=(--owner $MAIL_UID:$MAIL_UID); fi
        log "seeding the $layout layout in $dir"
        seed --layout $layout --dir "$dir" "${owner[@]}" --users "$USERS" --messages "$MSGS" \
            --passwd-file "$CORPUS/users.passwd"
        seed --layout $layout --dir "$dir" "${owner[@]}" --users 1 --user-prefix bigbox \
            --messages "$BIGBOX" --sizes small --passwd-file "$CORPUS/bigbox.passwd"
        seed --layout $layout --dir "$dir" "${owner[@]}" --users 1 --user-prefix bigmsg \
            --messages 1 --sizes "$BIGMSG" --passwd-file "$CORPUS/bigmsg.passwd"
    done
    log "seeding $IDLE_USERS idle users (postoffice only)"
    seed --layout postoffice --dir "$CORPUS/po" --users "$IDLE_USERS" --user-prefix idle \
        --messages "$MSGS" --sizes small --passwd-file "$CORPUS/idle.passwd"
    cat "$CORPUS/users.passwd" "$CORPUS/bigbox.passwd" "$CORPUS/bigmsg.passwd" \
        >"$CORPUS/dovecot.passwd"
    cat "$CORPUS/dovecot.passwd" "$CORPUS/idle.passwd" >"$CORPUS/postoffice.passwd"
    chmod 644 "$CORPUS"/*.passwd
    touch "$CORPUS/.imported-pending" "$CORPUS/.seeded"
fi
# SMTP recipients: users without mail in their own domain, same passwd-file
# format and hash (a corpus seeded before the smtp scenario gets them now).
# postoffice imports them; Postfix's virtual map is built from the file.
if [[ ! -f $CORPUS/smtp.passwd ]]; then
    pwhash=$(head -n 1 "$CORPUS/users.passwd" | cut -d: -f2-)
    for n in $(seq "$SMTP_USERS"); do echo "smtp$n@$SMTP_DOMAIN:$pwhash"; done >"$CORPUS/smtp.passwd.new"
    chmod 644 "$CORPUS/smtp.passwd.new"
    mv "$CORPUS/smtp.passwd.new" "$CORPUS/smtp.passwd"
    touch "$CORPUS/.smtp-import-pending"
fi
# argon2id users (login-a2*): A2_USERS users argon<n>@DOMAIN with mail like
# the others' (postoffice layout only), added below with `postoffice user
# add`, which hashes with postoffice's default, argon2id. Dovecot's side of
# these rows is its first A2_USERS users (SHA512-CRYPT, its default setup).
A2_FILE=$CORPUS/argon.users
if want_a2 && [[ ! -f $A2_FILE ]]; then
    log "seeding $A2_USERS users for the argon2id login rows (postoffice only)"
    seed --layout postoffice --dir "$CORPUS/po" --users "$A2_USERS" --user-prefix argon --messages "$MSGS"
    touch "$CORPUS/.argon-pending"
fi
# Disk for the SMTP rows: every run's deliveries are moved into the trash
# (deleted when the script ends), on both servers.
if want_any smtp-1m smtp-big; then
    w1=0 wb=0
    if want smtp-1m; then w1=1; fi
    if want smtp-big; then wb=1; fi
    need_mb=$(( RUNS * 2 * (w1 * SMTP_1M_MSGS * SMTP_1M_SIZE + wb * SMTP_BIG_C * SMTP_BIG_SIZE) / 1048576 + 512 ))
    avail_mb=$(df -Pm "$WORK" | awk 'NR==2 {print $4}')
    (( avail_mb >= need_mb )) ||
        die "the smtp-1m/smtp-big rows need about $need_mb MB free in $WORK (deliveries are kept until the end); $avail_mb MB are"
fi

# ------------------------------------------------------------ certificates
# pop3s-<kind>: one certificate per kind, served by both servers. Each kind
# has its own CA (RSA-2048 signs RSA-2048, ECDSA P-256 signs ECDSA P-256, as
# public CAs do); the servers send the leaf, the generator trusts the CA and
# verifies the chain and the name (127.0.0.1) on every full handshake.
TLS_DIR=$WORK/tls
make_cert() { # KIND
    local kind=$1 d=$TLS_DIR keyopt ku
    case $kind in
        rsa) keyopt=(-newkey rsa:2048) ku=digitalSignature,keyEncipherment ;;
        ecdsa) keyopt=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ku=digitalSignature ;;
    esac
    [[ -s $d/$kind.crt && -s $d/$kind.key && -s $d/$kind-ca.crt ]] && return 0
    log "generating the $kind certificate and its CA in $d (openssl)"
    mkdir -p "$d"
    chmod 755 "$d"
    openssl req -x509 "${keyopt[@]}" -nodes -days 3650 -subj "/CN=postoffice bench $kind CA" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
        -keyout "$d/$kind-ca.key" -out "$d/$kind-ca.crt" 2>/dev/null
    openssl req -new "${keyopt[@]}" -nodes -subj "/CN=localhost" \
        -keyout "$d/$kind.key.new" -out "$d/$kind.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,%s\nextendedKeyUsage=serverAuth\n' \
        "$ku" >"$d/$kind.ext"
    openssl x509 -req -sha256 -days 3650 -in "$d/$kind.csr" -CA "$d/$kind-ca.crt" -CAkey "$d/$kind-ca.key" \
        -CAcreateserial -extfile "$d/$kind.ext" -out "$d/$kind.crt.new" 2>/dev/null
    chmod 600 "$d/$kind.key.new" "$d/$kind-ca.key"
    mv "$d/$kind.key.new" "$d/$kind.key"
    mv "$d/$kind.crt.new" "$d/$kind.crt"
}
if want_tls; then
    for kind in $TLS_KINDS; do
        make_cert "$kind"
        openssl x509 -in "$TLS_DIR/$kind.crt" -noout -subject -ext subjectAltName >"$RESULTS/cert-$kind.txt" 2>&1 || true
        openssl x509 -in "$TLS_DIR/$kind.crt" -noout -text | grep -E 'Public-Key|Signature Algorithm' | sort -u >>"$RESULTS/cert-$kind.txt" || true
    done
fi

# ------------------------------------------------------------ configs
cat >"$P_CONF" <<EOF
# postoffice for bench/compare.sh (written by the script).
data_dir = "$CORPUS/po"
hostname = "bench.local"
shutdown_timeout_secs = 5
[pop3]
listen = ["127.0.0.1:$P_PORT"]
listen_tls = ["127.0.0.1:$((P_PORT + 1))"]
[limits]
# Every client is 127.0.0.1: lift the per-IP cap (default 50).
max_connections = 20000
max_connections_per_ip = 20000
[log]
level = "info"
EOF
if want_smtp; then
    cat >>"$P_CONF" <<EOF
# The MX listener for the smtp scenarios. The verification stages that need
# DNS or clamd are off, as Postfix runs none: no DNSBL zones, no SPF, DKIM
# or DMARC, no clamd. Mail is fsynced into the maildrop before 250 (always).
[smtp]
listen = ["127.0.0.1:$PS_PORT"]
[submission]
listen = []
listen_tls = []
[filter]
dnsbl = "off"
spf = "off"
dkim = "off"
dmarc = "off"
clamd = ""
EOF
    "$PO" --config "$P_CONF" config check >/dev/null ||
        die "postoffice rejects the [smtp]/[filter] config in $P_CONF (a binary without SMTP?)"
else
    # No SMTP/submission listeners: their default ports may be taken. Each
    # section is kept only if this binary knows it.
    for extra in '[smtp]\nlisten = []\n' '[submission]\nlisten = []\nlisten_tls = []\n'; do
        cp "$P_CONF" "$P_CONF.prev"
        printf "$extra" >>"$P_CONF"
        "$PO" --config "$P_CONF" config check >/dev/null 2>&1 || cp "$P_CONF.prev" "$P_CONF"
    done
fi
# No web listener either (its default port may be taken; older binaries
# know no [http]).
cp "$P_CONF" "$P_CONF.prev"
printf '[http]\nlisten = []\n' >>"$P_CONF"
"$PO" --config "$P_CONF" config check >/dev/null 2>&1 || cp "$P_CONF.prev" "$P_CONF"
# Variants, each a copy of the config above plus one section:
#   default (P_CONF): [tls] with the RSA certificate when pop3s rows run
#     (otherwise postoffice's self-signed one, as before); credential cache
#     at its default (on, an hour);
#   nocache: the same with [auth] cache_ttl_secs = 0;
#   ecdsa: [tls] with the ECDSA certificate.
# start_postoffice runs P_CONF_CUR; po_mode switches between them.
tls_section() { printf '[tls]\ncert = "%s"\nkey = "%s"\n' "$TLS_DIR/$1.crt" "$TLS_DIR/$1.key"; }
P_CONF_BASE=$WORK/postoffice-base.toml
cp "$P_CONF" "$P_CONF_BASE"
if want_tls; then tls_section rsa >>"$P_CONF"; fi
P_CONF_NOCACHE=$WORK/postoffice-nocache.toml
{ cat "$P_CONF"; printf '[auth]\n# No credential cache: every login verifies its hash.\ncache_ttl_secs = 0\n'; } >"$P_CONF_NOCACHE"
if ! "$PO" --config "$P_CONF_NOCACHE" config check >/dev/null 2>&1; then
    log "NOTE: this postoffice has no [auth] cache_ttl_secs (no credential cache): 'nocache' runs the default config"
    cp "$P_CONF" "$P_CONF_NOCACHE"
fi
P_CONF_ECDSA=$WORK/postoffice-ecdsa.toml
{ cat "$P_CONF_BASE"; tls_section ecdsa; } >"$P_CONF_ECDSA"
#   rspamd: the default config with every message scored by the private
#     rspamd (bench/rspamd.sh) over HTTP; thresholds out of reach, as
#     rspamd's own actions there, so every message is delivered.
P_CONF_RSPAMD=$WORK/postoffice-rspamd.toml
if want smtp-rspamd; then
    sed '/^clamd = ""$/a rspamd = "127.0.0.1:'"$RS_PORT"'"\nspam_tag = 1000.0\nspam_quarantine = 1000.0\nspam_reject = 1000.0\nrspamd_failure = "closed"' \
        "$P_CONF" >"$P_CONF_RSPAMD"
    grep -q '^rspamd = ' "$P_CONF_RSPAMD" || die "could not add rspamd to the [filter] section of $P_CONF"
    "$PO" --config "$P_CONF_RSPAMD" config check >/dev/null ||
        die "postoffice rejects $P_CONF_RSPAMD (a binary without [filter] rspamd?)"
fi
"$PO" --config "$P_CONF" config check >/dev/null || die "postoffice rejects $P_CONF"
P_CONF_CUR=$P_CONF P_MODE=default
if [[ -f $CORPUS/.imported-pending ]]; then
    log "importing $(wc -l <"$CORPUS/postoffice.passwd") users into postoffice from the passwd-file"
    "$PO" --config "$P_CONF" user import --dovecot-passwd "$CORPUS/postoffice.passwd" >&2
    touch "$CORPUS/.pg-pending"
    rm -f "$CORPUS/.imported-pending"
fi
if [[ -f $CORPUS/.smtp-import-pending ]]; then
    log "importing $SMTP_USERS SMTP recipients ($SMTP_DOMAIN) into postoffice"
    "$PO" --config "$P_CONF" user import --dovecot-passwd "$CORPUS/smtp.passwd" >&2
    touch "$CORPUS/.pg-pending"
    rm -f "$CORPUS/.smtp-import-pending"
fi
if [[ -f $CORPUS/.argon-pending ]]; then
    log "adding $A2_USERS users with postoffice's default hash through 'postoffice user add' (argon2id)"
    for n in $(seq "$A2_USERS"); do
        # (passwd: a user left by an interrupted earlier attempt)
        printf '%s\n' "$PASSWORD" | "$PO" --config "$P_CONF" user add "argon$n@$DOMAIN" --password-stdin >/dev/null 2>&1 ||
            printf '%s\n' "$PASSWORD" | "$PO" --config "$P_CONF" user passwd "argon$n@$DOMAIN" --password-stdin >/dev/null
    done
    n=$(grep -c 'argon2id' "$CORPUS/po/directory.toml" || true)
    (( n >= A2_USERS )) || die "expected $A2_USERS argon2id hashes in $CORPUS/po/directory.toml, found $n"
    for n in $(seq "$A2_USERS"); do echo "argon$n@$DOMAIN"; done >"$A2_FILE.new"
    mv "$A2_FILE.new" "$A2_FILE"
    touch "$CORPUS/.pg-pending"
    rm -f "$CORPUS/.argon-pending"
fi
# ------------------------------------------------------------ postgres
# postoffice-pg (--postgres): the default config (without the POP3S
# certificate) on its own ports and data_dir, plus [storage]; a nocache
# variant for the login row, as for postoffice. The database lives in
# CORPUS/pg (with the corpus it holds: --fresh moves both aside).
Q_CONF=$WORK/postoffice-pg.toml Q_CONF_NOCACHE=$WORK/postoffice-pg-nocache.toml
Q_DATA=$WORK/po-pg
if want_pg; then
    setup_postgres "$CORPUS/pg" "$PGS_PORT"
    storage_section() { printf '[storage]\n%s\nurl = "%s"\n' "$1" "$(pg_url)"; }
    mkdir -p "$Q_DATA"
    {
        sed -e "s|^data_dir = .*|data_dir = \"$Q_DATA\"|" \
            -e "s|127.0.0.1:$P_PORT\"|127.0.0.1:$Q_PORT\"|" \
            -e "s|127.0.0.1:$((P_PORT + 1))\"|127.0.0.1:$((Q_PORT + 1))\"|" \
            -e "s|127.0.0.1:$PS_PORT\"|127.0.0.1:$QS_PORT\"|" "$P_CONF_BASE"
        storage_section 'backend = "postgres"'
    } >"$Q_CONF"
    { cat "$Q_CONF"; printf '[auth]\n# No credential cache: every login verifies its hash.\ncache_ttl_secs = 0\n'; } >"$Q_CONF_NOCACHE"
    "$PO" --config "$Q_CONF_NOCACHE" config check >/dev/null 2>&1 || cp "$Q_CONF" "$Q_CONF_NOCACHE"
    # The corpus's Maildir config naming the database: what `postoffice
    # migrate --to postgres` copies from and into.
    M_CONF=$WORK/postoffice-migrate.toml
    { cat "$P_CONF"; storage_section 'backend = "maildir"'; } >"$M_CONF"
    for c in "$Q_CONF" "$M_CONF"; do
        "$PO" --config "$c" config check >/dev/null || die "postoffice rejects $c (a binary without [storage] postgres?)"
    done
    cp "$Q_CONF" "$RESULTS/postoffice-pg.toml"
    start_postgres "$RESULTS/postgres.log"
    printf '%s\n' "${PG_SETTINGS[@]}" >"$RESULTS/postgres-settings.txt"
    pg_sql "SELECT version()" >>"$RESULTS/postgres-settings.txt"
    if [[ ! -f $CORPUS/.pg-loaded || -f $CORPUS/.pg-pending ]]; then
        # Loading is not measured: commits need not wait for the disk
        # meanwhile (the runs below have synchronous_commit on).
        log "copying the corpus into PostgreSQL (postoffice migrate --to postgres; once per corpus)"
        pg_sql "ALTER DATABASE postoffice SET synchronous_commit = off"
        "$PO" --config "$M_CONF" migrate --to postgres 2>"$RESULTS/pg-migrate.err" | tee "$RESULTS/pg-migrate.txt" >&2 ||
            { tail -n 20 "$RESULTS/pg-migrate.err" >&2; die "postoffice migrate --to postgres failed (see $RESULTS/pg-migrate.*)"; }
        pg_sql "ALTER DATABASE postoffice RESET synchronous_commit"
        pg_sql "VACUUM (ANALYZE)"
        pg_sql "CHECKPOINT"
        touch "$CORPUS/.pg-loaded"
        rm -f "$CORPUS/.pg-pending"
    fi
    "$PO" --config "$Q_CONF" db migrate >&2
    "$PO" --config "$Q_CONF" db status >&2 || die "the database schema is not this postoffice's"
    pg_sql "SELECT 'database: ' || (SELECT count(*) FROM mailboxes) || ' mailboxes, ' ||
        (SELECT count(*) FROM messages) || ' messages, ' || pg_size_pretty(pg_database_size('postoffice'))" |
        tee -a "$RESULTS/postgres-settings.txt" >&2
fi
# Where each server keeps the SMTP recipients' Maildirs (<root>/<user>/new).
PO_SMTP_MAIL=$CORPUS/po/mail/$SMTP_DOMAIN
F_SMTP_MAIL=$WORK/postfix/mail/$SMTP_DOMAIN
if want_smtp; then
    setup_postfix "$WORK" "$F_PORT" "$CORPUS/smtp.passwd"
    if want smtp-rspamd; then setup_rspamd "$WORK" "$RS_PORT" "$RSM_PORT" "$RSD_PORT"; fi
    cp "$WORK/postfix/postconf-n.conf" "$RESULTS/postconf-n.conf"
    cp "$WORK/postfix/etc/master.cf" "$RESULTS/postfix-master.cf"
fi

# Dovecot 2.3, private instance. Every non-default setting is here.
# write_dovecot_conf [KIND]: plain POP3 only (ssl = no), or also POP3S on
# DOVECOT_PORT + 1 with the KIND certificate (rsa, ecdsa) and Dovecot's
# TLS defaults otherwise.
mkdir -p "$DCONF_DIR/run"
write_dovecot_conf() {
    local kind=${1:-} ssl="ssl = no" pop3s="port = 0"
    if [[ -n $kind ]]; then
        ssl="ssl = yes
ssl_cert = <$TLS_DIR/$kind.crt
ssl_key = <$TLS_DIR/$kind.key"
        if [[ -r /usr/share/dovecot/dh.pem ]]; then ssl+=$'\nssl_dh = </usr/share/dovecot/dh.pem'; fi
        pop3s="address = 127.0.0.1
    port = $((D_PORT + 1))
    ssl = yes"
    fi
    cat >"$DCONF_DIR/dovecot.conf" <<EOF
# Private Dovecot for bench/compare.sh (written by the script).
base_dir = $DCONF_DIR/run
instance_name = pobench-dovecot
state_dir = $DCONF_DIR/state
log_path = $DCONF_DIR/dovecot.log
info_log_path = $DCONF_DIR/dovecot-info.log
protocols = pop3
listen = 127.0.0.1
$ssl
disable_plaintext_auth = no
auth_mechanisms = plain login
# No credential cache (the default; passwd-file credentials are never
# cached anyway): every login verifies one SHA512-CRYPT hash.
auth_cache_size = 0
mail_uid = $MAIL_UID
mail_gid = $MAIL_UID
first_valid_uid = 1000
first_valid_gid = 1000
default_internal_user = dovecot
default_login_user = dovenull
mail_location = maildir:~/Maildir
passdb {
  driver = passwd-file
  args = scheme=SHA512-CRYPT $CORPUS/dovecot.passwd
}
userdb {
  driver = static
  args = uid=$MAIL_UID gid=$MAIL_UID home=$CORPUS/dovecot/%n
}
# Process limits raised so they do not cap the runs (defaults: 100 / 1000).
default_process_limit = 1000
default_client_limit = 20000
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = $D_PORT
  }
  inet_listener pop3s {
    $pop3s
  }
  # High-performance mode: long-lived login processes, many clients each.
  service_count = 0
  process_min_avail = 2
  process_limit = 16
  client_limit = 20000
}
service pop3 {
  process_limit = 20000
}
service auth {
  client_limit = 20000
}
service anvil {
  client_limit = 20000
}
protocol pop3 {
  # Default 10 per user and IP; every client here is 127.0.0.1.
  mail_max_userip_connections = 20000
}
EOF
    local saved=$RESULTS/dovecot-n${kind:+-$kind}.conf
    dovecot -c "$DCONF_DIR/dovecot.conf" -n >"$saved" 2>"$RESULTS/dovecot-n.err" ||
        { cat "$RESULTS/dovecot-n.err" >&2; die "dovecot rejected its config"; }
}
write_dovecot_conf
D_MODE=plain

# ------------------------------------------------------------ servers
# wait_port PORT PID is defined in bench/postfix.sh (sourced above).
start_dovecot() {
    dovecot -c "$DCONF_DIR/dovecot.conf" || die "dovecot did not start (see $DCONF_DIR/dovecot.log)"
    for _ in $(seq 100); do [[ -s $DCONF_DIR/run/master.pid ]] && break; sleep 0.1; done
    D_PID=$(cat "$DCONF_DIR/run/master.pid")
    wait_port "$D_PORT" "$D_PID" || die "dovecot is not listening on $D_PORT (see $DCONF_DIR/dovecot.log)"
}
start_postoffice() {
    "$PO" --config "$P_CONF_CUR" serve >>"$RESULTS/postoffice.out" 2>>"$RESULTS/postoffice.log" &
    P_PID=$!
    wait_port "$P_PORT" "$P_PID" || die "postoffice is not listening on $P_PORT (see $RESULTS/postoffice.log)"
    if want_smtp; then
        wait_port "$PS_PORT" "$P_PID" || die "postoffice is not listening for SMTP on $PS_PORT"
    fi
    if [[ $P_MODE == rsa || $P_MODE == ecdsa ]]; then
        wait_port "$((P_PORT + 1))" "$P_PID" || die "postoffice is not listening for POP3S on $((P_PORT + 1))"
    fi
}
start_postoffice_pg() {
    "$PO" --config "$Q_CONF_CUR" serve >>"$RESULTS/postoffice-pg.out" 2>>"$RESULTS/postoffice-pg.log" &
    Q_PID=$!
    wait_port "$Q_PORT" "$Q_PID" || die "postoffice-pg is not listening on $Q_PORT (see $RESULTS/postoffice-pg.log)"
    if want_smtp; then
        wait_port "$QS_PORT" "$Q_PID" || die "postoffice-pg is not listening for SMTP on $QS_PORT"
    fi
}
# q_mode default|nocache: postoffice-pg with that config (restarted if it
# runs another one).
Q_CONF_CUR=$Q_CONF
q_mode() {
    local conf=$Q_CONF
    [[ $1 == default ]] || conf=$Q_CONF_NOCACHE
    if [[ $conf != "$Q_CONF_CUR" || -z $Q_PID ]]; then
        stop_postoffice_pg
        Q_CONF_CUR=$conf
        start_postoffice_pg
    fi
}
# po_mode MODE [restart]: run postoffice with the config of MODE (default,
# nocache, rsa = default with the RSA certificate, ecdsa), restarting it if
# it runs another one, or always with "restart" (empties its credential
# cache and TLS session cache).
po_mode() {
    local mode=$1 conf
    case $mode in
        default|rsa) conf=$P_CONF ;;
        nocache) conf=$P_CONF_NOCACHE ;;
        ecdsa) conf=$P_CONF_ECDSA ;;
        rspamd) conf=$P_CONF_RSPAMD ;;
        *) die "po_mode: unknown mode $mode" ;;
    esac
    if [[ $conf != "$P_CONF_CUR" || ${2:-} == restart || -z $P_PID ]]; then
        stop_postoffice
        P_CONF_CUR=$conf P_MODE=$mode
        start_postoffice
    fi
    P_MODE=$mode
}
po_restart() { po_mode "$P_MODE" restart; }
# dovecot_mode plain|rsa|ecdsa: Dovecot with that config (restarted if it
# runs another).
dovecot_mode() {
    local mode=$1
    [[ $mode == "$D_MODE" && -n $D_PID ]] && return 0
    stop_dovecot
    if [[ $mode == plain ]]; then write_dovecot_conf; else write_dovecot_conf "$mode"; fi
    D_MODE=$mode
    start_dovecot
    if [[ $mode != plain ]]; then
        wait_port "$((D_PORT + 1))" "$D_PID" || die "dovecot is not listening for POP3S on $((D_PORT + 1))"
    fi
}
drop_caches() {
    if [[ $DROP_CACHES == 1 ]]; then
        sync
        echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    fi
}
CAN_DROP=0
if [[ $DROP_CACHES == 1 && -w /proc/sys/vm/drop_caches ]]; then CAN_DROP=1; fi

log "starting Dovecot on 127.0.0.1:$D_PORT and postoffice on 127.0.0.1:$P_PORT"
start_dovecot
start_postoffice
if want_pg; then
    log "starting postoffice-pg on 127.0.0.1:$Q_PORT (SMTP $QS_PORT), PostgreSQL on 127.0.0.1:$PGS_PORT"
    start_postoffice_pg
fi
if want_smtp; then
    log "starting Postfix on 127.0.0.1:$F_PORT (postoffice's SMTP listener: 127.0.0.1:$PS_PORT)"
    start_postfix
    # The roots the generator counts new/ files under must exist; virtual(8)
    # creates the Maildirs below as uid $MAIL_UID.
    install -d -o $MAIL_UID -g $MAIL_UID "$F_SMTP_MAIL"
    mkdir -p "$PO_SMTP_MAIL"
fi
if want smtp-rspamd; then
    start_rspamd
    log "started rspamd (HTTP 127.0.0.1:$RS_PORT, milter $RS_MILTER, DNS: dnsmasq on 127.0.0.1:$RSD_PORT)"
fi
# pf_milter on|off: Postfix with or without rspamd's milter (restarted).
PF_MILTER=off
pf_milter() {
    [[ $1 == "$PF_MILTER" ]] && return 0
    stop_postfix
    if [[ $1 == on ]]; then postfix_milter "$RS_MILTER"; else postfix_milter off; fi
    PF_MILTER=$1
    start_postfix
}

# ------------------------------------------------------------ generator
VALUES=$RESULTS/values.tsv
: >"$VALUES"
ERRORS=0
addr() { # SERVER [smtp|tls]
    case $1:${2:-} in
        dovecot:tls) echo "127.0.0.1:$((D_PORT + 1))" ;;
        dovecot:*) echo "127.0.0.1:$D_PORT" ;;
        postfix:*) echo "127.0.0.1:$F_PORT" ;;
        postoffice:smtp) echo "127.0.0.1:$PS_PORT" ;;
        postoffice-pg:smtp) echo "127.0.0.1:$QS_PORT" ;;
        postoffice-pg:*) echo "127.0.0.1:$Q_PORT" ;;
        postoffice:tls) echo "127.0.0.1:$((P_PORT + 1))" ;;
        *) echo "127.0.0.1:$P_PORT" ;;
    esac
}
# Dovecot and Postfix: the master and every process it forked (and reaped).
srvsel() {
    case $1 in
        dovecot) echo "--server-tree $D_PID" ;;
        postfix) echo "--server-tree $PF_PID" ;;
        # postoffice and the PostgreSQL postmaster with all its processes
        # (backends, WAL writer, checkpointer...).
        postoffice-pg) echo "--server-pids $Q_PID --server-tree $PG_PID" ;;
        *) echo "--server-pids $P_PID" ;;
    esac
}
# The machine is shared: measure only while no compiler runs. Waiting is
# bounded by one budget for the whole run (20 minutes, polls every 15 s).
# Processes named rustc or cargo (not a command line that merely mentions
# cargo: a build queued behind a lock, e.g. `flock LOCK cargo build`, is no
# load).
busy() { pgrep -x rustc >/dev/null || pgrep -x cargo >/dev/null; }
IDLE_BUDGET=1200 WAITED=0 INTERFERED=0
wait_idle() {
    [[ $WAIT_IDLE == 1 ]] || return 0
    local said=0
    while busy; do
        if (( WAITED >= IDLE_BUDGET )); then
            log "WARNING: rustc/cargo still running and the 20-minute idle budget is spent; measuring anyway"
            return 0
        fi
        [[ $said == 1 ]] || log "waiting for rustc/cargo to finish before measuring"
        said=1
        sleep 15
        WAITED=$((WAITED + 15))
    done
}
# gen SCENARIO SERVER RUN ARGS... : run the generator (`smtp ARGS` for
# the scenarios smtp* and warmup-smtp*, else `pop3 ARGS`, over TLS to the
# POP3S port for pop3s-* and warmup-pop3s-*), keep its output, record
# every key=value of its RESULT line. An argument @srv@ becomes the
# server's process selection (srvsel), resolved after GEN_PRE so that it
# names a restarted server. A measured run during which rustc/cargo
# started is repeated (up to 3 attempts) after waiting for idle; GEN_PRE,
# if set, is run before every attempt (server restarts, priming).
GEN_PRE=
gen() {
    local scen=$1 srv=$2 run=$3
    shift 3
    local out=$RESULTS/$scen.$srv.$run.txt attempt rc interfered gpid i a args
    for attempt in 1 2 3; do
        wait_idle
        [[ -z $GEN_PRE ]] || $GEN_PRE
        args=()
        for a in "$@"; do
            # shellcheck disable=SC2207
            if [[ $a == @srv@ ]]; then args+=($(srvsel "$srv"))
            # rspamd's processes counted with the server's (smtp-rspamd).
            elif [[ $a == @rspamd@ ]]; then args+=(--server-tree "$RS_PID")
            else args+=("$a"); fi
        done
        [[ $srv != postoffice-pg || $scen == warmup* ]] || pg_before
        case $scen in
            smtp*|warmup-smtp*)
                "$BENCH" smtp "${args[@]}" --addr "$(addr "$srv" smtp)" >"$out" 2>&1 & ;;
            pop3s-*|warmup-pop3s-*)
                "$BENCH" pop3 "${args[@]}" --addr "$(addr "$srv" tls)" --password $PASSWORD >"$out" 2>&1 & ;;
            *)
                "$BENCH" pop3 "${args[@]}" --addr "$(addr "$srv")" --password $PASSWORD >"$out" 2>&1 & ;;
        esac
        gpid=$!
        GEN_PID=$gpid
        interfered=0 i=0
        while kill -0 "$gpid" 2>/dev/null; do
            if (( i % 5 == 0 )) && [[ $WAIT_IDLE == 1 && $scen != warmup* ]] && busy; then interfered=1; fi
            i=$((i + 1))
            sleep 0.2
        done
        rc=0
        wait "$gpid" || rc=$?
        GEN_PID=
        if [[ $interfered == 1 && $attempt -lt 3 && $WAITED -lt $IDLE_BUDGET ]]; then
            log "rustc/cargo ran during $scen on $srv (run $run); repeating it"
            continue
        fi
        break
    done
    if [[ $rc != 0 ]]; then
        log "WARNING: $scen on $srv (run $run) reported errors; see $out"
        ERRORS=$((ERRORS + 1))
    fi
    local line extra=
    line=$(grep '^RESULT ' "$out" | tail -n 1 || true)
    [[ -n $line ]] || { log "WARNING: no RESULT line in $out"; return 0; }
    if [[ $srv == postoffice-pg && $scen != warmup* ]]; then
        extra=$(pg_after "$scen" "$out" "$line")
        if [[ $scen == smtp* && $extra != *e2e_msgs_per_s=* ]]; then ERRORS=$((ERRORS + 1)); fi
    fi
    for kv in ${line#RESULT } interfered=$interfered $extra; do
        printf '%s\t%s\t%s\t%s\t%s\n' "$scen" "$srv" "$run" "${kv%%=*}" "${kv#*=}" >>"$VALUES"
    done
    [[ $interfered == 0 ]] || INTERFERED=$((INTERFERED + 1))
    printf '  %-12s %-10s run %s: %s%s\n' "$scen" "$srv" "$run" "$(summary "$line $extra")" \
        "$([[ $interfered == 0 ]] || echo ' (rustc/cargo was running)')" >&2
}
summary() {
    local l=$1 k
    for k in pg_delivered pg_stmts pg_requests sessions_per_s mb_per_s e2e_msgs_per_s accept_msgs_per_s p99_ms pss_mib held warm_median_ms first_ms median_ms tls_resumed verified peak_rss_mib hwm_mib gen_cpu_pct server_cpu_pct errors; do
        [[ $l == *" $k="* ]] && printf '%s=%s ' "$k" "$(sed -n "s/.* $k=\([^ ]*\).*/\1/p" <<<"$l")"
    done
}
# The database's side of a postoffice-pg run. pg_before: empty
# pg_stat_statements and note the requests PostgreSQL received so far (TCP
# data segments of the open connections, see pg_segs_in; postoffice's pool
# keeps its connections). pg_after SCEN OUT LINE: print key=value pairs for
# values.tsv: pg_stmts (statements executed, BEGIN and COMMIT included,
# psql's own left out), pg_begins (explicit transactions), pg_requests
# (round trips) and, for smtp, pg_delivered (messages in the SMTP users'
# maildrops; postoffice answers 250 only after COMMIT, so these are the
# end-to-end count), pg_short (of those, smaller than sent: 0 unless a
# body was cut) and e2e_msgs_per_s (= accepted per second when every
# accepted message is there). The statements of the run, most frequent
# first, go to OUT.statements.
PG_SEGS0=0
pg_before() {
    pg_sql "SELECT pg_stat_statements_reset()" >/dev/null
    PG_SEGS0=$(pg_segs_in)
}
pg_after() {
    local scen=$1 out=$2 line=$3 segs own="query NOT LIKE '%pg_stat_statements%'" acc n short
    segs=$(pg_segs_in)
    printf 'pg_requests=%s pg_stmts=%s pg_begins=%s' "$((segs - PG_SEGS0))" \
        "$(pg_sql "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE $own")" \
        "$(pg_sql "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE $own AND query ~* '^\\s*(begin|start transaction)'")"
    pg_sql "SELECT calls, rows, round(total_exec_time::numeric, 1) AS ms, regexp_replace(query, '\\s+', ' ', 'g')
        FROM pg_stat_statements WHERE $own ORDER BY calls DESC" >"$out.statements" 2>&1 || true
    if [[ $scen == smtp* ]]; then
        acc=$(sed -n 's/.* accepted=\([0-9]*\).*/\1/p' <<<"$line")
        read -r n short < <(pg_sql "SELECT count(*), count(*) FILTER (WHERE m.size < $SMTP_SIZE)
            FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id WHERE b.name LIKE '%$SMTP_DOMAIN%'" | tr '|' ' ')
        printf ' pg_delivered=%s pg_short=%s' "$n" "$short"
        if [[ $n == "$acc" && $short == 0 ]]; then
            printf ' e2e_msgs_per_s=%s' "$(sed -n 's/.* accept_msgs_per_s=\([0-9.]*\).*/\1/p' <<<"$line")"
        else
            log "WARNING: $scen on postoffice-pg: $acc accepted but $n in the database ($short shorter than sent)"
        fi
    fi
}
# median SCENARIO SERVER KEY
median() {
    awk -F'\t' -v s="$1" -v v="$2" -v k="$3" '$1==s && $2==v && $4==k {print $5}' "$VALUES" |
        sort -g | awk '{a[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'
}
SESS_USERS=(--users-file "$CORPUS/users.passwd" --users "$USERS")
# a2_users SERVER: the users of the login-a2* rows: on postoffice the
# argon2id users, on Dovecot its first A2_USERS users (SHA512-CRYPT).
a2_users() {
    if [[ $1 == postoffice ]]; then
        echo "--users-file $A2_FILE --users $A2_USERS"
    else
        echo "--users-file $CORPUS/users.passwd --users $A2_USERS"
    fi
}
# prime_logins SERVER: one login-only session per login-a2 user, so that
# postoffice's credential cache holds every one of them (Dovecot has no
# cache for passwd-file users; it gets the same sessions). Not measured.
prime_logins() {
    # shellcheck disable=SC2046
    "$BENCH" pop3 sessions $(a2_users "$1") --concurrency 8 --sessions "$A2_USERS" --retr none \
        --addr "$(addr "$1")" --password $PASSWORD >"$RESULTS/prime-logins.$1.txt" 2>&1 ||
        log "WARNING: priming the logins on $1 failed; see $RESULTS/prime-logins.$1.txt"
}
# tls_args KIND: the generator's TLS options for the KIND certificate.
tls_args() { echo "--tls --tls-ca $TLS_DIR/$1-ca.crt"; }
# order RUN [ANCHOR]: odd runs start with the anchor (default Dovecot).
# With --postgres, three servers in rotation: each is first every third
# run (pg_row SCEN: only for a run that has a postoffice-pg row).
order() {
    local a=${2:-dovecot}
    if want_pg; then
        case $(( $1 % 3 )) in
            1) echo "$a postoffice postoffice-pg" ;;
            2) echo "postoffice postoffice-pg $a" ;;
            0) echo "postoffice-pg $a postoffice" ;;
        esac
    elif (( $1 % 2 == 1 )); then echo "$a postoffice"; else echo "postoffice $a"; fi
}
# SMTP: the generator's arguments for SERVER, N messages, to the first
# RCPTS SMTP users round-robin, SIZE octets each, from CLIENTS concurrent
# clients, one message per connection (as smtp-source without -d). With
# --wait-new the run ends only when every accepted message is a file in a
# new/ under that server's Maildir root; --verify-delivered then reads every
# one back (after the clock stops).
# postoffice-pg has no Maildir to wait for: it answers 250 after COMMIT, so
# accepted is delivered; pg_after counts the messages in the database.
smtp_args() { # SERVER MESSAGES [RCPTS SIZE CLIENTS]
    local root=$F_SMTP_MAIL wait
    [[ $1 == postoffice ]] && root=$PO_SMTP_MAIL
    wait="--wait-new $root --verify-delivered"
    [[ $1 != postoffice-pg ]] || wait=
    echo "--users-file $CORPUS/smtp.passwd --users ${3:-$SMTP_USERS} --concurrency ${5:-$SMTP_C}" \
        "--messages $2 --size ${4:-$SMTP_SIZE} --per-connection 1 $wait @srv@"
}
# smtp_clear SERVER: move the mail delivered to the SMTP users out of their
# new/ into the trash (deleted when the script ends), so each run starts
# from empty Maildirs and the corpus is left as it was. Moved, not deleted:
# mass deletions slow file creation on this disk for minutes.
SMTP_TRASH=$WORK/trash/smtp-$STAMP SMTP_CLEARS=0
smtp_clear() {
    local root=$F_SMTP_MAIL dest
    if [[ $1 == postoffice-pg ]]; then
        # In the database: delete them (and keep the maildrops' totals).
        pg_sql "BEGIN; DELETE FROM messages WHERE mailbox_id IN
                    (SELECT id FROM mailboxes WHERE name LIKE '%$SMTP_DOMAIN%');
                UPDATE mailboxes SET messages = 0, bytes = 0 WHERE name LIKE '%$SMTP_DOMAIN%'; COMMIT" >/dev/null
        return
    fi
    [[ $1 == postoffice ]] && root=$PO_SMTP_MAIL
    SMTP_CLEARS=$((SMTP_CLEARS + 1))
    dest=$SMTP_TRASH/$1.$SMTP_CLEARS
    mkdir -p "$dest"
    find "$root" -mindepth 3 -maxdepth 3 -path '*/new/*' -type f -exec mv --backup=numbered -t "$dest" {} +
}

# ------------------------------------------------------------ idle machine
wait_idle
log "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB; load: $(cut -d' ' -f1-3 /proc/loadavg)"

# ------------------------------------------------------------ warm-up
log "warming up the servers (index files, page cache; for smtp every Maildir)"
if want_pop3; then
    for srv in dovecot postoffice $(want_pg && echo postoffice-pg); do
        gen warmup "$srv" 0 sessions "${SESS_USERS[@]}" --concurrency 8 --sessions "$USERS" --retr all --verify-hash
        gen warmup-bigbox "$srv" 0 bigbox --user "bigbox1@$DOMAIN" --repeat 2
        gen warmup-retrbig "$srv" 0 retr-big --user "bigmsg1@$DOMAIN" --repeat 1 --verify-hash
    done
fi
if want_a2; then
    # The argon2id users' mail into the page cache (Dovecot's first
    # A2_USERS users were read above).
    # shellcheck disable=SC2046
    gen warmup-a2 postoffice 0 sessions $(a2_users postoffice) --concurrency 8 --sessions "$A2_USERS" --retr all
fi
if want_smtp; then
    # One message per SMTP user: creates every Maildir on both servers.
    for srv in postfix postoffice $(pg_row smtp && want smtp && echo postoffice-pg); do
        GEN_PRE="smtp_clear $srv"
        # shellcheck disable=SC2046
        gen warmup-smtp "$srv" 0 $(smtp_args "$srv" "$SMTP_USERS")
        GEN_PRE=
    done
    if want smtp-rspamd; then
        # rspamd's first scans are slow (rules compiled and cached lazily):
        # a few hundred messages through each protocol, unmeasured.
        pf_milter on
        po_mode rspamd
        for srv in postfix postoffice; do
            GEN_PRE="smtp_clear $srv"
            # shellcheck disable=SC2046
            gen warmup-smtp-rspamd "$srv" 0 $(smtp_args "$srv" "$SMTP_RSPAMD_WARM")
            GEN_PRE=
        done
        pf_milter off
        po_mode default
    fi
fi
if want hold10k; then
    gen warmup-idle postoffice 0 sessions --users-file "$CORPUS/idle.passwd" --users "$BIG_HOLD_EFF" \
        --concurrency 16 --sessions "$BIG_HOLD_EFF" --retr none
fi

# ------------------------------------------------------------ scenarios
# Within each server's turn, postoffice first runs with its defaults
# (credential cache on), then restarted without the cache for the rows
# that need none, then back to the defaults.
for run in $(seq "$RUNS"); do
    log "run $run of $RUNS"
    for srv in $(order "$run"); do
        # postoffice-pg: the rows of PG_ROWS only, its credential cache off
        # for login as postoffice's.
        if [[ $srv == postoffice-pg ]]; then
            {
            q_mode default
            want s16 && gen s16 "$srv" "$run" sessions "${SESS_USERS[@]}" @srv@ \
                --concurrency "$C_LOW" --sessions "$SESSIONS" --retr all
            want hold && gen hold "$srv" "$run" hold "${SESS_USERS[@]}" @srv@ \
                --sessions "$HOLD" --seconds "$HOLD_SECS"
            want bigbox && gen bigbox "$srv" "$run" bigbox --user "bigbox1@$DOMAIN" --repeat "$((REPEAT + 1))"
            if want login; then
                q_mode nocache
                gen login "$srv" "$run" sessions "${SESS_USERS[@]}" @srv@ \
                    --concurrency "$C_LOW" --sessions "$SESSIONS" --retr none
                q_mode default
            fi
            } || true
            continue
        fi
        # shellcheck disable=SC2046
        {
        [[ $srv == dovecot ]] || po_mode default
        want s16 && gen s16 $srv $run sessions "${SESS_USERS[@]}" @srv@ \
            --concurrency $C_LOW --sessions $SESSIONS --retr all
        want s64 && gen s64 $srv $run sessions "${SESS_USERS[@]}" @srv@ \
            --concurrency $C_HIGH --sessions $SESSIONS --retr all
        want hold && gen hold $srv $run hold "${SESS_USERS[@]}" @srv@ \
            --sessions $HOLD --seconds $HOLD_SECS
        want pipeline && gen pipeline $srv $run pipeline --user "user1@$DOMAIN" \
            --count $PIPE --repeat $REPEAT
        want retrbig && gen retrbig $srv $run retr-big --user "bigmsg1@$DOMAIN" --repeat $REPEAT
        want bigbox && gen bigbox $srv $run bigbox --user "bigbox1@$DOMAIN" --repeat $((REPEAT + 1))
        # login + STAT + UIDL with a warm credential cache: every user
        # logged in once just before (both servers get the same priming).
        if want login-warm; then
            GEN_PRE="prime_logins $srv"
            gen login-warm $srv $run sessions $(a2_users $srv) @srv@ \
                --concurrency $C_LOW --sessions $SESSIONS --retr none
            GEN_PRE=
        fi
        # Cache on, starting empty: postoffice restarted just before, so
        # each user's first login verifies argon2id and the rest hit.
        if want login-a2; then
            [[ $srv == dovecot ]] || GEN_PRE=po_restart
            gen login-a2 $srv $run sessions $(a2_users $srv) @srv@ \
                --concurrency $C_LOW --sessions $SESSIONS --retr none
            GEN_PRE=
        fi
        # No credential cache on either server.
        if want_any login login-a2-nocache; then
            [[ $srv == dovecot ]] || po_mode nocache
            want login && gen login $srv $run sessions "${SESS_USERS[@]}" @srv@ \
                --concurrency $C_LOW --sessions $SESSIONS --retr none
            want login-a2-nocache && gen login-a2-nocache $srv $run sessions $(a2_users $srv) @srv@ \
                --concurrency $C_LOW --sessions $SESSIONS --retr none
            [[ $srv == dovecot ]] || po_mode default
        fi
        } || true
    done
    if want_smtp; then
        for srv in $(order "$run" postfix); do
            GEN_PRE="smtp_clear $srv"
            if [[ $srv == postoffice-pg ]]; then
                # shellcheck disable=SC2046
                { want smtp && gen smtp "$srv" "$run" $(smtp_args "$srv" "$SMTP_MSGS"); } || true
                GEN_PRE=
                continue
            fi
            # shellcheck disable=SC2046
            {
            want smtp && gen smtp "$srv" "$run" $(smtp_args "$srv" "$SMTP_MSGS")
            want smtp-hot && gen smtp-hot "$srv" "$run" $(smtp_args "$srv" "$SMTP_MSGS" 1)
            want smtp-1m && gen smtp-1m "$srv" "$run" $(smtp_args "$srv" "$SMTP_1M_MSGS" "$SMTP_USERS" "$SMTP_1M_SIZE")
            # Peak memory: RSS sampled every 50 ms (Postfix: summed over
            # its processes); postoffice's VmHWM reset before the run.
            want smtp-big && gen smtp-big "$srv" "$run" $(smtp_args "$srv" "$SMTP_BIG_C" "$SMTP_USERS" \
                "$SMTP_BIG_SIZE" "$SMTP_BIG_C") --sample-memory --retries 3 --timeout 600
            # rspamd off, then on, back to back on one server (same
            # machine load): the off row is the smtp row with rspamd's
            # idle processes counted too.
            if want smtp-rspamd; then
                if [[ $srv == postfix ]]; then pf_milter off; else po_mode default; fi
                gen smtp-rspamd-off "$srv" "$run" $(smtp_args "$srv" "$SMTP_MSGS") @rspamd@
                if [[ $srv == postfix ]]; then pf_milter on; else po_mode rspamd; fi
                gen smtp-rspamd "$srv" "$run" $(smtp_args "$srv" "$SMTP_MSGS") @rspamd@
                if [[ $srv == postfix ]]; then pf_milter off; else po_mode default; fi
            fi
            } || true
            GEN_PRE=
        done
    fi
    if want hold10k; then
        # shellcheck disable=SC2046
        gen hold10k postoffice $run hold --users-file "$CORPUS/idle.passwd" @srv@ \
            --sessions $BIG_HOLD_EFF --seconds $HOLD_SECS --connect-concurrency 64
    fi
done
if want_tls; then
    # POP3S, one certificate kind at a time on both servers. Both run their
    # defaults for credentials (Dovecot: SHA512-CRYPT at every login;
    # postoffice: the cache, warmed by the TLS warm-up below).
    for kind in $TLS_KINDS; do
        want "pop3s-$kind" || continue
        log "POP3S with the $kind certificate: restarting both servers with it"
        dovecot_mode "$kind"
        po_mode "$kind" restart
        for srv in dovecot postoffice; do
            # shellcheck disable=SC2046
            gen "warmup-pop3s-$kind" $srv 0 sessions "${SESS_USERS[@]}" $(tls_args "$kind") \
                --concurrency 8 --sessions "$USERS" --retr none
        done
        for run in $(seq "$RUNS"); do
            log "pop3s-$kind: run $run of $RUNS"
            for srv in $(order "$run"); do
                [[ $srv != postoffice-pg ]] || continue
                # shellcheck disable=SC2046
                {
                gen "pop3s-$kind-retr" $srv $run sessions "${SESS_USERS[@]}" @srv@ $(tls_args "$kind") \
                    --concurrency $C_LOW --sessions $SESSIONS --retr all
                gen "pop3s-$kind-retr-resume" $srv $run sessions "${SESS_USERS[@]}" @srv@ $(tls_args "$kind") \
                    --tls-resume --concurrency $C_LOW --sessions $SESSIONS --retr all
                gen "pop3s-$kind-login" $srv $run sessions "${SESS_USERS[@]}" @srv@ $(tls_args "$kind") \
                    --concurrency $C_LOW --sessions $SESSIONS --retr none
                gen "pop3s-$kind-login-resume" $srv $run sessions "${SESS_USERS[@]}" @srv@ $(tls_args "$kind") \
                    --tls-resume --concurrency $C_LOW --sessions $SESSIONS --retr none
                } || true
            done
        done
    done
    dovecot_mode plain
    po_mode default
fi
if want bigbox-first; then
    # The first login after a server restart (and, where allowed, with the
    # kernel's page cache dropped): what a cold start costs.
    restart_dovecot() { stop_dovecot; drop_caches; start_dovecot; }
    restart_postoffice() { stop_postoffice; drop_caches; start_postoffice; }
    for run in $(seq "$RUNS"); do
        for srv in $(order "$run"); do
            [[ $srv != postoffice-pg ]] || continue
            GEN_PRE=restart_$srv
            gen bigbox-first $srv $run bigbox --user "bigbox1@$DOMAIN" --repeat 1
            GEN_PRE=
        done
    done
fi
if want_smtp; then
    # Leave the SMTP users' Maildirs empty, as the corpus was.
    smtp_clear postfix
    smtp_clear postoffice
    if want_pg; then smtp_clear postoffice-pg; fi
fi

# ------------------------------------------------------------ table
num() { [[ $1 != - ]]; }
fmt() { # value decimals
    if num "$1"; then printf "%.${2}f" "$1"; else printf -- '-'; fi
}
ratio() { # numerator denominator
    if num "$1" && num "$2" && awk -v b="$2" 'BEGIN {exit !(b > 0)}'; then
        awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'
    else printf -- '-'; fi
}
sess_cell() { # scen srv
    local s=$1 v=$2 ok cpu
    ok=$(median "$s" "$v" ok)
    num "$ok" || { printf -- '-'; return; }
    cpu=$(awk -v c="$(median "$s" "$v" server_cpu_s)" -v n="$ok" 'BEGIN {if (n > 0) printf "%.2f", c * 1000 / n}')
    printf '%s sess/s' "$(fmt "$(median "$s" "$v" sessions_per_s)" 1)"
    [[ $s == *login* ]] || printf ', %s MB/s' "$(fmt "$(median "$s" "$v" mb_per_s)" 0)"
    printf ', p99 %s ms, server %s ms CPU/sess' "$(fmt "$(median "$s" "$v" p99_ms)" 0)" "$cpu"
    # Resumption rows: how many sessions the server actually resumed.
    [[ $s != *-resume ]] || printf ', %s of %s resumed' "$(fmt "$(median "$s" "$v" tls_resumed)" 0)" "$(fmt "$ok" 0)"
}
gen_cpu() { # scen key [anchor]: the generator's CPU on the anchor (D, or F
    # for Postfix) and on postoffice (P)
    local a=${3:-dovecot} d p l=D
    [[ $a != postfix ]] || l=F
    d=$(median "$1" "$a" "$2") p=$(median "$1" postoffice "$2")
    if [[ $2 == gen_cpu_pct ]]; then
        printf '%s %s%% / P %s%% of a core' "$l" "$(fmt "$d" 0)" "$(fmt "$p" 0)"
    else
        printf '%s %s s / P %s s' "$l" "$(fmt "$d" 2)" "$(fmt "$p" 2)"
    fi
}
smtp_cpu() { # scen srv: server ms CPU per accepted message
    awk -v c="$(median "$1" "$2" server_cpu_s)" -v n="$(median "$1" "$2" accepted)" \
        'BEGIN {if (n > 0) printf "%.2f", c * 1000 / n; else printf "-"}'
}
smtp_cell() { # scen srv
    local n
    n=$(median "$1" "$2" accepted)
    num "$n" || { printf -- '-'; return; }
    printf '%s msgs/s end to end (%s msgs/s accepted), p99 %s ms, server %s ms CPU/msg' \
        "$(fmt "$(median "$1" "$2" e2e_msgs_per_s)" 1)" "$(fmt "$(median "$1" "$2" accept_msgs_per_s)" 1)" \
        "$(fmt "$(median "$1" "$2" p99_ms)" 0)" "$(smtp_cpu "$1" "$2")"
}
# smtp-big: the peak memory, then the rest. postoffice: VmHWM (reset
# before the run); Postfix: the peak of the RSS summed over its processes
# (sampled every 50 ms), which counts shared pages once per process: the
# PSS peak (sampled every 150 ms) beside it divides them fairly.
big_peak() { # srv
    local h r
    h=$(median smtp-big "$1" hwm_mib) r=$(median smtp-big "$1" peak_rss_mib)
    # postoffice: VmHWM, or the sampled peak where that is higher (the
    # kernel's RSS counters are batched per CPU, a few hundred KiB apart).
    if [[ $1 == postoffice ]] && num "$h"; then
        awk -v h="$h" -v r="$r" 'BEGIN {print (r != "-" && r > h) ? r : h}'
    else
        echo "$r"
    fi
}
big_cell() { # srv
    local n m=smtp-big
    n=$(median $m "$1" accepted)
    num "$n" || { printf -- '-'; return; }
    if [[ $1 == postoffice ]] && num "$(median $m "$1" hwm_mib)"; then
        printf 'peak RSS %s MiB (VmHWM), PSS %s MiB; before: RSS %s, PSS %s MiB' "$(fmt "$(big_peak "$1")" 0)" \
            "$(fmt "$(median $m "$1" peak_pss_mib)" 0)" "$(fmt "$(median $m "$1" rss_before_mib)" 0)" \
            "$(fmt "$(median $m "$1" pss_before_mib)" 0)"
    else
        printf 'peak RSS %s MiB summed over %s processes, PSS %s MiB; before: RSS %s, PSS %s MiB' \
            "$(fmt "$(big_peak "$1")" 0)" "$(fmt "$(median $m "$1" peak_processes)" 0)" \
            "$(fmt "$(median $m "$1" peak_pss_mib)" 0)" "$(fmt "$(median $m "$1" rss_before_mib)" 0)" \
            "$(fmt "$(median $m "$1" pss_before_mib)" 0)"
    fi
    printf '; %s of %s accepted, %s msgs/s end to end, server %s ms CPU/msg' "$(fmt "$n" 0)" "$SMTP_BIG_C" \
        "$(fmt "$(median $m "$1" e2e_msgs_per_s)" 2)" "$(smtp_cpu $m "$1")"
}
# --postgres: three more columns, postoffice-pg's cell, its ratio to the
# anchor, and the database's work per unit (session, login, message):
# statements, requests (round trips) and explicit transactions.
pg_db() { # scen units
    local u=$2
    if ! num "$u" || ! awk -v u="$u" 'BEGIN {exit !(u > 0)}'; then printf -- '-'; return; fi
    awk -v s="$(median "$1" postoffice-pg pg_stmts)" -v r="$(median "$1" postoffice-pg pg_requests)" \
        -v b="$(median "$1" postoffice-pg pg_begins)" -v u="$u" \
        'BEGIN {printf "%.2f statements, %.2f round trips, %.2f BEGIN", s / u, r / u, b / u}'
}
pgcols() { # kind scen
    want_pg || return 0
    local s=${2:-} q
    case $1 in
        none) printf ' - | - | - |' ;;
        sess) printf ' %s | %s (Q/D sess/s) | per session: %s |' "$(sess_cell "$s" postoffice-pg)" \
            "$(ratio "$(median "$s" postoffice-pg sessions_per_s)" "$(median "$s" dovecot sessions_per_s)")" \
            "$(pg_db "$s" "$(median "$s" postoffice-pg ok)")" ;;
        hold) printf ' %s | %s (D/Q PSS) | per session: %s |' "$(hold_cell hold postoffice-pg)" \
            "$(ratio "$(median hold dovecot pss_mib)" "$(median hold postoffice-pg pss_mib)")" \
            "$(pg_db hold "$(median hold postoffice-pg held)")" ;;
        bigbox) q=$(median bigbox postoffice-pg warm_median_ms)
            printf ' %s ms | %s (D/Q time) | per login: %s |' "$(fmt "$q" 1)" \
                "$(ratio "$(median bigbox dovecot warm_median_ms)" "$q")" "$(pg_db bigbox $((REPEAT + 1)))" ;;
        smtp) printf ' %s; %s of %s accepted in the database | %s (Q/F msgs/s) | per message: %s |' \
            "$(smtp_cell "$s" postoffice-pg)" "$(fmt "$(median "$s" postoffice-pg pg_delivered)" 0)" \
            "$(fmt "$(median "$s" postoffice-pg accepted)" 0)" \
            "$(ratio "$(median "$s" postoffice-pg e2e_msgs_per_s)" "$(median "$s" postfix e2e_msgs_per_s)")" \
            "$(pg_db "$s" "$(median "$s" postoffice-pg accepted)")" ;;
    esac
}
TABLE=$RESULTS/table.md
{
    # The anchor is Dovecot for the POP3 rows and Postfix for the SMTP rows.
    if want_pg; then
        echo "| scenario | anchor median (Dovecot; SMTP: Postfix) | postoffice median | ratio (>1 = postoffice better) | generator CPU | postoffice-pg median (PostgreSQL backend; CPU and memory include PostgreSQL's) | ratio postoffice-pg (>1 = better) | database work |"
        echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
    else
        echo "| scenario | anchor median (Dovecot; SMTP: Postfix) | postoffice median | ratio (>1 = postoffice better) | generator CPU |"
        echo "| --- | --- | --- | --- | --- |"
    fi
    rows="s16 s64 login login-a2 login-a2-nocache login-warm"
    for kind in $TLS_KINDS; do
        want "pop3s-$kind" && rows+=" pop3s-$kind-retr pop3s-$kind-retr-resume pop3s-$kind-login pop3s-$kind-login-resume"
    done
    for s in $rows; do
        [[ $s == pop3s-* ]] || want "$s" || continue
        case $s in
            s16) label="Sessions, RETR all, concurrency $C_LOW ($SESSIONS sessions)" ;;
            s64) label="Sessions, RETR all, concurrency $C_HIGH ($SESSIONS sessions)" ;;
            login) label="Login only (USER/PASS, STAT, UIDL), concurrency $C_LOW; SHA512-CRYPT, no credential cache on either" ;;
            login-a2) label="Login only, $A2_USERS users, c$C_LOW; postoffice: argon2id, credential cache on, empty at the start (restart); Dovecot: SHA512-CRYPT, defaults" ;;
            login-a2-nocache) label="Login only, $A2_USERS users, c$C_LOW; postoffice: argon2id, credential cache off; Dovecot: SHA512-CRYPT, defaults" ;;
            login-warm) label="Login + STAT + UIDL, $A2_USERS users, c$C_LOW; postoffice: argon2id, credential cache warm; Dovecot: SHA512-CRYPT, defaults" ;;
            pop3s-*)
                kind=${s#pop3s-} kind=${kind%%-*}
                [[ $kind == rsa ]] && k="RSA-2048" || k="ECDSA P-256"
                case $s in
                    *-retr) label="POP3S ($k), RETR all, c$C_LOW, full handshake per session" ;;
                    *-retr-resume) label="POP3S ($k), RETR all, c$C_LOW, returning clients resume" ;;
                    *-login) label="POP3S ($k), login only, c$C_LOW, full handshake per session" ;;
                    *-login-resume) label="POP3S ($k), login only, c$C_LOW, returning clients resume" ;;
                esac ;;
        esac
        if pg_row "$s"; then k=sess; else k=none; fi
        echo "| $label | $(sess_cell $s dovecot) | $(sess_cell $s postoffice) | $(ratio "$(median $s postoffice sessions_per_s)" "$(median $s dovecot sessions_per_s)") (P/D sess/s) | $(gen_cpu $s gen_cpu_pct) |$(pgcols "$k" "$s")"
    done
    hold_cell() { # scen srv
        printf '%s MiB PSS (%s MiB before the sessions, +%s KiB/session; RSS %s MiB, %s processes)' \
            "$(fmt "$(median "$1" "$2" pss_mib)" 1)" "$(fmt "$(median "$1" "$2" pss_before_mib)" 1)" \
            "$(fmt "$(median "$1" "$2" pss_per_session_kib)" 1)" "$(fmt "$(median "$1" "$2" rss_mib)" 0)" \
            "$(fmt "$(median "$1" "$2" server_processes)" 0)"
    }
    if want hold; then
        d=$(median hold dovecot pss_mib) p=$(median hold postoffice pss_mib)
        echo "| $HOLD idle logged-in sessions: server memory while held | $(hold_cell hold dovecot) | $(hold_cell hold postoffice) | $(ratio "$d" "$p") (D/P PSS) | $(gen_cpu hold gen_cpu_s) |$(pgcols hold)"
    fi
    if want hold10k; then
        echo "| $BIG_HOLD_EFF idle logged-in sessions (postoffice only; fd limit $NOFILE) | - | $(hold_cell hold10k postoffice) | - | P $(fmt "$(median hold10k postoffice gen_cpu_s)" 2) s |$(pgcols none)"
    fi
    if want bigbox; then
        d=$(median bigbox dovecot warm_median_ms) p=$(median bigbox postoffice warm_median_ms)
        echo "| Big maildrop ($BIGBOX messages): login+STAT+UIDL, warm | $(fmt "$d" 1) ms | $(fmt "$p" 1) ms | $(ratio "$d" "$p") (D/P time) | - |$(pgcols bigbox)"
    fi
    if want bigbox-first; then
        d=$(median bigbox-first dovecot first_ms) p=$(median bigbox-first postoffice first_ms)
        c=""; [[ $CAN_DROP == 1 ]] && c=", page cache dropped"
        echo "| Big maildrop: first login after server restart$c | $(fmt "$d" 1) ms | $(fmt "$p" 1) ms | $(ratio "$d" "$p") (D/P time) | - |$(pgcols none)"
    fi
    if want pipeline; then
        d=$(median pipeline dovecot median_ms) p=$(median pipeline postoffice median_ms)
        echo "| $PIPE pipelined \`LIST 1\` in one write | $(fmt "$d" 2) ms | $(fmt "$p" 2) ms | $(ratio "$d" "$p") (D/P time) | - |$(pgcols none)"
    fi
    if want retrbig; then
        d=$(median retrbig dovecot mb_per_s) p=$(median retrbig postoffice mb_per_s)
        echo "| RETR of one $((BIGMSG / 1024 / 1024)) MiB message | $(fmt "$d" 0) MB/s | $(fmt "$p" 0) MB/s | $(ratio "$p" "$d") (P/D MB/s) | $(gen_cpu retrbig gen_cpu_pct) |$(pgcols none)"
    fi
    for s in smtp smtp-hot smtp-1m; do
        want "$s" || continue
        case $s in
            smtp) label="SMTP $((SMTP_SIZE / 1024)) KB, c$SMTP_C, end-to-end msgs/s ($SMTP_MSGS messages to $SMTP_USERS recipients, one per connection, fsynced; anchor: Postfix)" ;;
            smtp-hot) label="SMTP $((SMTP_SIZE / 1024)) KB, c$SMTP_C, end-to-end msgs/s ($SMTP_MSGS messages, all to one recipient; anchor: Postfix)" ;;
            smtp-1m) label="SMTP 1 MiB, c$SMTP_C, end-to-end msgs/s ($SMTP_1M_MSGS messages to $SMTP_USERS recipients; anchor: Postfix)" ;;
        esac
        f=$(median $s postfix e2e_msgs_per_s) p=$(median $s postoffice e2e_msgs_per_s)
        if pg_row "$s"; then k=smtp; else k=none; fi
        echo "| $label | Postfix: $(smtp_cell $s postfix) | $(smtp_cell $s postoffice) | $(ratio "$p" "$f") (P/F msgs/s) | $(gen_cpu $s gen_cpu_pct postfix) |$(pgcols "$k" "$s")"
    done
    if want smtp-rspamd; then
        for s in smtp-rspamd-off smtp-rspamd; do
            case $s in
                smtp-rspamd-off) label="SMTP $((SMTP_SIZE / 1024)) KB, c$SMTP_C, $SMTP_MSGS messages to $SMTP_USERS recipients, rspamd off (run beside the next row; CPU includes rspamd's idle processes; anchor: Postfix)" ;;
                smtp-rspamd) label="The same with every message scored by rspamd $(rspamd --version 2>/dev/null | awk '{print $NF}') (Debian rules, no Redis): postoffice over HTTP /checkv2, Postfix through rspamd's milter (proxy worker, self_scan, unix socket); CPU includes rspamd's" ;;
            esac
            f=$(median $s postfix e2e_msgs_per_s) p=$(median $s postoffice e2e_msgs_per_s)
            echo "| $label | Postfix: $(smtp_cell $s postfix) | $(smtp_cell $s postoffice) | $(ratio "$p" "$f") (P/F msgs/s) | $(gen_cpu $s gen_cpu_pct postfix) |$(pgcols none)"
        done
    fi
    if want smtp-big; then
        echo "| SMTP $SMTP_BIG_C concurrent $((SMTP_BIG_SIZE / 1024 / 1024)) MiB messages: the server's peak memory (anchor: Postfix) | Postfix: $(big_cell postfix) | $(big_cell postoffice) | $(ratio "$(big_peak postfix)" "$(big_peak postoffice)") (F/P peak RSS) | $(gen_cpu smtp-big gen_cpu_pct postfix) |$(pgcols none)"
    fi
} >"$TABLE"

{
    echo
    echo "postoffice vs. Dovecot $(dovecot --version | cut -d' ' -f1)$(want_smtp && echo " and Postfix $(postconf -dh mail_version)"), $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB,"
    echo "postoffice $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), medians of $RUNS run(s); corpus $USERS users x $MSGS messages."
    if want_pg; then
        echo "postoffice-pg: the same binary with [storage] backend = \"postgres\" on $(pg_sql "SHOW server_version" 2>/dev/null | cut -d' ' -f1 | sed 's/^/PostgreSQL /') (settings: $RESULTS/postgres-settings.txt)."
    fi
    echo
    cat "$TABLE"
    echo
    echo "Raw results: $RESULTS (values.tsv, one file per run)."
    if [[ $ERRORS -gt 0 ]]; then echo "WARNING: $ERRORS generator run(s) reported errors; see the files above."; fi
    if [[ $INTERFERED -gt 0 ]]; then echo "NOTE: rustc/cargo was running during $INTERFERED measured run(s) even after repeats (interfered=1 in values.tsv)."; fi
    echo "Waited $WAITED s for an idle machine."

}
[[ $ERRORS -eq 0 ]]
