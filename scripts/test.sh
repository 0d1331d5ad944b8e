#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and end-to-end tests, and the
# real third-party programs (curl, Python poplib/smtplib, fetchmail, swaks,
# dnsmasq, clamd, Dovecot, strace, systemd's socket activator, dpkg, promtool,
# Chromium, PostgreSQL).
#
#   ./scripts/test.sh          everything
#   ./scripts/test.sh --quick  cargo tests only
#
# Third-party programs come from Debian packages. When one is missing and we
# are root with apt-get, they are installed; otherwise the suite fails, on
# every machine: a test that cannot run is not a test that passed.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(curl fetchmail python3 openssl swaks libnet-ssleay-perl dnsmasq clamav-daemon dovecot-pop3d strace
    systemd util-linux adduser prometheus chromium chromium-driver postgresql)
# Program that proves each package is there.
declare -A PROGRAM=([curl]=curl [fetchmail]=fetchmail [python3]=python3 [openssl]=openssl
    [swaks]=swaks [libnet-ssleay-perl]=/usr/share/doc/libnet-ssleay-perl [dnsmasq]=/usr/sbin/dnsmasq [clamav-daemon]=/usr/sbin/clamd
    [dovecot-pop3d]=/usr/sbin/dovecot [strace]=strace [systemd]=systemd-socket-activate
    [util-linux]=setpriv [adduser]=/usr/sbin/adduser [prometheus]=promtool [chromium]=chromium
    [chromium-driver]=chromedriver [postgresql]=/usr/lib/postgresql)

have_all() {
    local p
    for p in "${PACKAGES[@]}"; do
        command -v "${PROGRAM[$p]}" >/dev/null 2>&1 || [[ -e "${PROGRAM[$p]}" ]] || return 1
    done
}

if ! have_all; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "== installing test dependencies: ${PACKAGES[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
    fi
fi
if ! have_all; then
    echo "FAIL: missing test programs; install the Debian packages (apt-get install ${PACKAGES[*]})" >&2
    exit 1
fi
# The Rust tests that start dnsmasq/clamd find them in /usr/sbin.
export PATH="$PATH:/usr/sbin:/sbin"
# CI runs as root, and `serve` refuses to run as root unless told to; the
# servers the tests start are private loopback instances. (production.py
# takes this away where it tests the refusal.)
export POSTOFFICE_ALLOW_ROOT=1

# Every stage must pass; `set -e` stops at the first failure.
STAGES=0
stage() {
    echo "== $1"
    shift
    "$@"
    STAGES=$((STAGES + 1))
}

stage "cargo fmt --check" cargo fmt --all -- --check
stage "cargo clippy" cargo clippy --workspace --all-targets --quiet -- -D warnings
stage "cargo test" cargo test --workspace --quiet

# The end-to-end suites again with the mail and the directory in
# PostgreSQL: with-postgres starts a private server (initdb/pg_ctl as the
# postgres user, loopback port) and every test environment gets a database
# of its own there. The tests look at what is stored through POP3, the CLI
# and testkit helpers that read either backend (Env::stored_messages,
# queued_messages, directory_document), and wait (bounded) for a CLI change
# to reach a running server (Env::wait_for_directory: a node polls the
# shared directory every second). Not here: file_modes (the Unix modes of
# Maildir files), several_nodes and migrate_backends (they choose their
# backends themselves).
PG_SUITES=(pop3_session pop3_security smtp submission auth_cache rate_limit tls_resumption
    greylist header_flood lifecycle hostile spam vacation aliases cli relay
    large_messages forwarding quarantine_digest web web_security)
PG_SKIPS=()
cargo build --quiet -p postoffice-testkit --bin with-postgres
stage "end-to-end suites on the postgres storage backend (private PostgreSQL)" \
    target/debug/with-postgres cargo test --quiet -p postoffice \
    "${PG_SUITES[@]/#/--test=}" -- "${PG_SKIPS[@]/#/--skip=}"

if [[ "${1:-}" != "--quick" ]]; then
    cargo build --quiet -p postoffice -p postoffice-bench
    stage "README quick start, literally, from a fresh clone" \
        python3 tests/clients/quickstart.py .
    stage "real clients: curl, poplib, fetchmail" \
        python3 tests/clients/run_clients.py target/debug/postoffice
    stage "receiving pipeline: swaks, smtplib, dnsmasq, clamd" \
        python3 tests/clients/pipeline.py target/debug/postoffice
    stage "sending: two servers, MX via dnsmasq, DKIM, retries and bounces" \
        python3 tests/clients/sending.py target/debug/postoffice
    stage "web interface in headless Chromium, promtool on /metrics, autoconfig XML" \
        python3 tests/clients/browser.py target/debug/postoffice "${SCREENSHOTS:-target/screenshots}"
    stage "postoffice fetch against Dovecot and postoffice" \
        python3 tests/clients/fetch_compare.py target/debug/postoffice
    stage "production: socket activation, user switch, certificate reload and SNI, JSON logs, dns check" \
        python3 tests/clients/production.py target/debug/postoffice
    stage "Debian package: dpkg -i, the unit's ExecStart as postoffice, dpkg -r keeps mail, dpkg -P" \
        python3 tests/clients/debian_package.py target/debug/postoffice
    stage "provider policy users see: quota warnings and retention notices (smtplib, poplib)" \
        python3 tests/clients/policy.py target/debug/postoffice
    stage "addresses: postmaster@, abuse@, aliases, catch-all, domain alias, sub-addresses over SMTP, read over POP3" \
        python3 tests/clients/addresses.py target/debug/postoffice
    stage "migration keeping UIDLs: postoffice import from Dovecot (POP3 and dovecot-uidlist)" \
        python3 tests/clients/migrate.py target/debug/postoffice
    stage "fetch jobs: one postoffice pulls from another, verdict headers, back-off" \
        python3 tests/clients/fetch_jobs.py target/debug/postoffice
    stage "crash-kill: SIGKILL under SMTP+POP3 load, nothing lost or duplicated" \
        python3 tests/crash/crash.py target/debug/postoffice --kills 50 --seed 7
    stage "crash-kill on PostgreSQL: SIGKILL of nodes and of PostgreSQL, nothing lost or duplicated" \
        python3 tests/crash/crash.py target/debug/postoffice --postgres --kills 30 --seed 7
    stage "durability: fsync, rename, fsync dir before every 250, +OK and exit 0 (strace)" \
        python3 tests/durability/durability.py target/debug/postoffice
    stage "fuzz smoke: every target 5 s (stable runner, fixed seed)" \
        ./scripts/fuzz.sh 5 20261127
    stage "benchmark harness smoke run" \
        bash bench/smoke.sh target/debug/postoffice target/debug/postoffice-bench
fi
echo "test stages: $STAGES passed, 0 failed"
