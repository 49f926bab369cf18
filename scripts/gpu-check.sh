#!/usr/bin/env bash
# The GPU check (issue 17 part B), in two halves:
#
#   scripts/gpu-check.sh --bundle DIR      here, on a CPU machine with a release build:
#       writes DIR/ with the stripped dlc (xz-compressed), this script, Fashion-MNIST's
#       four IDX files and job files that point at them: what a GPU machine with no
#       package registry needs, under 60 MiB in all (checked).
#   DIR/gpu-check.sh [--out OUT] [--device cuda] [--quick]
#       there, inside the bundle: every step below, each as JSON lines in
#       OUT/gpu-check.jsonl (one {"step":…} object per line) with its full output in
#       OUT/logs/STEP.log; a failed step is recorded and the others still run; the
#       exit status is the number of failed steps. --device cpu --quick runs the same
#       steps small on a CPU, which is how CI tests this script.
#
# Steps: dlc devices; dlc bench matmul (cpu and the device, f32 and bf16, with the
# cuBLAS reference on a GPU); the MLP and CNN examples trained on the device (samples/s
# and test accuracy); 2 local workers sharing the device with ring and with ps; a run
# stopped at a step and resumed there; dlc profile on the device and the plan it
# prices (GPU instances at the efficiency measured on this GPU).
set -uo pipefail

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

