#!/bin/bash
# netns-cluster.sh — several "hosts" on one Linux machine, for trying and testing
# multi-node jobs: each host is a network namespace with its own loopback, its own
# address and its own (optionally rate-limited) link to a shared bridge.
#
#   netns-cluster.sh up N [--rate RATE]   N hosts dlc-h0 … dlc-h(N-1) (idempotent;
#                                          RATE e.g. 200mbit, 1gbit, none = unshaped)
#   netns-cluster.sh up N --flow-rate RATE each TCP connection capped at RATE instead
#                                          (as clouds cap one flow), the links not
#                                          (8×8 classes by bits 1-3 of both ports)
#   netns-cluster.sh down                 remove everything `up` created (also after
#                                          an `up` that failed half-way), and stop the
#                                          processes still running inside the hosts
#   netns-cluster.sh status               the hosts, their addresses and link rate
#   netns-cluster.sh hosts                the host names, one per line
#   netns-cluster.sh exec HOST CMD…       run CMD on HOST (a name or an index)
#   netns-cluster.sh slurm SCRIPT         run an sbatch script (e.g. one rendered by
#                                          `dlc launch --manager slurm --dry-run`)
#                                          across the hosts: its `srun` starts each
#                                          task on its node with Slurm's variables
#                                          (and fails on a host whose link is down)
#
# Needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN) and iproute2 (`ip`, `tc`).
#
# Isolation: addresses come from 10.213.0.0/24 (DLC_NETNS_SUBNET=a.b.c changes the
# /24), assigned only inside the namespaces; the bridge in the host's own namespace
# has no address and the namespaces have no default route, so nothing ever leaves the
# bridge and the host's own network is never touched. Host names resolve inside the
# namespaces through /etc/netns/<host>/hosts (which `ip netns exec` mounts over
# /etc/hosts). Every object is written to a state file (/run/dlc-netns/<prefix>)
# before it is created; `down` removes exactly what the state file lists, and `up`
# refuses to reuse a name that exists without being listed there.
#
# DLC_NETNS_PREFIX (default `dlc`, at most 6 characters) names the objects, so that
# two clusters can coexist.
set -euo pipefail

P="${DLC_NETNS_PREFIX:-dlc}"
SUBNET="${DLC_NETNS_SUBNET:-10.213.0}"
STATE_DIR="${DLC_NETNS_STATE_DIR:-/run/dlc-netns}"
STATE="$STATE_DIR/$P"
BRIDGE="$P-br"
SELF="$(readlink -f "$0")"

die() { echo "netns-cluster: $*" >&2; exit 1; }

usage() { sed -n '2,35p' "$SELF" | sed 's/^# \{0,1\}//'; }

check_names() {
    [[ "$P" =~ ^[a-z][a-z0-9]{0,5}$ ]] || die "DLC_NETNS_PREFIX=$P: use 1-6 lowercase letters or digits, starting with a letter"
    [[ "$SUBNET" =~ ^(10\.[0-9]{1,3}\.[0-9]{1,3}|192\.168\.[0-9]{1,3}|172\.(1[6-9]|2[0-9]|3[01])\.[0-9]{1,3})$ ]] ||
        die "DLC_NETNS_SUBNET=$SUBNET: give the first three numbers of a private /24, e.g. 10.213.0"
}

need_tools() {
    command -v ip >/dev/null || die "\`ip\` (iproute2) is not installed: apt-get install iproute2"
    command -v tc >/dev/null || die "\`tc\` (iproute2) is not installed: apt-get install iproute2"
    [ "$(id -u)" = 0 ] || die "network namespaces need root: run with sudo"
}

host_name() { echo "$P-h$1"; }
host_addr() { echo "$SUBNET.$(($1 + 1))"; }
veth_name() { echo "$P-h$1-v"; }

# Number of hosts the state file records (0 when there is no cluster).
recorded_hosts() {
    [ -f "$STATE" ] || { echo 0; return; }
    grep -c '^ns ' "$STATE" || true
}

# Appends an object to the state file before it is created.
record() { mkdir -p "$STATE_DIR"; echo "$*" >>"$STATE"; }
recorded() { [ -f "$STATE" ] && grep -qxF "$*" "$STATE"; }

