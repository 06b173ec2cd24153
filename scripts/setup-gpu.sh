#!/usr/bin/env bash
# Makes sure wgpu will find a Vulkan adapter. When the machine has no Vulkan driver at all (a
# headless Linux box, CI), installs Mesa's lavapipe (software Vulkan) from bookworm-backports,
# which is 5-10x faster for compute than bookworm's. Idempotent; prints nothing when all is set.
set -euo pipefail
[ "$(uname -s)" = Linux ] || exit 0   # Metal / DX12 need nothing
icds=$(ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json 2>/dev/null || true)
have_lvp_25=false
if ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null | grep "^2[5-9]" >/dev/null && have_lvp_25=true
fi
if $have_lvp_25 && ldconfig -p | grep libvulkan.so.1 >/dev/null; then exit 0; fi
# a machine with a real GPU and a Vulkan driver for it needs nothing
if { ls /dev/dri/renderD* >/dev/null 2>&1 || [ -e /dev/nvidia0 ]; } && [ -n "$icds" ] && ldconfig -p | grep libvulkan.so.1 >/dev/null; then exit 0; fi
if ! command -v apt-get >/dev/null; then
  echo "augur: no Vulkan driver found; install your GPU's Vulkan driver or Mesa's lavapipe" >&2
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "augur: no Vulkan driver found; run this script as root to install Mesa's lavapipe" >&2
  exit 1
fi
src=/etc/apt/sources.list.d/debian.sources
if [ -f "$src" ] && grep -q '^Suites: bookworm bookworm-updates$' "$src"; then
  sed -i 's/^Suites: bookworm bookworm-updates$/& bookworm-backports/' "$src"
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null
echo "augur: installed lavapipe $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers)" >&2
