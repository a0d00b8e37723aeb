#!/usr/bin/env bash
# Host-side system packages for the opslab control host (Debian 12, root). Idempotent: apt runs
# only when something is missing.
set -euo pipefail

packages=(
    debootstrap systemd-container   # golden image + lab hosts
    iproute2 iptables               # lab bridge and its FORWARD rules
    openssh-client rsync curl ca-certificates
    python3 python3-venv python3-pip git make tar xz-utils
    gcc libc6-dev                   # the engine's fused CPU kernels (inference/kernels), built on first use
)

missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}\n' "$package" 2>/dev/null | grep -q '^install ok installed$' \
        || missing+=("$package")
done

if ((${#missing[@]} == 0)); then
    echo "system packages: all present"
    exit 0
fi
if ((EUID != 0)); then
    echo "Error: missing system packages (${missing[*]}); run \`make install\` as root" >&2
    exit 2
fi
echo "system packages: installing ${missing[*]}"
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -q -y --no-install-recommends "${missing[@]}"