ns_exists() { ip netns list | awk '{print $1}' | grep -qxF "$1"; }
link_exists() { ip link show dev "$1" >/dev/null 2>&1; }

# Refuses to create `what` named `name` when something of that name exists that the
# state file does not list.
claim() {
    local kind="$1" name="$2" exists=false
    case "$kind" in
    ns) ns_exists "$name" && exists=true ;;
    link) link_exists "$name" && exists=true ;;
    dir) [ -e "$name" ] && exists=true ;;
    esac
    if $exists; then
        recorded "$kind $name" && return 1
        die "$kind $name exists and was not created by netns-cluster.sh: refusing to touch it (choose another DLC_NETNS_PREFIX)"
    fi
    record "$kind $name"
    return 0
}

# The tbf bucket holds 1 ms of the rate, at least 128 KiB (two 64 KiB GSO packets;
# the kernel's high-resolution timers make the old rate/HZ minimum moot). A bigger
# bucket lets an idle link bank traffic: with 10 ms of it, a CNN's 0.74 MB
# all-reduce after 17 ms of compute crossed a "1 Gbit/s" link for free (2 hosts
# trained 2.06× one host, where a real link gives 1.5×).
shape() {
    local dev="$1" rate="$2" netns="${3:-}"
    local run=()
    [ -n "$netns" ] && run=(ip netns exec "$netns")
    if [ "$rate" = none ]; then
        "${run[@]}" tc qdisc del dev "$dev" root 2>/dev/null || true
        return
    fi
    local bits
    bits=$(rate_bits "$rate")
    local burst=$((bits / 8 / 1000))
    [ "$burst" -lt 131072 ] && burst=131072
    "${run[@]}" tc qdisc replace dev "$dev" root tbf rate "$rate" burst "$burst" latency 100ms
}

# Each TCP connection at most `rate` out of `dev`, the way a cloud caps one flow:
# 64 htb classes of `rate`, a packet's chosen by bits 1-3 of its source and of its
# destination port (the ephemeral end of a connection is the source port on the
# host that dialled, the destination on the one that accepted; Linux hands a
# host's consecutive connections ports 2 apart, so they land in different classes).
shape_flows() {
    local dev="$1" rate="$2" netns="$3"
    local run=(ip netns exec "$netns") s d c
    "${run[@]}" tc qdisc replace dev "$dev" root handle 1: htb default 1 r2q 1000
    for s in 0 1 2 3 4 5 6 7; do
        for d in 0 1 2 3 4 5 6 7; do
            c=$((s * 8 + d + 1))
            "${run[@]}" tc class replace dev "$dev" parent 1: classid "1:$c" htb rate "$rate" ceil "$rate" burst 64k
            "${run[@]}" tc filter add dev "$dev" parent 1: protocol ip prio 1 u32 \
                match ip sport $((s * 2)) 0x000e match ip dport $((d * 2)) 0x000e flowid "1:$c"
        done
    done
}

rate_bits() {
    local r="${1,,}"
    [[ "$r" =~ ^([0-9]+)(bit|kbit|mbit|gbit)$ ]] || die "rate $1: use e.g. 200mbit, 1gbit or none"
    local n="${BASH_REMATCH[1]}"
    case "${BASH_REMATCH[2]}" in
    bit) echo "$n" ;;
    kbit) echo $((n * 1000)) ;;
    mbit) echo $((n * 1000000)) ;;
    gbit) echo $((n * 1000000000)) ;;
    esac
}

