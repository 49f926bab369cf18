#!/bin/bash
# netns-scaling.sh — dlc across 1…N namespace hosts (one rank per host) at several
# link rates, beside what the planner predicts for the same topology.
#
#   scripts/netns-scaling.sh [--hosts 4] [--rates 200mbit,1gbit] [--sizes 64KiB,1MiB,8MiB]
#                            [--rounds 2] [--compression none|bf16|fp16]
#                            [--train JOB] [--steps 100] [--out netns-scaling]
#                            [--dlc target/release/dlc]
#
# Every round, for every rate and 2…N hosts: the ring all-reduce of each size (its
# median). With --train JOB also, for 1…N hosts: JOB trained with one 1-thread
# worker per host (the Slurm script `dlc launch --manager slurm --dry-run` renders,
# run by netns-cluster.sh's srun), its job-wide samples/s the median of the step
# windows after the first fifth of the steps; and `dlc plan`'s estimate for that
# topology — from a 1-thread `dlc profile` of JOB taken in the same round, the
# all-reduce just measured on those hosts (`--save`, `--link`) and a catalog of one
# machine whose network is the link rate.
#
# Writes OUT/scaling.jsonl (one line per measurement and round), then runs `dlc plot
# --scaling` on it: a table (mean over rounds, spread, the planner's value and its
# error; an all-reduce's is the planner's ring term with its default 50 µs per hop)
# and OUT/scaling.svg/png (busbw and samples/s against hosts). `none` as a rate means
# unshaped veth links: then every rank shares this machine's cores, so the CPUs, not
# the links, are the limit, and there is no prediction. More busy ranks than cores
# measure oversubscription, not the network.
#
# Uses scripts/netns-cluster.sh (root) with DLC_NETNS_PREFIX (default dlcs), and
# removes the cluster at the end (also when interrupted).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
hosts=4 rates=200mbit,1gbit sizes=64KiB,1MiB,8MiB rounds=2 compression=none
job="" steps=100 out=netns-scaling
dlc="$here/../target/release/dlc"
while [ $# -gt 0 ]; do
    case "$1" in
    --hosts) hosts="$2"; shift 2 ;;
    --rates) rates="$2"; shift 2 ;;
    --sizes) sizes="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --compression) compression="$2"; shift 2 ;;
    --train) job="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --dlc) dlc="$2"; shift 2 ;;
    -h | --help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "netns-scaling: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
die() { echo "netns-scaling: $*" >&2; exit 1; }
[ -x "$dlc" ] || die "no dlc binary at $dlc (cargo build --release, or --dlc PATH)"
dlc="$(readlink -f "$dlc")"
[[ "$hosts" =~ ^[0-9]+$ ]] && [ "$hosts" -ge 2 ] || die "--hosts must be at least 2"
[[ "$rounds" =~ ^[0-9]+$ ]] && [ "$rounds" -ge 1 ] || die "--rounds must be at least 1"
[[ "$steps" =~ ^[0-9]+$ ]] && [ "$steps" -ge 10 ] || die "--steps must be at least 10"
[ -z "$job" ] || [ -f "$job" ] || die "no job file $job"
[ -z "$job" ] || job="$(readlink -f "$job")"
[ -z "$job" ] || [ "$compression" = none ] ||
    die "--compression applies to the all-reduce; to train compressed, set [distributed] compression in the job file"
command -v python3 >/dev/null || die "needs python3 (to read JSON)"

export DLC_NETNS_PREFIX="${DLC_NETNS_PREFIX:-dlcs}"
cluster="$here/netns-cluster.sh"
mkdir -p "$out"
records="$out/scaling.jsonl"
: >"$records"
work=$(mktemp -d)
trap '"$cluster" down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

# A rate in bits per second (200mbit, 1gbit) as GB/s; empty for `none`.
link_gbps() {
    case "$1" in
    *gbit) awk -v n="${1%gbit}" 'BEGIN { print n / 8 }' ;;
    *mbit) awk -v n="${1%mbit}" 'BEGIN { print n / 8000 }' ;;
    *kbit) awk -v n="${1%kbit}" 'BEGIN { print n / 8000000 }' ;;
    none) echo "" ;;
    *) die "rate $1: give bits per second (200mbit, 1gbit) or none" ;;
    esac
}

