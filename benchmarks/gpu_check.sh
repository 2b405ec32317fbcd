#!/usr/bin/env bash
# GPU check: the CUDA tests and the benchmarks on a CUDA device, each step under its own timeout, output in $OUT.
#
#   bash benchmarks/gpu_check.sh                      # on a CUDA machine, from the repository root (~3-4 min)
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu_check.sh   # the same steps on the CPU with tiny counts (a dry run)
#   STEPS='b_.*|g_.*' bash benchmarks/gpu_check.sh     # only the steps whose names match
#
# Needs $PYTHON (default python3) with torch, numpy, pytest, pytorch-lightning. No MLflow: every step runs with an
# `mlflow` package that refuses to import, so a step that imports MLflow fails. The steps' timeouts add up to under
# 10 minutes. Writes $OUT/<step>.log, $OUT/summary.md and $OUT/summary.json (exit status and seconds of each step).
set -x
set -u -o pipefail

OUT="${OUT:-./gpu-out}"
DEVICE="${DEVICE:-cuda}"
QUICK="${QUICK:-0}"
PYTHON="${PYTHON:-python3}"
STEPS="${STEPS:-.*}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
nomlflow="$(mktemp -d)"
mkdir -p "$nomlflow/mlflow"
echo 'raise ImportError("this check runs without MLflow: a step imported it")' >"$nomlflow/mlflow/__init__.py"
export PYTHONPATH="$nomlflow:$PWD:${PYTHONPATH:-}"
export PYTHONUNBUFFERED=1

if [ "$QUICK" = 1 ]; then
    agents_args=(--updates 2 --collect-episodes 2 --parallel 1 2)
    group_args=(--seeds 1 2 --updates 2 --warmup 1 --rounds 1 --episodes 20)
    rankers_args=(--steps 3 --repeats 1 --mf-users 2000 --mf-steps 5)
    offline_args=(--repeats 2 --episodes 20)
    group_training_one="--seeds 1 --episodes 30"
    group_training_ten="--seeds 2 --episodes 30 --ways group"
else
    agents_args=(--updates 20 --collect-episodes 10 --parallel 1 10 100)
    group_args=(--seeds 1 10 20 50 --updates 8 --warmup 2 --rounds 2 --episodes 20)
    rankers_args=(--steps 100 --repeats 2 --mf-steps 200)
    offline_args=(--repeats 30 --episodes 200)
    group_training_one="--seeds 1 --episodes 300"
    group_training_ten="--seeds 10 --episodes 300 --ways group"
fi

summary=()
step() {  # step NAME TIMEOUT_S COMMAND...: run COMMAND under `timeout`, its output tee'd to $OUT/NAME.log
    local name="$1" limit="$2" start rc
    shift 2
    [[ "$name" =~ ^(${STEPS})$ ]] || return 0  # STEPS: a regex of the steps to run (default all)
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    summary+=("$name $rc $(($(date +%s) - start)) $limit")
}

step a_device 30 bash -c "nvidia-smi -L; $PYTHON -c 'import torch; print(torch.__version__, \
    torch.cuda.is_available() and torch.cuda.get_device_name())'"
step b_cuda_tests 120 "$PYTHON" -m pytest -q --noconftest -p no:cacheprovider tests/test_device_meta.py \
    tests/test_simulator_devices.py -k "(cuda or gpu) and not stages_refuse" -rs
step c_bench_agents 150 "$PYTHON" benchmarks/bench_agents.py --device "$DEVICE" --methods sac_topk_ideal sac_gems \
    "${agents_args[@]}"
step d_seed_group_sac_topk_ideal 75 "$PYTHON" benchmarks/seed_group_update.py --device "$DEVICE" \
    --method sac_topk_ideal "${group_args[@]}"
step d_seed_group_sac_gems 75 "$PYTHON" benchmarks/seed_group_update.py --device "$DEVICE" --method sac_gems \
    "${group_args[@]}"
step e_bench_rankers 75 "$PYTHON" benchmarks/bench_rankers.py --device "$DEVICE" "${rankers_args[@]}"
step f_bench_offline 90 "$PYTHON" benchmarks/bench_offline.py --device "$DEVICE" "${offline_args[@]}"
step g_group_training 150 bash -c "$PYTHON benchmarks/seed_group_training.py --device $DEVICE ${group_training_one} && \
    $PYTHON benchmarks/seed_group_training.py --device $DEVICE ${group_training_ten}"
rm -r "$nomlflow"

set +x
{
    echo "# GPU check ($DEVICE, QUICK=$QUICK, $(date -u +%FT%TZ))"
    echo
    echo "| step | exit status | seconds | timeout (s) |"
    echo "|---|---:|---:|---:|"
    for row in "${summary[@]}"; do
        read -r name rc seconds limit <<<"$row"
        echo "| $name | $rc | $seconds | $limit |"
    done
    for row in "${summary[@]}"; do
        read -r name _ <<<"$row"
        printf '\n## %s\n\n```\n' "$name"
        tail -n 25 "$OUT/$name.log"
        printf '```\n'
    done
} >"$OUT/summary.md"
"$PYTHON" - "$OUT/summary.json" "${summary[@]}" <<'PY'
import json
import sys

rows = [row.split() for row in sys.argv[2:]]
steps = [{"step": n, "exit_status": int(rc), "seconds": int(s), "timeout_s": int(t)} for n, rc, s, t in rows]
with open(sys.argv[1], "w") as file:
    json.dump({"steps": steps, "all_passed": all(step["exit_status"] == 0 for step in steps)}, file, indent=1)
PY
head -n 14 "$OUT/summary.md"
grep -q '"all_passed": true' "$OUT/summary.json"  # the exit status: 0 when every step passed
