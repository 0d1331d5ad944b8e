#!/usr/bin/env bash
# Smoke test of the benchmark harness against a real postoffice server.
#
#   bench/smoke.sh PATH/TO/postoffice PATH/TO/postoffice-bench
#
# Builds nothing (pass the debug binaries CI already built). Seeds a tiny
# corpus (20 users x 5 messages, plus a 1 MB message), imports the users
# from a Dovecot passwd-file, starts postoffice on an ephemeral loopback
# port, and runs every POP3 mode of the generator with verification:
# a few hundred sessions (RETR all, every body hashed and its octet count
# checked against LIST), login-only sessions, held idle sessions, a big-box
# login, 1,000 pipelined commands and a big RETR; POP3S sessions with full
# handshakes and with resumption (the server's self-signed certificate as
# the trust anchor); then messages over SMTP (many recipients, one hot
# recipient, a few large ones with the server's peak RSS), each counted as
# a file in a maildrop's new/ and read back byte for byte. Fails on any
# error or mismatch; asserts nothing about timing. Stops the server it
# started.
set -euo pipefail

if [[ $# -ne 2 ]]; then
    echo "usage: $0 POSTOFFICE_BIN POSTOFFICE_BENCH_BIN" >&2
    exit 64
fi
PO=$(realpath "$1")
BENCH=$(realpath "$2")
for b in "$PO" "$BENCH"; do
    [[ -x $b ]] || { echo "smoke: $b is not an executable" >&2; exit 64; }
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/postoffice-bench-smoke.XXXXXX")
SERVER_PID=
cleanup() {
    local rc=$?
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    if [[ $rc -ne 0 ]]; then
        echo "smoke: FAILED (rc=$rc); server log follows" >&2
        tail -n 30 "$TMP/server.log" >&2 2>/dev/null || true
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT

step() { echo "smoke: $*"; }

step "seeding 20 users x 5 messages and one 1 MB message in $TMP"
"$BENCH" seed --dir "$TMP/data" --users 20 --messages 5 \
    --passwd-file "$TMP/users.passwd" --password smokepass >/dev/null
"$BENCH" seed --dir "$TMP/data" --users 1 --messages 1 --user-prefix bigmsg \
    --sizes 1048576 --passwd-file "$TMP/bigmsg.passwd" --password smokepass >/dev/null
cat "$TMP/users.passwd" "$TMP/bigmsg.passwd" >"$TMP/all.passwd"

cat >"$TMP/postoffice.toml" <<EOF
data_dir = "data"
hostname = "smoke.test"
[pop3]
listen = ["127.0.0.1:0"]
listen_tls = ["127.0.0.1:0"]
[limits]
max_connections = 1000
max_connections_per_ip = 1000
[log]
level = "warn"
EOF
# SMTP on an ephemeral loopback port for the smtp mode, with the DNS-based
# checks off (no network); no submission listeners.
cat >>"$TMP/postoffice.toml" <<EOF
[smtp]
listen = ["127.0.0.1:0"]
[submission]
listen = []
listen_tls = []
[http]
listen = []
[filter]
spf = "off"
dkim = "off"
dmarc = "off"
EOF
"$PO" --config "$TMP/postoffice.toml" user import --dovecot-passwd "$TMP/all.passwd" >/dev/null

step "starting postoffice"
"$PO" --config "$TMP/postoffice.toml" serve >"$TMP/server.out" 2>"$TMP/server.log" &
SERVER_PID=$!
ADDR=
for _ in $(seq 200); do
    ADDR=$(sed -n 's/^  POP3   \([0-9.]*:[0-9]*\) .*/\1/p' "$TMP/server.out" | head -n 1)
    [[ -n $ADDR ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "smoke: server exited" >&2; exit 1; }
    sleep 0.1
done
[[ -n $ADDR ]] || { echo "smoke: server did not report its address" >&2; exit 1; }
SMTP_ADDR=$(sed -n 's/^  SMTP   \([0-9.]*:[0-9]*\) .*/\1/p' "$TMP/server.out" | head -n 1)
[[ -n $SMTP_ADDR ]] || { echo "smoke: server did not report its SMTP address" >&2; exit 1; }
TLS_ADDR=$(sed -n 's/^  POP3S  \([0-9.]*:[0-9]*\) .*/\1/p' "$TMP/server.out" | head -n 1)
[[ -n $TLS_ADDR ]] || { echo "smoke: server did not report its POP3S address" >&2; exit 1; }
# Without [tls] cert/key the server generated a self-signed certificate
# (names: the hostname, localhost, 127.0.0.1): the clients' trust anchor.
CERT=$TMP/data/tls/cert.pem
[[ -s $CERT ]] || { echo "smoke: no generated certificate in $CERT" >&2; exit 1; }
step "postoffice (pid $SERVER_PID) listens on $ADDR (POP3), $TLS_ADDR (POP3S) and $SMTP_ADDR (SMTP)"

COMMON=(--addr "$ADDR" --password smokepass --timeout 60)
USERS=(--user-pattern 'user{n}@bench.test' --users 20)

# Every generator run must exit 0 (no error, every check matched) and
# report errors=0; both are checked. The RESULT line is kept in $LAST.
LAST=
run() {
    local out
    out=$("$BENCH" "$@") || { echo "$out"; echo "smoke: generator failed: $*" >&2; return 1; }
    echo "$out" | sed 's/^/    /'
    grep -q '^RESULT .* errors=0' <<<"$out" || { echo "smoke: errors reported: $*" >&2; return 1; }
    LAST=$(grep '^RESULT ' <<<"$out" | tail -n 1)
}
# expect KEY=VALUE...: the last RESULT line has each of them.
expect() {
    local kv
    for kv in "$@"; do
        [[ " $LAST " == *" $kv "* ]] || { echo "smoke: expected $kv in: $LAST" >&2; return 1; }
    done
}
# has KEY...: the last RESULT line has each key (any value).
has() {
    local k
    for k in "$@"; do
        [[ " $LAST" == *" $k="* ]] || { echo "smoke: expected $k= in: $LAST" >&2; return 1; }
    done
}

step "250 sessions, RETR all, hashes verified, concurrency 8"
run pop3 sessions "${COMMON[@]}" "${USERS[@]}" --concurrency 8 --sessions 250 \
    --retr all --verify-hash --server-pids "$SERVER_PID"
step "100 login-only sessions (STAT + UIDL), concurrency 20"
run pop3 sessions "${COMMON[@]}" "${USERS[@]}" --concurrency 20 --sessions 100 --retr none
step "20 idle sessions held 1 s"
run pop3 hold "${COMMON[@]}" "${USERS[@]}" --sessions 20 --seconds 1 --server-pids "$SERVER_PID"
step "bigbox login (user1, 5 messages), 3 times"
run pop3 bigbox "${COMMON[@]}" --user user1@bench.test --repeat 3
step "1,000 pipelined LIST 1"
run pop3 pipeline "${COMMON[@]}" --user user2@bench.test --count 1000 --repeat 2
step "RETR of a 1 MB message, hash verified"
run pop3 retr-big "${COMMON[@]}" --user bigmsg1@bench.test --repeat 2 --verify-hash
step "20 sessions with DELE of the first message, then a verified RETR-all pass"
run pop3 sessions "${COMMON[@]}" "${USERS[@]}" --concurrency 5 --sessions 20 --retr 1 --dele
run pop3 sessions "${COMMON[@]}" "${USERS[@]}" --concurrency 5 --sessions 40 --retr all --verify-hash

step "POP3S: 40 sessions, RETR all, hashes verified, a full handshake each"
TLS=(--addr "$TLS_ADDR" --password smokepass --timeout 60 --tls --tls-ca "$CERT")
run pop3 sessions "${TLS[@]}" "${USERS[@]}" --concurrency 8 --sessions 40 --retr all --verify-hash
expect ok=40 tls_resume=0 tls_full=40 tls_resumed=0
step "POP3S: 60 login-only sessions of returning clients, every one resumed"
run pop3 sessions "${TLS[@]}" "${USERS[@]}" --concurrency 8 --sessions 60 --retr none --tls-resume
expect ok=60 tls_resume=1 tls_full=0 tls_resumed=60
step "POP3S: a certificate for another name is refused"
if "$BENCH" pop3 sessions "${TLS[@]}" --tls-server-name other.invalid "${USERS[@]}" \
    --concurrency 1 --sessions 1 --retr none >"$TMP/tlsneg.out" 2>&1; then
    echo "smoke: a certificate for the wrong name was accepted" >&2
    exit 1
fi
grep -q 'err_tls=1' "$TMP/tlsneg.out" || { cat "$TMP/tlsneg.out"; exit 1; }

step "SMTP: 300 messages of 10 KB to 20 users, concurrency 8, each counted in new/ and read back"
run smtp --addr "$SMTP_ADDR" "${USERS[@]}" --concurrency 8 --messages 300 --size 10240 \
    --per-connection 3 --wait-new "$TMP/data/mail" --wait-timeout 60 --server-pids "$SERVER_PID" \
    --verify-delivered
expect accepted=300 verified=300
step "SMTP: 100 messages to one hot recipient, concurrency 8, read back"
run smtp --addr "$SMTP_ADDR" --user-pattern 'user{n}@bench.test' --users 1 --first-user 7 \
    --concurrency 8 --messages 100 --size 10240 --wait-new "$TMP/data/mail" --wait-timeout 60 \
    --server-pids "$SERVER_PID" --verify-delivered
expect accepted=100 verified=100
step "SMTP: 4 concurrent 3 MiB messages, server RSS sampled, read back"
run smtp --addr "$SMTP_ADDR" "${USERS[@]}" --concurrency 4 --messages 4 --size 3145728 \
    --wait-new "$TMP/data/mail" --wait-timeout 60 --server-pids "$SERVER_PID" \
    --verify-delivered --sample-memory --retries 3
expect accepted=4 verified=4 hwm_reset=1
has peak_rss_mib hwm_mib rss_before_mib
step "the SMTP-delivered messages are retrievable: RETR-all pass with octet checks"
run pop3 sessions "${COMMON[@]}" "${USERS[@]}" --concurrency 5 --sessions 20 --retr all

# A wrong password must be reported as an error (the harness must not
# silently count failures as successes).
step "a wrong password is detected"
if "$BENCH" pop3 sessions --addr "$ADDR" --password wrong --timeout 60 "${USERS[@]}" \
    --concurrency 1 --sessions 1 --retr none >"$TMP/neg.out" 2>&1; then
    echo "smoke: a failing login was not reported" >&2
    exit 1
fi
grep -q 'err_auth=1' "$TMP/neg.out" || { cat "$TMP/neg.out"; exit 1; }

step "stopping postoffice"
kill -TERM "$SERVER_PID"
wait "$SERVER_PID" || { echo "smoke: server exited with an error" >&2; exit 1; }
SERVER_PID=
echo "smoke: OK"
