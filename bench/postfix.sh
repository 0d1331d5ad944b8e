# shellcheck shell=bash
# A private Postfix instance as the SMTP anchor of bench/compare.sh.
# Sourced by compare.sh (which provides set -euo pipefail, log and die);
# can also be sourced on its own for a test (see "By hand" at the end).
#
#   install_postfix                     Debian's postfix (has smtp-source), the
#                                       system instance left unconfigured
#   setup_postfix WORK PORT USERS_FILE  config, queue, maps under WORK/postfix
#   start_postfix / stop_postfix        master pid in PF_PID; stop by pid
#   postfix_delivered_count             files in WORK/postfix/mail/*/*/new
#   postfix_clear_mail TRASH            move the delivered messages into TRASH
#   postfix_milter MILTER|off           smtpd_milters (inet:HOST:PORT, unix:PATH) or none
#
# Everything lives in $WORK/postfix: etc/ (main.cf, master.cf, the
# recipient map), spool/ (queue_directory), data/ (data_directory),
# mail/<domain>/<user>/ (Maildirs, written by the virtual(8) agent as uid
# and gid $MAIL_UID) and postfix.log (maillog_file: there is no syslog).

PF_PID='' PF_DIR='' PF_PORT=''
: "${MAIL_UID:=5000}"
command -v log >/dev/null || log() { echo "[$(date +%T)] $*" >&2; }
command -v die >/dev/null || die() { log "ERROR: $*"; exit 1; }
# wait_port PORT PID: until PORT listens on loopback (bounded, 30 s), or 1
# if PID died first. compare.sh uses it for every server it starts.
wait_port() {
    local port=$1 pid=$2
    for _ in $(seq 300); do
        ss -Htln "sport = :$port" | grep -q . && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

install_postfix() {
    if [[ -x /usr/sbin/postfix && -x /usr/sbin/smtp-source ]]; then
        return
    fi
    log "installing postfix from Debian (system instance left unconfigured)"
    # "No configuration": the package writes no /etc/postfix/main.cf and
    # the system instance is neither configured nor started. The same
    # policy-rc.d guard as for Dovecot keeps the package scripts from
    # starting anything.
    echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
    local own_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
    [[ $own_policy == 0 ]] || rm -f /usr/sbin/policy-rc.d
    [[ -x /usr/sbin/smtp-source ]] || die "postfix installed but /usr/sbin/smtp-source is missing"
    # If a system instance started anyway, stop it by its own pid file.
    local spool pid
    spool=$(postconf -h queue_directory 2>/dev/null || echo /var/spool/postfix)
    if [[ -s $spool/pid/master.pid ]]; then
        pid=$(tr -dc 0-9 <"$spool/pid/master.pid")
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
            log "the package started the system Postfix (pid $pid); stopping it"
            kill -TERM "$pid" 2>/dev/null || true
        fi
    fi
}

# setup_postfix WORK PORT USERS_FILE: write the private instance's config.
# USERS_FILE: one address per line, or a Dovecot passwd-file (the part
# before the first ':' is the address). Every domain in it becomes a
# virtual mailbox domain; every address gets a Maildir
# WORK/postfix/mail/<domain>/<local>/.
setup_postfix() {
    local work=$1 port=$2 users=$3
    PF_DIR=$work/postfix PF_PORT=$port
    local etc=$PF_DIR/etc version compat dbtype domains
    [[ -r $users ]] || die "setup_postfix: cannot read $users"
    getent passwd postfix >/dev/null || die "user postfix missing (it comes with the postfix package)"
    getent group postdrop >/dev/null || die "group postdrop missing (it comes with the postfix package)"
    mkdir -p "$etc" "$PF_DIR/spool" "$PF_DIR/mail"
    chmod 755 "$PF_DIR" "$etc" "$PF_DIR/spool"
    # data_directory belongs to mail_owner (master.lock, caches).
    install -d -o postfix -g root -m 700 "$PF_DIR/data"
    # virtual(8) creates the Maildirs as uid/gid $MAIL_UID under this base.
    chown "$MAIL_UID:$MAIL_UID" "$PF_DIR/mail"
    version=$(postconf -dh mail_version)
    # compatibility_level: the installed release (3.6+ takes major.minor).
    case $version in
        3.[0-5].*|2.*) compat=2 ;;
        *) compat=$(cut -d. -f1,2 <<<"$version") ;;
    esac
    dbtype=$(postconf -dh default_database_type)
    # The recipient map: "address  domain/local/" (the trailing slash makes
    # virtual(8) deliver in Maildir format).
    awk -F: '/^[[:space:]]*(#|$)/ {next} {a=$1; gsub(/[[:space:]]/, "", a); n=split(a, p, "@");
             if (n == 2) print a, p[2] "/" p[1] "/"}' "$users" >"$etc/vmailbox"
    [[ -s $etc/vmailbox ]] || die "setup_postfix: no user@domain addresses in $users"
    domains=$(awk '{split($1, p, "@"); print p[2]}' "$etc/vmailbox" | sort -u | paste -sd, - | sed 's/,/, /g')
    cat >"$etc/main.cf" <<CF
