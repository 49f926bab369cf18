#!/usr/bin/env bash
# Installs what dlcluster needs beyond Rust: Debian packages (the Fashion-MNIST dataset,
# a TrueType font for PNG plots). With --launchers also Open MPI and Slurm (for
# `mpirun … dlc worker` and a local test cluster: scripts/slurm-local.sh start) and
# python3-venv (CI checks the Kubernetes manifests with pip's kubernetes-validate).
# Uses sudo only when not root. Safe to run again: installs only what is missing.
set -euo pipefail

packages=(dataset-fashion-mnist fonts-dejavu-core)
if [ "${1:-}" = "--launchers" ]; then
  packages+=(openmpi-bin slurm-wlm munge python3-venv)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi
  echo "setup: installing ${missing[*]}" >&2
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi
