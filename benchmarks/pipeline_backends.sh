#!/usr/bin/env bash
# The documented quick grid (2 environments x 3 methods x 2 seeds) with the local pool (--workers 2) and with
# `--backend ray` on an already running two-node Ray cluster on this machine (1 CPU per node: 2 jobs at once on
# either backend), each on a fresh store in its own folder. Prints the wall time of each pipeline command.
#
#   bash benchmarks/pipeline_backends.sh                 # local, then Ray
#   ORDER="ray local" bash benchmarks/pipeline_backends.sh
set -euo pipefail
ORDER=${ORDER:-local ray}
PORT=${PORT:-6411}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pipeline-backends.XXXX")
GRID=(--envs focused_mix,diffuse_divpen --methods sac_gems,sac_topk_ideal,random --seeds 2 --preset quick)
export RAY_USAGE_STATS_ENABLED=0
NODE=(--num-cpus 1 --object-store-memory 104857600 --node-ip-address 127.0.0.1 --disable-usage-stats)

ray start --head --port "$PORT" --include-dashboard false "${NODE[@]}" > "$WORK/ray-head.log" 2>&1
trap 'ray stop --force > /dev/null 2>&1 || true' EXIT
ray start --address "127.0.0.1:$PORT" "${NODE[@]}" > "$WORK/ray-node2.log" 2>&1

for backend in $ORDER; do
    mkdir -p "$WORK/$backend" && cd "$WORK/$backend"
    case $backend in
        local) args=(--workers 2) ;;
        ray) args=(--backend ray --address "127.0.0.1:$PORT") ;;
    esac
    SECONDS=0
    slate-rl pipeline "${GRID[@]}" "${args[@]}" --out report > pipeline.log 2>&1
    echo "$backend: $SECONDS s wall ($(grep -c 'finished in' pipeline.log) jobs finished)"
done
echo "logs and stores: $WORK"