# Private Postfix $version for bench/compare.sh (written by bench/postfix.sh).
# Every setting that differs from Postfix's default is here, with the reason.
compatibility_level = $compat
# Private paths: nothing of the system instance (/etc/postfix,
# /var/spool/postfix) is read or written.
queue_directory = $PF_DIR/spool
data_directory = $PF_DIR/data
# No syslog on this machine: postlogd (master.cf "postlog") writes here.
maillog_file = $PF_DIR/postfix.log
# The package's users (defaults, stated because the instance relies on them).
mail_owner = postfix
setgid_group = postdrop
# A fixed name, so nothing depends on the machine's hostname or DNS.
myhostname = postfix.bench.local
mydomain = bench.local
myorigin = \$myhostname
# Loopback only, IPv4 only (the generator connects to 127.0.0.1).
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
# No local(8) delivery, no aliases: all mail here is for virtual domains.
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
biff = no
# Mail for these domains goes to virtual(8), into Maildirs (map values
# end in "/") under virtual_mailbox_base, as uid/gid $MAIL_UID (the mail
# user compare.sh creates; Dovecot reads its corpus as the same user).
# Unknown recipients are refused at RCPT (550), like postoffice does.
virtual_mailbox_domains = $domains
virtual_mailbox_base = $PF_DIR/mail
virtual_mailbox_maps = $dbtype:$etc/vmailbox
virtual_uid_maps = static:$MAIL_UID
virtual_gid_maps = static:$MAIL_UID
# Relay control: the clients are on loopback; nothing is relayed anyway
# (no transport but virtual is ever chosen for an accepted recipient).
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
# No DNS anywhere: no reverse lookup of the client (it would be 127.0.0.1's
# PTR for every connection), and the smtp client (unused) never resolves.
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
# Limits raised so that defaults do not cap the benchmark:
# - 200 processes per service (default 100); 16 clients need 16 smtpd and
#   16 cleanup processes, plus the virtual(8) deliveries below.
default_process_limit = 200
# - no anvil connection count/rate caps (defaults 50 and 0; loopback is in
#   \$mynetworks and so exempt already; stated to be sure).
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
# - no flow-control pause (default 1s): otherwise smtpd sleeps before each
#   message whenever arrivals outpace deliveries, throttling the clients.
in_flow_delay = 0
# - all mail goes to one domain, and the default per-destination
#   concurrency (20, starting at 5 and ramping up) would cap the parallel
#   Maildir deliveries; 32 parallel deliveries (2 per client) from the start.
virtual_destination_concurrency_limit = 32
virtual_initial_destination_concurrency = 32
# - messages up to 25 MiB (default 10 MB), postoffice's default
#   [smtp] max_message_size: the large-message scenario sends 20 MiB.
#   virtual_mailbox_limit (default 51200000, per Maildir file) stays above it.
message_size_limit = 26214400
# - the default (50 recipients per delivery request), stated: every message
#   here has one recipient, so nothing is batched either way; at 1 the
#   concurrency limit above would count per recipient, not per domain.
virtual_destination_recipient_limit = 50
# Durability: Postfix's defaults are kept. cleanup(8) fsyncs the queue file
# before smtpd answers 250 to DATA, and virtual(8) fsyncs each Maildir file
# in tmp/ before linking it into new/ (checked with strace; neither fsyncs
# a directory, while postoffice also fsyncs new/ after the rename).
CF
    # master.cf: only what the benchmark uses, every service unchrooted
    # (chroot would need copies of the maps and libraries).
    cat >"$etc/master.cf" <<CF
# Private Postfix for bench/compare.sh (written by bench/postfix.sh).
# service   type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:$port inet n    -       n       -       -       smtpd
pickup      unix  n       -       n       60      1       pickup
cleanup     unix  n       -       n       -       0       cleanup
qmgr        unix  n       -       n       300     1       qmgr
rewrite     unix  -       -       n       -       -       trivial-rewrite
bounce      unix  -       -       n       -       0       bounce
defer       unix  -       -       n       -       0       bounce
trace       unix  -       -       n       -       0       bounce
verify      unix  -       -       n       -       1       verify
flush       unix  n       -       n       1000?   0       flush
proxymap    unix  -       -       n       -       -       proxymap
proxywrite  unix  -       -       n       -       1       proxymap
smtp        unix  -       -       n       -       -       smtp
relay       unix  -       -       n       -       -       smtp
showq       unix  n       -       n       -       -       showq
error       unix  -       -       n       -       -       error
retry       unix  -       -       n       -       -       error
discard     unix  -       -       n       -       -       discard
local       unix  -       n       n       -       -       local
virtual     unix  -       n       n       -       -       virtual
lmtp        unix  -       -       n       -       -       lmtp
anvil       unix  -       -       n       -       1       anvil
scache      unix  -       -       n       -       1       scache
postlog     unix-dgram n  -       n       -       1       postlogd
CF
    chmod 644 "$etc/main.cf" "$etc/master.cf" "$etc/vmailbox"
    postmap -c "$etc" "$dbtype:$etc/vmailbox" || die "postmap failed for $etc/vmailbox"
    # Creates the queue directories with their owners and modes and checks
    # the config; its messages go to maillog_file.
    local logged=0
    [[ ! -f $PF_DIR/postfix.log ]] || logged=$(wc -l <"$PF_DIR/postfix.log")
    postfix -c "$etc" check >>"$PF_DIR/setup.log" 2>&1 ||
        { cat "$PF_DIR/setup.log" >&2; tail -n 20 "$PF_DIR/postfix.log" >&2; die "postfix -c $etc check failed"; }
    postconf -c "$etc" -n >"$PF_DIR/postconf-n.conf" 2>>"$PF_DIR/setup.log" ||
        { cat "$PF_DIR/setup.log" >&2; die "postconf rejected $etc/main.cf"; }
    if tail -n +$((logged + 1)) "$PF_DIR/postfix.log" 2>/dev/null | grep -E 'warning|fatal|error' >&2; then
        log "postfix check complained (above; $PF_DIR/postfix.log)"
    fi
}