cmd_up() {
    local n="" rate=none flow_rate=none
    while [ $# -gt 0 ]; do
        case "$1" in
        --rate) rate="${2:?--rate needs a value}"; shift 2 ;;
        --rate=*) rate="${1#--rate=}"; shift ;;
        --flow-rate) flow_rate="${2:?--flow-rate needs a value}"; shift 2 ;;
        --flow-rate=*) flow_rate="${1#--flow-rate=}"; shift ;;
        -*) die "up: unknown option $1" ;;
        *) n="$1"; shift ;;
        esac
    done
    [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 32 ] || die "up N: N hosts, 1 to 32"
    [ "$rate" = none ] || rate_bits "$rate" >/dev/null
    [ "$flow_rate" = none ] || rate_bits "$flow_rate" >/dev/null
    [ "$rate" = none ] || [ "$flow_rate" = none ] || die "up: give --rate or --flow-rate, not both"
    local have
    have=$(recorded_hosts)
    if [ "$have" -gt 0 ] && [ "$have" != "$n" ]; then
        echo "netns-cluster: replacing the $have-host cluster with $n hosts" >&2
        cmd_down >/dev/null
    fi
    # The /24 must not be in use on this machine (it would shadow a real network).
    if ip -4 addr show | grep -q "inet $SUBNET\." || ip -4 route show | grep -q "^$SUBNET\."; then
        recorded "link $BRIDGE" || die "$SUBNET.0/24 is already used on this machine: set DLC_NETNS_SUBNET to a free private /24"
    fi
    # A failure half-way (a command failing, or a refusal) removes what was created.
    trap 'rc=$?; if [ "$rc" != 0 ]; then echo "netns-cluster: up failed; removing what it created" >&2; cmd_down >/dev/null 2>&1 || true; fi' EXIT
    if claim link "$BRIDGE"; then
        ip link add "$BRIDGE" type bridge
    fi
    ip link set "$BRIDGE" up
    # /etc/netns itself, when this cluster is the first to use it (removed if empty).
    if [ ! -d /etc/netns ]; then
        record "etcdir /etc/netns"
        mkdir /etc/netns
    fi
    local i h v hosts_file
    for ((i = 0; i < n; i++)); do
        h=$(host_name "$i")
        v=$(veth_name "$i")
        if claim ns "$h"; then
            ip netns add "$h"
        fi
        ip netns exec "$h" ip link set lo up
        if claim link "$v"; then
            ip link add "$v" type veth peer name eth0 netns "$h"
        fi
        ip link set "$v" master "$BRIDGE" up
        ip netns exec "$h" ip addr replace "$(host_addr "$i")/24" dev eth0
        ip netns exec "$h" ip link set eth0 up
        shape "$v" "$rate"
        shape eth0 "$rate" "$h"
        [ "$flow_rate" = none ] || shape_flows eth0 "$flow_rate" "$h"
        if claim dir "/etc/netns/$h"; then
            mkdir -p "/etc/netns/$h"
        fi
    done
    # Every host knows every other by name.
    hosts_file=$(mktemp)
    {
        echo "127.0.0.1 localhost"
        echo "::1 localhost ip6-localhost ip6-loopback"
        for ((i = 0; i < n; i++)); do echo "$(host_addr "$i") $(host_name "$i")"; done
    } >"$hosts_file"
    for ((i = 0; i < n; i++)); do
        cp "$hosts_file" "/etc/netns/$(host_name "$i")/hosts"
    done
    rm -f "$hosts_file"
    sed -i '/^rate /d' "$STATE"
    if [ "$flow_rate" = none ]; then
        echo "rate $rate" >>"$STATE"
    else
        echo "rate $flow_rate per TCP connection" >>"$STATE"
    fi
    trap - EXIT
    cmd_status
}

cmd_down() {
    if [ ! -f "$STATE" ]; then
        echo "netns-cluster: no cluster (no $STATE)"
        return 0
    fi
    local kind name pid
    # Processes left inside the hosts (a failed test's workers) go first.
    while read -r kind name; do
        if [ "$kind" = ns ] && ns_exists "$name"; then
            for pid in $(ip netns pids "$name" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        fi
    done <"$STATE"
    # Then the objects, newest first.
    tac "$STATE" | while read -r kind name; do
        case "$kind" in
        link) link_exists "$name" && ip link del "$name" ;;
        ns) ns_exists "$name" && ip netns del "$name" ;;
        dir) [[ "$name" == /etc/netns/"$P"-h* ]] && rm -rf "$name" ;;
        etcdir) rmdir /etc/netns 2>/dev/null ;;
        esac
        true
    done
    rm -f "$STATE"
    rmdir "$STATE_DIR" 2>/dev/null || true
    echo "netns-cluster: removed"
}

cmd_status() {
    local n
    n=$(recorded_hosts)
    [ "$n" -gt 0 ] || { echo "netns-cluster: no cluster"; return 0; }
    echo "netns-cluster: $n host(s) on bridge $BRIDGE, link rate $(sed -n 's/^rate //p' "$STATE")"
    local i
    for ((i = 0; i < n; i++)); do
        echo "  $(host_name "$i")  $(host_addr "$i")"
    done
}