# The all-reduce of every size across the first $2 hosts at rate $1 (round $3);
# saves the fitted profile as $work/net-$2.json.
allreduce() {
    local rate="$1" n="$2" round="$3" link save line
    link=$(link_gbps "$rate")
    save="--save $work/net-$n.json"
    [ -n "$link" ] && save="$save --link $rate"
    printf '#!/bin/bash\n#SBATCH --nodes=%d\n#SBATCH --ntasks=%d\nexport DLC_JOB_TOKEN=%s\nsrun --ntasks=%d %q bench allreduce --worker --sizes %s --compression %s --iters 6 --timeout 120 %s\n' \
        "$n" "$n" "$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')" "$n" "$dlc" "$sizes" "$compression" "$save" >"$work/b.sh"
    line=$("$cluster" slurm "$work/b.sh" 2>"$work/b.err" | grep '"event":"summary"') ||
        { cat "$work/b.err" >&2; die "the all-reduce failed on $n hosts at $rate"; }
    echo "$line" | python3 -c '
import json, sys
rate, link, n, rnd = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for b, t in json.loads(sys.stdin.read())["medians"]:
    print(json.dumps({"kind": "allreduce", "rate": rate, "link_gbps": float(link) if link else None,
                      "hosts": n, "round": rnd, "bytes": b, "seconds": t}))' "$rate" "$link" "$n" "$round" >>"$records"
}

# JOB trained on the first $2 hosts at rate $1 (round $3), one 1-thread worker each,
# beside the planner's estimate from $work/profile.json and $work/net-$2.json.
train() {
    local rate="$1" n="$2" round="$3" link run="$work/run-$1-$2-$3" predicted=null
    link=$(link_gbps "$rate")
    "$dlc" launch --manager slurm --dry-run --nodes "$n" --workers "$n" --cpus-per-worker 1 \
        "$job" --steps "$steps" --out "$run" -q >"$work/t.sh"
    "$cluster" slurm "$work/t.sh" >"$work/t.log" 2>&1 ||
        { tail -20 "$work/t.log" >&2; die "training failed on $n hosts at $rate"; }
    if [ -n "$link" ]; then
        printf '[[instances]]\nname = "netns"\nprovider = "netns-cluster.sh"\ngpus = 0\nvcpus = 2\nmemory_gib = 1\nnetwork_gbps = %s\ngpu_link = "none"\ngpu_link_gbps = 0\nprice_per_hour = 1\nprice_date = "2026-12"\nregion = "here"\n' \
            "$link" >"$work/catalog.toml"
        local comm=()
        [ "$n" -ge 2 ] && comm=(--comm-profile "$work/net-$n.json")
        "$dlc" plan "$job" --profile "$work/profile.json" --catalog "$work/catalog.toml" \
            "${comm[@]}" --max-nodes "$n" --out "$work/plan" >"$work/plan.log" 2>&1 ||
            { cat "$work/plan.log" >&2; die "dlc plan failed for $n hosts at $rate"; }
        predicted=$(python3 -c '
import csv, json, sys
batch = json.load(open(sys.argv[2]))["batch_size"]
for r in csv.DictReader(open(sys.argv[1])):
    if r["instance"] == "netns" and r["nodes"] == sys.argv[3] and r["strategy"] == "ring":
        print(batch / float(r["step_s"]))' "$work/plan/plan.csv" "$work/profile.json" "$n")
        [ -n "$predicted" ] || die "dlc plan gave no ring estimate for $n hosts"
    fi
    python3 -c '
import json, statistics, sys
metrics, steps, rate, n, rnd, predicted = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
windows = [r["samples_per_sec"] for r in map(json.loads, open(metrics))
           if r.get("kind") == "step" and r["step"] > steps // 5]
if not windows:
    sys.exit(f"netns-scaling: {metrics} has no step line after step {steps // 5}: give more --steps or a smaller [train] log_every")
print(json.dumps({"kind": "train", "rate": rate, "hosts": n, "round": rnd,
                  "samples_per_sec": statistics.median(windows),
                  "predicted_samples_per_sec": None if predicted == "null" else float(predicted)}))' \
        "$run/metrics.jsonl" "$steps" "$rate" "$n" "$round" "$predicted" >>"$records"
}

for ((round = 1; round <= rounds; round++)); do
    if [ -n "$job" ]; then
        "$dlc" profile "$job" --threads 1 --steps 30 --out "$work/profile.json" >"$work/profile.log" 2>&1 ||
            { cat "$work/profile.log" >&2; die "dlc profile failed"; }
    fi
    for rate in ${rates//,/ }; do
        link_gbps "$rate" >/dev/null
        "$cluster" up "$hosts" --rate "$rate" >/dev/null
        for ((n = 1; n <= hosts; n++)); do
            [ "$n" -ge 2 ] && allreduce "$rate" "$n" "$round"
            [ -n "$job" ] && train "$rate" "$n" "$round"
            echo "netns-scaling: round $round, $rate, $n host(s) done" >&2
        done
        "$cluster" down >/dev/null
    done
done

"$dlc" plot --scaling "$records"
cores=$(nproc)
if [ -n "$job" ] && [ "$hosts" -gt "$cores" ]; then
    echo "note: the hosts share this machine's $cores cores: training on more than $cores hosts measures oversubscription, which the planner (one core per host) does not model"
fi
