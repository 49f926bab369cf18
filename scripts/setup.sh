#!/usr/bin/env bash
# Installs what dlcluster needs beyond Rust: Debian packages (the Fashion-MNIST dataset,
# a TrueType font for PNG plots; xz-utils and binutils, with which scripts/gpu-check.sh
# packs the stripped binary for a GPU machine). With --launchers also Open MPI and Slurm (for
# `mpirun … dlc worker` and a local test cluster: scripts/slurm-local.sh start) and
# python3-venv (CI checks the Kubernetes manifests with pip's kubernetes-validate), and
# iproute2 (`ss`, with which the fault-injection tests cut a running job's links; `ip`
# and `tc`, with which scripts/netns-cluster.sh makes hosts out of network namespaces),
# and a Java runtime (Spark, for `dlc launch --manager spark`).
# Uses sudo only when not root. Safe to run again: installs only what is missing.
set -euo pipefail

packages=(dataset-fashion-mnist fonts-dejavu-core xz-utils binutils)
if [ "${1:-}" = "--launchers" ]; then
  packages+=(openmpi-bin slurm-wlm munge python3-venv iproute2 openjdk-17-jre-headless)
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

# Real tables nobody here wrote: the CSV data sets Debian's python3-sklearn ships
# (breast_cancer, wine_data, iris, digits, …), unpacked from the package into
# data/sklearn/ without installing it (its dependencies are large and unused here).
sk_dir="$(cd "$(dirname "$0")/.." && pwd)/data/sklearn"
if [ ! -f "$sk_dir/breast_cancer.csv" ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  echo "setup: unpacking sklearn's CSV data sets into data/sklearn" >&2
  if ! (cd "$tmp" && apt-get download -qq python3-sklearn >/dev/null 2>&1); then
    "${SUDO[@]}" apt-get update -qq
    (cd "$tmp" && apt-get download -qq python3-sklearn >/dev/null 2>&1)
  fi
  dpkg-deb -x "$tmp"/python3-sklearn_*.deb "$tmp/x"
  mkdir -p "$sk_dir"
  cp "$tmp"/x/usr/lib/python3/dist-packages/sklearn/datasets/data/*.csv* "$sk_dir"/
  cp "$tmp"/x/usr/share/doc/python3-sklearn/copyright "$sk_dir"/COPYRIGHT 2>/dev/null || true
fi