cmd_hosts() {
    local n i
    n=$(recorded_hosts)
    for ((i = 0; i < n; i++)); do host_name "$i"; done
}

# HOST as a namespace name (accepts an index).
resolve_host() {
    local h="$1"
    [[ "$h" =~ ^[0-9]+$ ]] && h=$(host_name "$h")
    recorded "ns $h" || die "no host $1 in this cluster (see \`$0 status\`)"
    echo "$h"
}

cmd_exec() {
    [ $# -ge 2 ] || die "exec HOST CMD…"
    local h
    h=$(resolve_host "$1")
    shift
    exec ip netns exec "$h" "$@"
}

# Runs an sbatch script with Slurm's batch variables and an `srun` that places
# tasks on the hosts block-wise (tasks 0..k-1 on the first node, …), like Slurm's
# default distribution. A host whose link is down is unreachable, as a failed node
# is to Slurm: a step that needs it fails to launch ("Communication connection
# failure"). `scontrol show hostnames LIST` expands the node lists it writes.
cmd_slurm() {
    local script="${1:?slurm SCRIPT}"
    [ -f "$script" ] || die "no such script: $script"
    local have nodes ntasks per_node chdir cpus
    have=$(recorded_hosts)
    [ "$have" -gt 0 ] || die "no cluster: run \`$0 up N\` first"
    sbatch_opt() { sed -n "s/^#SBATCH --$1=\(.*\)$/\1/p" "$script" | tail -1; }
    nodes=$(sbatch_opt nodes)
    nodes=${nodes:-1}
    ntasks=$(sbatch_opt ntasks)
    ntasks=${ntasks:-$nodes}
    per_node=$(sbatch_opt ntasks-per-node)
    per_node=${per_node:-$(((ntasks + nodes - 1) / nodes))}
    chdir=$(sbatch_opt chdir)
    cpus=$(sbatch_opt cpus-per-task)
    [ "$nodes" -le "$have" ] || die "the script asks for $nodes nodes; the cluster has $have"
    local shim
    shim=$(mktemp -d)
    for tool in srun scontrol; do
        printf '#!/bin/bash\nexec %q __%s "$@"\n' "$SELF" "$tool" >"$shim/$tool"
        chmod +x "$shim/$tool"
    done
    local nodelist="$P-h[0-$((nodes - 1))]"
    [ "$nodes" = 1 ] && nodelist="$P-h0"
    local rc=0
    (
        [ -n "$chdir" ] && cd "$(eval echo "$chdir")"
        export PATH="$shim:$PATH" SLURM_JOB_ID="${SLURM_JOB_ID:-$((RANDOM * 32 + $$ % 32))}" \
            SLURM_JOB_NODELIST="$nodelist" SLURM_NNODES="$nodes" SLURM_JOB_NUM_NODES="$nodes" \
            SLURM_NTASKS="$ntasks" SLURM_NTASKS_PER_NODE="$per_node"
        [ -n "$cpus" ] && export SLURM_CPUS_PER_TASK="$cpus"
        bash "$script"
    ) || rc=$?
    rm -rf "$shim"
    return "$rc"
}

# The host names of a Slurm node list as this script writes them (`p-h[a-b]`,
# `p-hN`, comma-separated), one per line.
expand_nodelist() {
    local item
    local -a items
    IFS=, read -ra items <<<"$1"
    for item in "${items[@]}"; do
        if [[ "$item" =~ ^(.*)\[([0-9]+)-([0-9]+)\]$ ]]; then
            seq -f "${BASH_REMATCH[1]}%g" "${BASH_REMATCH[2]}" "${BASH_REMATCH[3]}"
        elif [ -n "$item" ]; then
            echo "$item"
        fi
    done
}

# A host is reachable while its link is up.
host_up() { ip -o link show dev "$1-v" 2>/dev/null | grep -q 'state UP'; }

cmd_scontrol() {
    case "${1:-} ${2:-}" in
    "show hostnames") expand_nodelist "${3:-${SLURM_JOB_NODELIST:-}}" ;;
    *) echo "scontrol: the namespace cluster's scontrol only does \`show hostnames\`" >&2; return 1 ;;
    esac
}

