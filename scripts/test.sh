#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and end-to-end tests, and the
# real third-party clients (curl, Python poplib, fetchmail).
#
#   ./scripts/test.sh          everything
#   ./scripts/test.sh --quick  cargo tests only
#
# Third-party programs come from Debian packages. When one is missing and we
# are root with apt-get, it is installed; otherwise the clients part fails
# under CI=true and is skipped (loudly) on a developer machine.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace --quiet 2>&1 | tee target/cargo-test.log
# cargo test exits non-zero on failure (pipefail keeps that).

if [[ "${1:-}" == "--quick" ]]; then
    exit 0
fi

echo "== real clients"
need=()
for prog in curl fetchmail python3 openssl; do
    command -v "$prog" >/dev/null 2>&1 || need+=("$prog")
done
if ((${#need[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "installing: ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl fetchmail python3 openssl
    elif [[ "${CI:-}" == "true" ]]; then
        echo "FAIL: missing ${need[*]} (install the Debian packages curl fetchmail python3 openssl)" >&2
        exit 1
    else
        echo "SKIPPED real-client tests: missing ${need[*]}; install them to run these" >&2
        exit 0
    fi
fi
cargo build --quiet --bin postoffice
python3 tests/clients/run_clients.py target/debug/postoffice
