#!/bin/bash
# bench-mpi-allreduce.sh — the Open MPI reference for `dlc bench allreduce`:
# MPI_Allreduce (f32, sum) timed like dlc's benchmark (a barrier before each timed
# call, median of the iterations, busbw = algbw × 2(n−1)/n), with Open MPI's defaults
# (shared memory between ranks on one host) and forced onto TCP. Settle (50 ms of
# tiny all-reduces) and warm-up (a quarter of the timed count) match dlc's too.
#
#   scripts/bench-mpi-allreduce.sh [--ranks 2] [--sizes 4K,1M,16M,64M] [--iters 20]
#                                  [--transports shm,tcp]
#
# Prints one JSON object per size and transport on stdout, e.g.
#   {"impl":"openmpi","transport":"shm","ranks":2,"bytes":16777216,"median_s":…,"busbw_gbps":…}
# and compares directly with `dlc bench allreduce --ranks 2 --transport shm --json`.
# Needs Debian's openmpi-bin and libopenmpi-dev (mpicc, mpirun).
set -euo pipefail
ranks=2 sizes=4K,1M,16M,64M iters=20 transports=shm,tcp
while [ $# -gt 0 ]; do
    case "$1" in
    --ranks) ranks="$2"; shift ;;
    --sizes) sizes="$2"; shift ;;
    --iters) iters="$2"; shift ;;
    --transports) transports="$2"; shift ;;
    -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-mpi-allreduce: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
command -v mpicc >/dev/null && command -v mpirun >/dev/null ||
    { echo "bench-mpi-allreduce: needs mpicc and mpirun: apt-get install openmpi-bin libopenmpi-dev" >&2; exit 1; }
bytes_of() {
    local s="${1^^}"
    case "$s" in
    *G) echo $((${s%G} << 30)) ;; *M) echo $((${s%M} << 20)) ;; *K) echo $((${s%K} << 10)) ;;
    *) echo "$s" ;;
    esac
}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat >"$dir/allreduce.c" <<'C'
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}
int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, n;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &n);
    long iters = atol(argv[1]);
    /* Settle as dlc's benchmark does: tiny all-reduces until rank 0 has seen 50 ms pass. */
    double t_settle = MPI_Wtime();
    for (float flag = 0.0f; flag == 0.0f;) {
        flag = rank == 0 && MPI_Wtime() - t_settle >= 0.05 ? 1.0f : 0.0f;
        MPI_Allreduce(MPI_IN_PLACE, &flag, 1, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    }
    for (int a = 3; a < argc; a++) {
        long bytes = atol(argv[a]);
        long count = bytes / 4;
        float *buf = malloc(bytes > 0 ? bytes : 4);
        long it = bytes <= (1 << 20) && iters < 50 ? 50 : iters;
        double *t = malloc(sizeof(double) * it);
        for (long i = 0; i < count; i++) buf[i] = 1.0f;
        for (long w = 0; w < (it / 4 > 3 ? it / 4 : 3); w++) MPI_Allreduce(MPI_IN_PLACE, buf, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        for (long k = 0; k < it; k++) {
            for (long i = 0; i < count; i++) buf[i] = (float)(rank + 1);
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = MPI_Wtime();
            MPI_Allreduce(MPI_IN_PLACE, buf, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
            t[k] = MPI_Wtime() - t0;
        }
        float want = (float)(n * (n + 1) / 2);
        for (long i = 0; i < count; i++)
            if (buf[i] != want) { fprintf(stderr, "wrong result at %ld\n", i); MPI_Abort(MPI_COMM_WORLD, 1); }
        qsort(t, it, sizeof(double), cmp);
        double med = it % 2 ? t[it / 2] : (t[it / 2 - 1] + t[it / 2]) / 2;
        if (rank == 0)
            printf("{\"impl\":\"openmpi\",\"transport\":\"%s\",\"ranks\":%d,\"bytes\":%ld,\"median_s\":%.9f,\"busbw_gbps\":%.4f}\n",
                   argv[2], n, bytes, med, bytes / med / 1e9 * 2.0 * (n - 1) / n);
        free(buf);
        free(t);
    }
    MPI_Finalize();
    return 0;
}
C
mpicc -O2 -o "$dir/allreduce" "$dir/allreduce.c"
args=()
IFS=, read -ra list <<<"$sizes"
for s in "${list[@]}"; do args+=("$(bytes_of "$s")"); done
root=()
[ "$(id -u)" = 0 ] && root=(--allow-run-as-root)
IFS=, read -ra tlist <<<"$transports"
for t in "${tlist[@]}"; do
    case "$t" in
    shm) mca=() ;;
    tcp) mca=(--mca btl tcp,self --mca btl_tcp_if_include lo) ;;
    *) echo "bench-mpi-allreduce: unknown transport $t (shm or tcp)" >&2; exit 2 ;;
    esac
    OMPI_MCA_rmaps_base_oversubscribe=1 mpirun "${root[@]}" -np "$ranks" "${mca[@]}" \
        "$dir/allreduce" "$iters" "$t" "${args[@]}"
done
