#!/usr/bin/env bash
# Install a Debian package of mpolice as an operator would, without touching this host:
# in a private mount namespace, over a throwaway overlay of the host's own root (its
# changes live in a tmpfs and vanish with the namespace). There `dpkg -i` must take the
# package (its dependencies met), `mpolice --version` and `mpolice check` of every
# example config must pass, the man page and completions must be where their tools
# look, the units must verify, and `dpkg --purge` must leave no file behind.
# Usage: packaging/test-deb.sh target/debian/mpolice_VERSION_ARCH.deb   (as root)
set -euo pipefail
deb=$(realpath "$1")
if [ "${MPOLICE_IN_NAMESPACE:-}" != 1 ]; then
  exec env MPOLICE_IN_NAMESPACE=1 unshare --mount --propagation private "$0" "$@"
fi
top=$(mktemp -d)
mount -t tmpfs mpolice-deb-test "$top"
mkdir -p "$top/upper" "$top/work" "$top/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$top/upper,workdir=$top/work" "$top/root"
mount -t proc proc "$top/root/proc"
mkdir -p "$top/root/pkg"
cp "$deb" "$top/root/pkg/"
in_root() { chroot "$top/root" /bin/sh -euc "$1"; }
in_root 'test ! -e /usr/bin/mpolice || { echo "mpolice is already installed on this host"; exit 1; }'
in_root 'dpkg -i /pkg/*.deb > /dev/null'
in_root 'mpolice --version'
for role in mbox victim server; do
  in_root "mpolice check --role $role --config /usr/share/doc/mpolice/examples/$role.toml"
done
in_root 'zcat /usr/share/man/man1/mpolice.1.gz | grep -q "^\.TH mpolice" && test -s /usr/share/man/man1/mpolice-reload.1.gz'
in_root 'test -s /usr/share/bash-completion/completions/mpolice && test -s /usr/share/zsh/vendor-completions/_mpolice'
in_root 'test -s /usr/share/mpolice/nft-rules/victim.nft && test "$(stat -c %a /etc/mpolice)" = 700'
in_root 'systemd-analyze verify --man=no /lib/systemd/system/mpolice-mbox.service /lib/systemd/system/mpolice-victim.service /lib/systemd/system/mpolice-server.service'
in_root 'dpkg --purge mpolice > /dev/null && test ! -e /usr/bin/mpolice && test ! -e /lib/systemd/system/mpolice-victim.service'
echo "package $(basename "$deb"): installs, runs, checks every example, purges clean"