# start_postfix: start the master (it forks into the background with its
# own process group) and wait until smtpd listens. PF_PID = master's pid.
start_postfix() {
    local etc=$PF_DIR/etc pidfile=$PF_DIR/spool/pid/master.pid
    rm -f "$pidfile"
    postfix -c "$etc" start >>"$PF_DIR/setup.log" 2>&1 ||
        { tail -n 20 "$PF_DIR/setup.log" >&2; die "postfix did not start (see $PF_DIR/postfix.log)"; }
    for _ in $(seq 100); do [[ -s $pidfile ]] && break; sleep 0.1; done
    PF_PID=$(tr -dc 0-9 <"$pidfile" 2>/dev/null || true)
    [[ -n $PF_PID ]] || die "postfix started but wrote no $pidfile"
    wait_port "$PF_PORT" "$PF_PID" || die "postfix is not listening on $PF_PORT (see $PF_DIR/postfix.log)"
}

# stop_postfix: TERM the master (it passes TERM to its process group and
# exits), wait up to 10 s for the group to empty, then KILL what is left.
stop_postfix() {
    [[ -n $PF_PID ]] || return 0
    kill -TERM "$PF_PID" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$PF_PID" 2>/dev/null || pgrep -g "$PF_PID" >/dev/null || break
        sleep 0.1
    done
    if kill -0 "$PF_PID" 2>/dev/null || pgrep -g "$PF_PID" >/dev/null; then
        log "postfix (pid $PF_PID) did not stop within 10 s; killing its process group"
        kill -KILL -- "-$PF_PID" 2>/dev/null || kill -KILL "$PF_PID" 2>/dev/null || true
    fi
    PF_PID=
}

# postfix_milter MILTER|off: send every message through the milter at
# MILTER (inet:127.0.0.1:PORT or unix:PATH; rspamd's proxy worker in
# milter mode, bench/rspamd.sh), or through none (the default). The settings are rspamd's documented ones
# for Postfix, with milter_default_action = tempfail (postoffice's
# rspamd_failure = "closed"). Takes effect at the next start_postfix.
postfix_milter() {
    local etc=$PF_DIR/etc
    if [[ $1 == off ]]; then
        postconf -c "$etc" -X smtpd_milters milter_default_action milter_protocol milter_mail_macros
    else
        postconf -c "$etc" -e "smtpd_milters = $1" "milter_default_action = tempfail" \
            "milter_protocol = 6" "milter_mail_macros = i {mail_addr} {client_addr} {client_name} {auth_authen}"
    fi
}

# postfix_delivered_count: messages delivered so far (files in new/).
postfix_delivered_count() {
    find "$PF_DIR/mail" -mindepth 4 -maxdepth 4 -path '*/new/*' -type f 2>/dev/null | wc -l
}

# postfix_clear_mail TRASH: move the delivered messages out of every new/
# into TRASH (the Maildirs stay). TRASH is for the caller to delete when
# the timing is over: mass deletions slow down file creation on this disk
# for minutes.
postfix_clear_mail() {
    local trash=$1
    mkdir -p "$trash"
    find "$PF_DIR/mail" -mindepth 4 -maxdepth 4 -path '*/new/*' -type f \
        -exec mv --backup=numbered -t "$trash" {} +
}

# By hand (as root), e.g. with 1,000 users in a scratch directory:
#   for i in $(seq 1000); do echo "user$i@bench.test"; done >/var/tmp/pf-test/users.txt
#   bash -c 'set -euo pipefail; source bench/postfix.sh; install_postfix
#            setup_postfix /var/tmp/pf-test 21025 /var/tmp/pf-test/users.txt
#            start_postfix; echo "master pid $PF_PID"'
#   smtp-source -c -s 16 -m 2000 -l 10240 -f bench@bench.test -t user1@bench.test 127.0.0.1:21025
#   find /var/tmp/pf-test/postfix/mail -path '*/new/*' -type f | wc -l
#   kill -TERM <master pid>     # what stop_postfix does, plus a bounded wait
