#!/usr/bin/env bash
# Build the Debian package of mpolice from this repository:
#   target/debian/mpolice_VERSION_ARCH.deb
# with the binary, the systemd units, the example configs, the nft-rules/ files, the
# man pages and the bash, zsh and fish completions (both generated from the binary's
# own command-line definition: `mpolice generate`).
# Usage: packaging/build-deb.sh [BINARY]   (default: cargo build --release first)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-}
if [ -z "$bin" ]; then
  cargo build --release
  bin=target/release/mpolice
fi
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
arch=$(dpkg --print-architecture)
root=$(mktemp -d)
gen=$(mktemp -d)
trap 'rm -rf "$root" "$gen"' EXIT
chmod 0755 "$root"

install -D -m 0755 "$bin" "$root/usr/bin/mpolice"
"$bin" generate --out "$gen" > /dev/null
install -d "$root/usr/share/man/man1"
for page in "$gen"/man1/*.1; do
  gzip -9n < "$page" > "$root/usr/share/man/man1/$(basename "$page").gz"
done
install -D -m 0644 "$gen/completions/mpolice.bash" "$root/usr/share/bash-completion/completions/mpolice"
install -D -m 0644 "$gen/completions/_mpolice" "$root/usr/share/zsh/vendor-completions/_mpolice"
install -D -m 0644 "$gen/completions/mpolice.fish" "$root/usr/share/fish/vendor_completions.d/mpolice.fish"
install -d "$root/lib/systemd/system" "$root/usr/share/doc/mpolice/examples" "$root/usr/share/mpolice/nft-rules"
install -m 0644 examples/systemd/*.service "$root/lib/systemd/system/"
install -m 0644 examples/*.toml "$root/usr/share/doc/mpolice/examples/"
install -m 0644 nft-rules/*.nft "$root/usr/share/mpolice/nft-rules/"
install -m 0644 README.md "$root/usr/share/doc/mpolice/README.md"
install -m 0644 packaging/copyright "$root/usr/share/doc/mpolice/copyright"
# The configs the units read: the operator's, none shipped (start from the examples).
install -d -m 0700 "$root/etc/mpolice"

install -d "$root/DEBIAN"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" \
  -e "s/@SIZE@/$(du -sk --exclude=DEBIAN "$root" | cut -f1)/" \
  packaging/control > "$root/DEBIAN/control"
install -m 0755 packaging/postinst packaging/postrm "$root/DEBIAN/"

mkdir -p target/debian
deb="target/debian/mpolice_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" > /dev/null
echo "$deb"
