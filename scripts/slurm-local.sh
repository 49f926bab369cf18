#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for tests and for trying
# `dlc launch --manager slurm` without a real cluster.
#
#   scripts/slurm-local.sh install   # Debian packages slurm-wlm, munge (sudo when not root)
#   scripts/slurm-local.sh start     # write config, start munged, slurmctld, slurmd; wait until idle
#   scripts/slurm-local.sh status    # sinfo
#   scripts/slurm-local.sh stop      # stop the daemons this script started
#
# Everything it writes lives under $DLC_SLURM_DIR (default /tmp/dlc-slurm): the
# config, state, logs and pid files; /etc/slurm/slurm.conf is only written when it
# does not exist yet (it becomes a symlink to the generated file), so an existing
# cluster's configuration is never touched. Needs root (or sudo): slurmd runs jobs
# as their users, munged reads a root-owned key.
set -euo pipefail

dir=${DLC_SLURM_DIR:-/tmp/dlc-slurm}
conf=/etc/slurm/slurm.conf
if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi

log() { echo "slurm-local: $*" >&2; }

install() {
  local missing=()
  for p in slurm-wlm munge; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

write_config() {
  local host cpus mem
  host=$(hostname -s)
  # At least 4 CPUs, even on a 2-core machine: a job of 2 workers and a parameter
  # server (3 tasks) must fit on this one node, as it would on a real one;
  # config_overrides lets slurmd accept more CPUs than it finds.
  cpus=$(nproc)
  if [ "$cpus" -lt 4 ]; then cpus=4; fi
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
  "${SUDO[@]}" mkdir -p "$dir/ctld" "$dir/d" "$dir/log" /etc/slurm
  "${SUDO[@]}" tee "$dir/slurm.conf" >/dev/null <<EOF
# Written by dlcluster's scripts/slurm-local.sh: one node, this machine.
ClusterName=dlc-local
SlurmctldHost=$host
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$dir/d
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
MinJobAge=600
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
  if [ ! -e "$conf" ]; then
    "${SUDO[@]}" ln -s "$dir/slurm.conf" "$conf"
  elif [ "$(readlink -f "$conf")" != "$(readlink -f "$dir/slurm.conf")" ]; then
    log "$conf exists and is not ours; refusing to touch it"
    exit 1
  fi
}

start() {
  install
  write_config
  if [ ! -s /etc/munge/munge.key ]; then
    "${SUDO[@]}" sh -c 'dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null'
  fi
  "${SUDO[@]}" chown munge:munge /etc/munge/munge.key 2>/dev/null || true
  "${SUDO[@]}" chmod 400 /etc/munge/munge.key
  "${SUDO[@]}" mkdir -p /run/munge /var/log/munge /var/lib/munge
  "${SUDO[@]}" chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  if ! pgrep -x munged >/dev/null; then
    "${SUDO[@]}" runuser -u munge -- munged --force 2>/dev/null || "${SUDO[@]}" munged --force
  fi
  local host state
  host=$(hostname -s)
  for _ in $(seq 1 60); do
    # (Re)start a daemon that is missing, e.g. one a `stop` just before was ending.
    pgrep -x slurmctld >/dev/null || "${SUDO[@]}" slurmctld
    pgrep -x slurmd >/dev/null || "${SUDO[@]}" slurmd
    state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
    case "$state" in
      idle*|mixed*|allocated*) log "node $host is $state"; return 0 ;;
      down*|drain*) "${SUDO[@]}" scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
    esac
    sleep 1
  done
  log "the node did not become idle (state: ${state:-unknown}); logs in $dir/log"
  tail -n 20 "$dir/log/"*.log >&2 || true
  exit 1
}

stop() {
  for d in slurmd slurmctld; do
    if [ -f "$dir/$d.pid" ]; then "${SUDO[@]}" kill "$(cat "$dir/$d.pid")" 2>/dev/null || true; fi
  done
  "${SUDO[@]}" pkill -x slurmd 2>/dev/null || true
  "${SUDO[@]}" pkill -x slurmctld 2>/dev/null || true
  "${SUDO[@]}" pkill -x munged 2>/dev/null || true
  # Wait for them to exit, so that a `start` right after begins from nothing.
  local d
  for _ in $(seq 1 50); do
    pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || pgrep -x munged >/dev/null || break
    sleep 0.2
  done
  for d in slurmd slurmctld munged; do "${SUDO[@]}" pkill -9 -x "$d" 2>/dev/null || true; done
  log "stopped"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) sinfo ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
