#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages podkeeper's build, demo and tests need,
# skipping those already present. Run as root.
set -euo pipefail

packages=(containerd runc containernetworking-plugins iptables busybox-static protobuf-compiler gcc libc6-dev curl ca-certificates docker-registry skopeo apache2-utils zstd iproute2)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# kubectl for the demo and the package test: Debian's, unless one (from
# Kubernetes' or Google's repository, say) is already there.
command -v kubectl >/dev/null || missing+=(kubernetes-client)
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
    echo "cargo is missing: install Rust (https://rustup.rs) first" >&2
    exit 1
fi
