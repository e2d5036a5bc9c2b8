#!/usr/bin/env bash
# What the Vast.ai launcher's integration tests need on Debian/Ubuntu (as root): ssh and rsync
# (also what a real sweep needs on your machine), and openssh-server for the loopback
# stand-in instance (launchers/vast/loopback_instance.sh). unshare comes with util-linux.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
command -v ssh >/dev/null || need+=(openssh-client)
command -v rsync >/dev/null || need+=(rsync)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