cmd_srun() {
    local ntasks="${SLURM_NTASKS:-1}" kill_on_bad_exit=false label=false
    local want_nodes="" nodelist="" exclude=""
    while [ $# -gt 0 ] && [[ "$1" == -* ]]; do
        case "$1" in
        --ntasks=*) ntasks="${1#--ntasks=}" ;;
        -n) ntasks="$2"; shift ;;
        --nodes=*) want_nodes="${1#--nodes=}" ;;
        -N) want_nodes="$2"; shift ;;
        --nodelist=*) nodelist="${1#--nodelist=}" ;;
        -w) nodelist="$2"; shift ;;
        --exclude=*) exclude="${1#--exclude=}" ;;
        -x) exclude="$2"; shift ;;
        --cpus-per-task=*) export SLURM_CPUS_PER_TASK="${1#--cpus-per-task=}" ;;
        -c) export SLURM_CPUS_PER_TASK="$2"; shift ;;
        --kill-on-bad-exit=1 | --kill-on-bad-exit | -K) kill_on_bad_exit=true ;;
        --label | -l) label=true ;;
        esac
        shift
    done
    [ $# -gt 0 ] || die "srun: no command"
    # The step's nodes: the given list, else the allocation's without the excluded,
    # the first --nodes of them.
    local -a hosts=()
    local h
    while read -r h; do
        [ -n "$h" ] && ! expand_nodelist "$exclude" | grep -qxF "$h" && hosts+=("$h")
    done < <(expand_nodelist "${nodelist:-$SLURM_JOB_NODELIST}")
    [ -z "$want_nodes" ] && [ -z "$nodelist" ] && want_nodes="${SLURM_NNODES:-${#hosts[@]}}"
    [ -n "$want_nodes" ] || want_nodes=${#hosts[@]}
    [ "$want_nodes" -le "${#hosts[@]}" ] || {
        echo "srun: error: Unable to create step: requested $want_nodes node(s), the allocation has ${#hosts[@]}" >&2
        return 1
    }
    [ "$ntasks" -ge "$want_nodes" ] || want_nodes=$ntasks
    hosts=("${hosts[@]:0:$want_nodes}")
    for h in "${hosts[@]}"; do
        host_up "$h" || {
            echo "srun: error: Task launch for StepId=$SLURM_JOB_ID failed on node $h: Communication connection failure" >&2
            return 1
        }
    done
    local step_nodes
    step_nodes=$(IFS=,; echo "${hosts[*]}")
    local per_node=$(((ntasks + want_nodes - 1) / want_nodes)) t node pids=() rc=0
    local task
    for ((t = 0; t < ntasks; t++)); do
        node=$((t / per_node))
        task=(ip netns exec "${hosts[$node]}" env SLURM_PROCID="$t" SLURM_LOCALID="$((t % per_node))"
            SLURM_NODEID="$node" SLURM_NTASKS="$ntasks" SLURM_STEP_NUM_TASKS="$ntasks"
            SLURM_STEP_NODELIST="$step_nodes" SLURMD_NODENAME="${hosts[$node]}" "$@")
        if $label; then
            # Whole lines prefixed with the task's rank, as `srun --label` writes them.
            "${task[@]}" > >(sed -u "s/^/$t: /") 2> >(sed -u "s/^/$t: /" >&2) &
        else
            "${task[@]}" &
        fi
        pids+=($!)
    done
    # The first failure ends the step (--kill-on-bad-exit) with its exit code.
    local k r
    for ((k = 0; k < ntasks; k++)); do
        r=0
        wait -n "${pids[@]}" 2>/dev/null || r=$?
        if [ "$r" != 0 ] && [ "$rc" = 0 ]; then
            rc=$r
            $kill_on_bad_exit && kill "${pids[@]}" 2>/dev/null
        fi
    done
    return "$rc"
}

check_names
case "${1:-}" in
up) shift; need_tools; cmd_up "$@" ;;
down) need_tools; cmd_down ;;
status) cmd_status ;;
hosts) cmd_hosts ;;
exec) shift; need_tools; cmd_exec "$@" ;;
slurm) shift; need_tools; cmd_slurm "$@" ;;
__srun) shift; cmd_srun "$@" ;;
__scontrol) shift; cmd_scontrol "$@" ;;
-h | --help | help) usage ;;
"") usage; exit 2 ;;
*) usage >&2; die "unknown command $1" ;;
esac
