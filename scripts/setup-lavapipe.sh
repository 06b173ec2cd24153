#!/usr/bin/env bash
# Installs Mesa's lavapipe (software Vulkan) from bookworm-backports when no Vulkan driver is present.
# Idempotent: does nothing when a lavapipe ICD of Mesa >= 25 is already installed.
set -euo pipefail
if [ -f /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] && dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null | grep -q '^25'; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "augur: lavapipe is missing; run this script as root (it uses apt-get)" >&2
  exit 1
fi
src=/etc/apt/sources.list.d/debian.sources
if [ -f "$src" ] && ! grep -q 'bookworm-backports' "$src"; then
  sed -i 's/^Suites: bookworm bookworm-updates$/& bookworm-backports/' "$src"
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null
echo "augur: installed lavapipe $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers)" >&2