bundle() {
  local dir=$1 here repo bin data
  here=$(cd "$(dirname "$0")" && pwd)
  repo=$(cd "$here/.." && pwd)
  bin=${DLC_BIN:-$repo/target/release/dlc}
  data=${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}
  [[ -x $bin ]] || { echo "gpu-check: no release binary at $bin: run cargo build --release -p dlc" >&2; exit 2; }
  for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
    [[ -f $data/$f ]] || { echo "gpu-check: $data/$f is missing: apt-get install dataset-fashion-mnist" >&2; exit 2; }
  done
  command -v xz >/dev/null || { echo "gpu-check: xz is needed to compress the binary (apt-get install xz-utils)" >&2; exit 2; }
  mkdir -p "$dir/data" "$dir/jobs" || exit 2
  strip -o "$dir/dlc" "$bin" && xz -T0 -6 -f "$dir/dlc" || { echo "gpu-check: strip/xz failed" >&2; exit 2; }
  cp "$data"/*-ubyte.gz "$dir/data/"
  cp "$0" "$dir/gpu-check.sh" && chmod +x "$dir/gpu-check.sh"
  for model in mlp cnn; do
    # The example's model and recipe, its data from the bundle (paths relative to the
    # job file's directory are resolved by the script at run time: see `jobs`).
    sed -e '/^dataset *=/d' "$repo/examples/fashion-mnist-$model.toml" > "$dir/jobs/$model.toml.in"
  done
  local bytes
  bytes=$(du -sb "$dir" | cut -f1)
  if (( bytes > 60 * 1024 * 1024 )); then
    echo "gpu-check: the bundle is $bytes bytes, over 60 MiB" >&2
    exit 2
  fi
  echo "gpu-check: bundle in $dir: $bytes bytes ($(( bytes / 1024 / 1024 )) MiB); run ./gpu-check.sh there"
}

if [[ ${1:-} == --bundle ]]; then
  [[ -n ${2:-} ]] || { usage >&2; exit 2; }
  bundle "$2"
  exit $?
fi

out=gpu-check-out device=cuda quick=0
while (( $# )); do
  case $1 in
    --out) out=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu-check: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")" || exit 2
bundle_dir=$PWD
mkdir -p "$out/logs" || exit 2
out=$(cd "$out" && pwd)
jsonl=$out/gpu-check.jsonl
: > "$jsonl"
start=$(date +%s)

if [[ ! -x ./dlc ]]; then
  if command -v xz >/dev/null; then xz -dkf dlc.xz; else
    python3 -c 'import lzma,shutil; shutil.copyfileobj(lzma.open("dlc.xz"), open("dlc","wb"))'
  fi
  chmod +x ./dlc
fi
dlc=$bundle_dir/dlc

# The job files, with the bundle's data as absolute paths.
for model in mlp cnn; do
  {
    sed '/^\[data\]/q' "jobs/$model.toml.in"
    for k in train_images:train-images-idx3-ubyte train_labels:train-labels-idx1-ubyte test_images:t10k-images-idx3-ubyte test_labels:t10k-labels-idx1-ubyte; do
      echo "${k%%:*} = \"$bundle_dir/data/${k#*:}.gz\""
    done
    sed '1,/^\[data\]/d' "jobs/$model.toml.in"
  } > "jobs/$model.toml"
done

failed=0
# record STEP CMD…: runs CMD, keeps its output in logs/STEP.log, and appends one JSON
# line: the step, its exit status, seconds, and CMD's last JSON line when it printed one.
record() {
  local step=$1; shift
  local t0 rc last ms
  t0=$(date +%s%N)
  "$@" > "$out/logs/$step.log" 2>&1
  rc=$?
  last=$(grep -E '^\{' "$out/logs/$step.log" | tail -1)
  [[ -n $last ]] || last=null
  (( rc == 0 )) || failed=$(( failed + 1 ))
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '{"step":"%s","rc":%d,"seconds":%d.%03d,"result":%s}\n' \
    "$step" "$rc" $(( ms / 1000 )) $(( ms % 1000 )) "$last" >> "$jsonl"
  printf 'gpu-check: %-22s rc=%d\n' "$step" "$rc" >&2
}

if (( quick )); then
  sizes=128,256 mlp_steps=60 cnn_steps=20 epochs_flag=(--steps 60)
else
  sizes=512,1024,2048,4096,8192 mlp_steps=400 cnn_steps=200 epochs_flag=(--epochs 1)
fi
devs=cpu
[[ $device == cpu ]] || devs=cpu,$device

record devices "$dlc" devices --json
record matmul "$dlc" bench matmul --device "$devs" --dtype f32,bf16 --sizes "$sizes" \
  --out "$out/matmul" --json
for model in mlp cnn; do
  record "train-$model" "$dlc" train "jobs/$model.toml" --device "$device" "${epochs_flag[@]}" \
    --json --out "$out/runs/$model"
done
steps=$mlp_steps
for strategy in ring ps; do
  record "two-workers-$strategy" "$dlc" train jobs/mlp.toml --device "$device" --workers 2 \
    --strategy "$strategy" --steps "$steps" --json --out "$out/runs/mlp-2-$strategy"
done
# Resume: a run stopped at half the steps and continued from its checkpoint, against
# one that was not stopped: the same test loss (on the CPU, bit for bit).
record resume-straight "$dlc" train jobs/cnn.toml --device "$device" --steps "$cnn_steps" \
  --json --out "$out/runs/cnn-straight"
record resume-first-half "$dlc" train jobs/cnn.toml --device "$device" --steps $(( cnn_steps / 2 )) \
  --json --out "$out/runs/cnn-resumed"
record resume-second-half "$dlc" train jobs/cnn.toml --device "$device" --steps "$cnn_steps" \
  --resume "$out/runs/cnn-resumed" --json
loss() { grep -o '"test_loss":[^,}]*' "$out/logs/$1.log" | tail -1 | cut -d: -f2; }
straight=$(loss resume-straight) resumed=$(loss resume-second-half)
printf '{"step":"resume-compare","straight_test_loss":%s,"resumed_test_loss":%s,"identical":%s}\n' \
  "${straight:-null}" "${resumed:-null}" \
  "$([[ -n $straight && $straight == "$resumed" ]] && echo true || echo false)" >> "$jsonl"
# GPU kernels may sum in a different order run to run; the CPU's must not.
if [[ $device == cpu && ( -z $straight || $straight != "$resumed" ) ]]; then
  failed=$(( failed + 1 ))
fi
record profile "$dlc" profile jobs/cnn.toml --device "$device" --out "$out/profile-cnn.json"
if [[ -f $out/profile-cnn.json ]]; then
  printf '{"step":"profile-json","result":%s}\n' "$(tr -d '\n' < "$out/profile-cnn.json")" >> "$jsonl"
fi
record plan "$dlc" plan jobs/cnn.toml --profile "$out/profile-cnn.json" --max-nodes 2 --top 10 \
  --out "$out/plan"
printf '{"step":"summary","failed":%d,"seconds":%d,"device":"%s","quick":%d}\n' \
  "$failed" "$(( $(date +%s) - start ))" "$device" "$quick" >> "$jsonl"
echo "gpu-check: $failed failed step(s); results in $jsonl" >&2
exit "$failed"
