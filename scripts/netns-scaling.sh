#!/bin/bash
# netns-scaling.sh — dlc's ring all-reduce across 2…N namespace hosts (one rank per
# host) at several link rates, beside the planner's ring term for the same topology.
#
#   scripts/netns-scaling.sh [--hosts 4] [--rates 200mbit,1gbit] [--sizes 64KiB,1MiB,8MiB]
#                            [--rounds 2] [--compression none|bf16|fp16]
#                            [--dlc target/release/dlc]
#
# Prints one line per rate × hosts × size: the mean of the rounds' medians (and their
# spread), bus bandwidth (algbw × 2(n−1)/n), and the time `dlc plan` models for that
# all-reduce — 2(n−1)/n × S ÷ link + 2(n−1) × 50 µs (crates/plan/src/model.rs,
# `ring_time`) — with its error. `none` as a rate means unshaped veth links: then
# the ranks' CPUs, not the links, are the limit (every rank of every host shares
# this machine's cores), and no prediction is printed.
#
# Uses scripts/netns-cluster.sh (root) with DLC_NETNS_PREFIX=dlcs, and removes the
# cluster at the end (also when interrupted).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
hosts=4 rates=200mbit,1gbit sizes=64KiB,1MiB,8MiB rounds=2 compression=none
dlc="$here/../target/release/dlc"
while [ $# -gt 0 ]; do
    case "$1" in
    --hosts) hosts="$2"; shift 2 ;;
    --rates) rates="$2"; shift 2 ;;
    --sizes) sizes="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --compression) compression="$2"; shift 2 ;;
    --dlc) dlc="$2"; shift 2 ;;
    -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "netns-scaling: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -x "$dlc" ] || { echo "netns-scaling: no dlc binary at $dlc (cargo build --release, or --dlc PATH)" >&2; exit 1; }
dlc="$(readlink -f "$dlc")"
[[ "$hosts" =~ ^[0-9]+$ ]] && [ "$hosts" -ge 2 ] || { echo "netns-scaling: --hosts must be at least 2" >&2; exit 2; }

export DLC_NETNS_PREFIX=dlcs
cluster="$here/netns-cluster.sh"
work=$(mktemp -d)
trap '"$cluster" down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

# rate hosts round bytes seconds, one line per measurement.
for ((round = 1; round <= rounds; round++)); do
    for rate in ${rates//,/ }; do
        "$cluster" up "$hosts" --rate "$rate" >/dev/null
        for ((n = 2; n <= hosts; n++)); do
            printf '#!/bin/bash\n#SBATCH --nodes=%d\n#SBATCH --ntasks=%d\nexport DLC_JOB_TOKEN=%s\nsrun --ntasks=%d %q bench allreduce --worker --sizes %s --compression %s --iters 6 --timeout 120\n' \
                "$n" "$n" "$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')" "$n" "$dlc" "$sizes" "$compression" >"$work/b.sh"
            line=$("$cluster" slurm "$work/b.sh" | grep '"event":"summary"') ||
                { echo "netns-scaling: the benchmark failed on $n hosts at $rate" >&2; exit 1; }
            echo "$line" | python3 -c 'import json, sys
for b, t in json.loads(sys.stdin.read())["medians"]: print(b, t)' |
                while read -r bytes secs; do echo "$rate $n $round $bytes $secs"; done >>"$work/raw"
            echo "netns-scaling: round $round, $rate, $n hosts done" >&2
        done
    done
done

awk '
function rate_bytes(r,   n) {
    if (r ~ /gbit$/) { n = r; sub(/gbit$/, "", n); return n * 1e9 / 8 }
    if (r ~ /mbit$/) { n = r; sub(/mbit$/, "", n); return n * 1e6 / 8 }
    if (r ~ /kbit$/) { n = r; sub(/kbit$/, "", n); return n * 1e3 / 8 }
    return 0
}
{ k = $1 " " $2 " " $4; sum[k] += $5; cnt[k]++
  if (!(k in lo) || $5 < lo[k]) lo[k] = $5; if (!(k in hi) || $5 > hi[k]) hi[k] = $5 }
END {
    printf "%-8s %5s %10s %12s %19s %11s %12s %7s\n", "rate", "hosts", "bytes", "median ms", "spread ms", "busbw GB/s", "planner ms", "error"
    for (k in sum) {
        split(k, f, " "); n = f[2]; b = f[3]; t = sum[k] / cnt[k]
        busbw = b / t * 2 * (n - 1) / n / 1e9
        link = rate_bytes(f[1])
        if (link > 0) {
            pred = 2 * (n - 1) / n * b / link + 2 * (n - 1) * 50e-6
            p = sprintf("%12.2f %+6.0f%%", pred * 1e3, (pred - t) / t * 100)
        } else p = sprintf("%12s %7s", "-", "-")
        printf "%-8s %5d %10d %12.2f %9.2f-%-9.2f %11.4f %s\n", f[1], n, b, t * 1e3, lo[k] * 1e3, hi[k] * 1e3, busbw, p
    }
}' "$work/raw" | { IFS= read -r header; echo "$header"; sort -k1,1 -k3,3n -k2,2n; }
