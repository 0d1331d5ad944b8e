#!/usr/bin/env bash
# Build the Debian package with plain dpkg-deb (no debhelper, no cargo-deb):
#
#   ./scripts/build-deb.sh                      release build, then the package
#   ./scripts/build-deb.sh --binary PATH        package an already built binary
#   ./scripts/build-deb.sh --out DIR            where the .deb goes (default target/debian)
#
# Contents: /usr/bin/postoffice; /etc/postoffice/postoffice.toml (a conffile,
# from config/postoffice.production.toml); the systemd units from
# packaging/systemd; the certbot deploy hook in /usr/share/postoffice; the
# maintainer scripts of packaging/debian (system user, /var/lib/postoffice,
# sendmail alternative, units enabled and started; purge removes mail and
# config). Prints the path of the .deb on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
out="target/debian"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "build-deb.sh: unknown argument $1" >&2; exit 64 ;;
    esac
done
if [[ -z "$binary" ]]; then
    cargo build --release --locked -p postoffice
    binary="${CARGO_TARGET_DIR:-target}/release/postoffice"
fi
[[ -x "$binary" ]] || { echo "build-deb.sh: no executable at $binary" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"

install -D -m 0755 "$binary" "$root/usr/bin/postoffice"
strip --strip-debug "$root/usr/bin/postoffice" 2>/dev/null || true
install -D -m 0640 config/postoffice.production.toml "$root/etc/postoffice/postoffice.toml"
for unit in packaging/systemd/*; do
    install -D -m 0644 "$unit" "$root/lib/systemd/system/$(basename "$unit")"
done
install -D -m 0755 packaging/certbot-deploy-hook "$root/usr/share/postoffice/certbot-deploy-hook"
install -D -m 0644 config/postoffice.example.toml "$root/usr/share/doc/postoffice/postoffice.example.toml"
install -D -m 0644 README.md "$root/usr/share/doc/postoffice/README.md"
install -d "$root/DEBIAN"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$root/DEBIAN/"
install -m 0644 packaging/debian/conffiles "$root/DEBIAN/"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
    packaging/debian/control > "$root/DEBIAN/control"

mkdir -p "$out"
deb="$out/postoffice_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "$deb"
