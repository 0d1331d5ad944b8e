# shellcheck shell=bash
# A private rspamd for the smtp-rspamd scenario of bench/compare.sh: one
# instance serving both servers, postoffice over HTTP (/checkv2 of the
# normal worker) and Postfix over the milter protocol (the rspamd_proxy
# worker in milter mode, scanning itself: self_scan). Sourced by
# compare.sh after bench/postfix.sh (which provides log, die, wait_port).
#
#   install_rspamd                           Debian's rspamd and dnsmasq
#   setup_rspamd WORK HTTP_PORT MILTER_PORT DNS_PORT
#                                            config under WORK/rspamd
#   start_rspamd / stop_rspamd               pids in RS_PID and RS_DNS_PID
#
# The configuration is Debian's (every module and rule of
# /etc/rspamd/common.conf, so the scan costs what a real one costs) with
# a private local.d: its own database and run directories, no Redis (the
# modules that need it stay off: Bayes, ratelimit, greylisting, replies,
# neural), fuzzy_check off (it would query rspamd.com), and DNS sent to a
# private dnsmasq on loopback that answers NXDOMAIN to every name, so
# that RBL, SPF, DKIM and DMARC lookups are fast and nothing leaves the
# machine. Actions are raised out of reach (add_header, rewrite_subject,
# reject at 1000; no greylist): every message is accepted on both sides,
# so the scenario measures the cost of the scan, not the policy.

RS_PID='' RS_DNS_PID='' RS_DIR='' RS_HTTP_PORT='' RS_MILTER_PORT='' RS_DNS_PORT=''
# The milter's socket: a unix socket, $RS_DIR/run/milter.sock (default),
# or TCP on 127.0.0.1:RS_MILTER_PORT with RS_MILTER_SOCKET=tcp. Over TCP
# loopback the milter exchange stalls ~50 ms per message (one client:
# 63 ms per message over TCP, 9.6 over the unix socket, 2026-12-05; small
# writes waiting on delayed ACKs, by the look of it). RS_MILTER is what
# Postfix's smtpd_milters takes.
RS_MILTER=''

install_rspamd() {
    if command -v rspamd >/dev/null && [[ -x /usr/sbin/dnsmasq ]]; then
        return
    fi
    log "installing rspamd and dnsmasq from Debian (system instances not started)"
    local own_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rspamd dnsmasq >/dev/null
    [[ $own_policy == 0 ]] || rm -f /usr/sbin/policy-rc.d
}

# setup_rspamd WORK HTTP_PORT MILTER_PORT DNS_PORT
setup_rspamd() {
    RS_DIR=$1/rspamd RS_HTTP_PORT=$2 RS_MILTER_PORT=$3 RS_DNS_PORT=$4
    local workers
    # One worker per core for each protocol (the other is idle while one
    # server is measured).
    workers=$(nproc)
    local milter_bind
    if [[ ${RS_MILTER_SOCKET:-unix} == unix ]]; then
        # Postfix's smtpd (user postfix) connects: world-writable socket.
        milter_bind="$RS_DIR/run/milter.sock mode=0666"
        RS_MILTER="unix:$RS_DIR/run/milter.sock"
    else
        milter_bind="127.0.0.1:$RS_MILTER_PORT"
        RS_MILTER="inet:127.0.0.1:$RS_MILTER_PORT"
    fi
    mkdir -p "$RS_DIR/local.d" "$RS_DIR/db" "$RS_DIR/run"
    cat >"$RS_DIR/rspamd.conf" <<CONF
# Private rspamd for bench/compare.sh (written by bench/rspamd.sh): Debian's
# rules and modules, this directory's local.d, two workers on loopback.
.include "\$CONFDIR/common.conf"
options {
    pidfile = "$RS_DIR/run/rspamd.pid";
    .include "\$CONFDIR/options.inc"
    .include(try=true; priority=1,duplicate=merge) "$RS_DIR/local.d/options.inc"
}
logging {
    type = "file";
    filename = "$RS_DIR/rspamd.log";
    level = "warning";
}
# HTTP protocol (/checkv2): postoffice's [filter] rspamd.
worker "normal" {
    bind_socket = "127.0.0.1:$RS_HTTP_PORT";
    .include "\$CONFDIR/worker-normal.inc"
    count = $workers;
}
# Milter protocol: Postfix's smtpd_milters. The proxy scans the message
# itself (self_scan) with the same rules as the normal worker.
worker "rspamd_proxy" {
    bind_socket = "$milter_bind";
    milter = yes;
    timeout = 120s;
    upstream "local" {
        default = yes;
        self_scan = yes;
    }
    count = $workers;
}
CONF
    cat >"$RS_DIR/local.d/options.inc" <<CONF
# Every lookup goes to the private dnsmasq (NXDOMAIN for every name).
dns {
    nameserver = ["127.0.0.1:$RS_DNS_PORT"];
    timeout = 1s;
    retransmits = 1;
}
# The clients are 127.0.0.1: not "local", so they are scanned in full.
local_addrs = [];
CONF
    echo 'enabled = false; # would query rspamd.com' >"$RS_DIR/local.d/fuzzy_check.conf"
    # Inbound scanning only: no DKIM signing of the loopback clients' mail.
    echo 'enabled = false;' >"$RS_DIR/local.d/dkim_signing.conf"
    cat >"$RS_DIR/local.d/actions.conf" <<CONF
# Out of reach: every bench message is accepted by both servers.
reject = 1000;
add_header = 1000;
rewrite_subject = 1000;
greylist = null;
CONF
}

