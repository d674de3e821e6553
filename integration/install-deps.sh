#!/usr/bin/env bash
# Install the Debian packages mpolice needs to build, test and run its demo.
# Build: libnftnl-dev libmnl-dev pkg-config. Run: nftables. Testbed: iproute2, curl,
# iperf3, python3 (http.server), tcpdump, iputils-ping, ethtool, iptables and
# libnetfilter-queue-dev (the C benchmark peers of ../shared/bench, built by the bench).
# Operations: systemd (systemd-analyze verifies the units).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends \
  pkg-config libnftnl-dev libmnl-dev \
  nftables iptables iproute2 curl iperf3 python3 tcpdump iputils-ping ethtool procps \
  libnetfilter-queue-dev systemd
