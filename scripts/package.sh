#!/usr/bin/env bash
# Builds the Debian package of pgtier: target/debian/pgtier_<version>_<arch>.deb
#
#   scripts/package.sh                      # cargo build --release, then package
#   scripts/package.sh --binary PATH        # package an already-built binary
#   scripts/package.sh --out DIR            # write the .deb into DIR
#   scripts/package.sh --compress none      # xz (default), gzip or none: the tests' choice
#
# Plain dpkg-deb over a staged tree rather than cargo-deb: nothing more to
# compile or install, and every file, mode and maintainer script of the
# package is in packaging/ and in this script, to be read.
# The tests (tests/it/package.rs) package the debug binary the suite already
# built and check what comes out; only a real release runs the release build.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
binary=""
out="$root/target/debian"
compress=xz
while [ $# -gt 0 ]; do
    case "$1" in
    --binary) binary=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --compress) compress=$2; shift 2 ;;
    *) echo "usage: $0 [--binary PATH] [--out DIR] [--compress xz|gzip|none]" >&2; exit 64 ;;
    esac
done

for tool in dpkg-deb dpkg strip gzip objdump; do
    command -v "$tool" >/dev/null || { echo "package.sh: $tool is missing (apt-get install dpkg-dev binutils)" >&2; exit 1; }
done

if [ -z "$binary" ]; then
    (cd "$root" && cargo build --release --locked --bin pgtier)
    binary="$root/target/release/pgtier"
fi

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n1)
arch=$(dpkg --print-architecture)
[ -n "$version" ] || { echo "package.sh: no version in Cargo.toml" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg="$stage/pgtier"
install -d -m 0755 "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/etc/pgtier" "$pkg/etc/default" \
    "$pkg/lib/systemd/system" "$pkg/usr/share/man/man1" "$pkg/usr/share/man/man5" \
    "$pkg/usr/share/doc/pgtier"

# The binary, without its debug information.
install -m 0755 "$binary" "$pkg/usr/bin/pgtier"
strip --strip-unneeded "$pkg/usr/bin/pgtier"

# /etc/pgtier/proxy.toml: the repository's commented example, made for an
# installed service: certificate paths under /etc/pgtier/ssl, state_dir
# set, the example tenants commented out. Each change must apply, or the
# example changed under this script and the package would ship it wrong.
conf="$pkg/etc/pgtier/proxy.toml"
{
    echo "# Installed by the pgtier package (a conffile: upgrades keep your changes)."
    echo "# Secrets go in /etc/default/pgtier as PGTIER_* variables, not here."
    echo "# After editing: pgtier check --config /etc/pgtier/proxy.toml && systemctl reload pgtier"
    echo "#"
    awk '
        /^\[tenants\./ { tenants = 1 }
        tenants && /^[^#]/ { print "# " $0; next }
        { print }
    ' "$root/proxy.toml" | sed \
        -e 's|^cert = "certs/server.crt"|cert = "/etc/pgtier/ssl/server.crt"|' \
        -e 's|^key = "certs/server.key"|key = "/etc/pgtier/ssl/server.key"|' \
        -e 's|^# state_dir = "/var/lib/pgtier"|state_dir = "/var/lib/pgtier"  |'
} >"$conf"
for expected in '^cert = "/etc/pgtier/ssl/server.crt"' '^key = "/etc/pgtier/ssl/server.key"' \
    '^state_dir = "/var/lib/pgtier"' '^admin_listen = "127\.0\.0\.1:' '^mode = "require"'; do
    grep -q "$expected" "$conf" || { echo "package.sh: proxy.toml no longer matches $expected; update this script" >&2; exit 1; }
done
if grep -Eq '^(password|admin_token) *=' "$conf"; then
    echo "package.sh: the packaged proxy.toml must not hold a secret" >&2
    exit 1
fi
chmod 0640 "$conf"
install -m 0600 "$root/packaging/default" "$pkg/etc/default/pgtier"
install -m 0644 "$root/packaging/pgtier.service" "$pkg/lib/systemd/system/pgtier.service"

# Man pages: pgtier(1) and one per command from the CLI definition itself;
# pgtier.toml(5) from its source and the README's table of keys.
"$binary" man --dir "$pkg/usr/share/man/man1"
awk '
    /^\| key \| default \| meaning \|/ { table = 1; next }
    table && /^\|---/ { next }
    table && /^\|/ { print; rows++; next }
    table { exit }
    END { if (rows == 0) { print "package.sh: no key table in README.md" > "/dev/stderr"; exit 1 } }
' "$root/README.md" | sed \
    -e 's/\\/\\e/g' \
    -e 's/\[\([^]]*\)\]([^)]*)/\1/g' \
    -e 's/\*\*\([^*]*\)\*\*/\1/g' \
    -e 's/-/\\-/g' \
    -e 's/`\([^`]*\)`/\\fB\1\\fR/g' | awk '
    {
        n = split($0, cell, "|")
        if (n != 5) { print "package.sh: README key table row with " n - 1 " bars: " $0 > "/dev/stderr"; exit 1 }
        for (i = 2; i <= 4; i++) { sub(/^ +/, "", cell[i]); sub(/ +$/, "", cell[i]) }
        print ".TP"
        if (cell[3] != "") print cell[2] " (default " cell[3] ")"; else print cell[2]
        text = cell[4]
        if (text ~ /^[.'"'"']/) text = "\\&" text
        print text
    }' >"$stage/keys.roff"
awk -v version="$version" -v keys="$stage/keys.roff" '
    { gsub(/@VERSION@/, version) }
    /^@KEYS@$/ { while ((getline line < keys) > 0) print line; next }
    { print }
' "$root/packaging/pgtier.toml.5.in" >"$pkg/usr/share/man/man5/pgtier.toml.5"
gzip -9n "$pkg"/usr/share/man/man1/*.1 "$pkg"/usr/share/man/man5/*.5
chmod 0644 "$pkg"/usr/share/man/man1/* "$pkg"/usr/share/man/man5/*

cat >"$pkg/usr/share/doc/pgtier/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: pgtier

Files: *
License: Apache-2.0
 On Debian systems the full text of the license is in
 /usr/share/common-licenses/Apache-2.0.
COPYRIGHT
gzip -9n -c "$root/README.md" >"$pkg/usr/share/doc/pgtier/README.md.gz"
chmod 0644 "$pkg"/usr/share/doc/pgtier/*

# Control data. libc6: the newest GLIBC symbol version the binary uses.
glibc=$(objdump -T "$pkg/usr/bin/pgtier" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n1)
size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat >"$pkg/DEBIAN/control" <<CONTROL
Package: pgtier
Version: $version
Architecture: $arch
Maintainer: pgtier developers <pgtier@localhost>
Installed-Size: $size
Depends: adduser, libc6 (>= ${glibc:-2.17})
Section: database
Priority: optional
Description: PostgreSQL proxy enforcing per-tenant tiers on a shared cluster
 pgtier stands in front of one shared, multi-tenant PostgreSQL cluster,
 terminates TLS, speaks the PostgreSQL wire protocol and enforces each
 tenant's tier: connection caps, idle timeouts, row quotas and statement
 policy, refused in PostgreSQL's own terms. Runs as pgtier.service.
CONTROL
install -m 0644 "$root/packaging/debian/conffiles" "$pkg/DEBIAN/conffiles"
for script in postinst prerm postrm; do
    install -m 0755 "$root/packaging/debian/$script" "$pkg/DEBIAN/$script"
done

mkdir -p "$out"
deb="$out/pgtier_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"$compress" --build "$pkg" "$deb" >/dev/null
echo "$deb"