# start_rspamd: dnsmasq, then rspamd in the foreground of a background
# job (its pid is the main process); waits until both workers listen
# (rspamd compiles its rules first: several seconds).
start_rspamd() {
    /usr/sbin/dnsmasq --keep-in-foreground --no-resolv --no-hosts --port="$RS_DNS_PORT" \
        --listen-address=127.0.0.1 --bind-interfaces --address=/#/ \
        --pid-file="$RS_DIR/run/dnsmasq.pid" --log-facility="$RS_DIR/dnsmasq.log" \
        >>"$RS_DIR/dnsmasq.out" 2>&1 &
    RS_DNS_PID=$!
    rspamd -f -i -c "$RS_DIR/rspamd.conf" --var=LOCAL_CONFDIR="$RS_DIR" --var=DBDIR="$RS_DIR/db" \
        --var=RUNDIR="$RS_DIR/run" >>"$RS_DIR/rspamd.out" 2>&1 &
    RS_PID=$!
    local p
    local ports=("$RS_HTTP_PORT")
    [[ $RS_MILTER != inet:* ]] || ports+=("$RS_MILTER_PORT")
    for p in "${ports[@]}"; do
        # wait_port allows 30 s; rspamd may need longer on a loaded machine.
        wait_port "$p" "$RS_PID" || wait_port "$p" "$RS_PID" || wait_port "$p" "$RS_PID" ||
            die "rspamd is not listening on $p (see $RS_DIR/rspamd.log, $RS_DIR/rspamd.out)"
    done
    if [[ $RS_MILTER == unix:* ]]; then
        for _ in $(seq 300); do [[ -S ${RS_MILTER#unix:} ]] && break; sleep 0.1; done
        [[ -S ${RS_MILTER#unix:} ]] || die "rspamd did not create ${RS_MILTER#unix:}"
    fi
}

# stop_rspamd: TERM rspamd's main process (it stops its workers) and
# dnsmasq, by pid; bounded waits, then KILL.
stop_rspamd() {
    [[ -n $RS_PID$RS_DNS_PID ]] || return 0
    local pid
    for pid in $RS_PID $RS_DNS_PID; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in $RS_PID $RS_DNS_PID; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    # Workers outliving a killed main process: by the ports they hold.
    for _ in $(seq 50); do
        ss -Htln "sport = :$RS_HTTP_PORT or sport = :$RS_MILTER_PORT" | grep -q . || break
        sleep 0.1
    done
    RS_PID='' RS_DNS_PID=''
}
