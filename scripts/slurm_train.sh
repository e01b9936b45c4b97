#!/bin/bash
# Train distcolor on N nodes x 8 GPUs under SLURM, surviving time limits and pre-emption.
#
#   sbatch --nodes 4 scripts/slurm_train.sh --config configs/paper.yaml run.name=paper \
#       data.shards=/shared/shards/paper data.synthetic=null
#
# Submit from the repository root (on a filesystem every node sees; or set DISTCOLOR_ROOT).
# Arguments after the script go to scripts/train.py; `--resume auto` is always added, so a
# requeued job continues from the run's newest complete checkpoint (or starts the run).
#
# How it works: this batch script runs on the first node. It finds the main node's address
# and starts one task per node with srun; each task runs this file again with --node, which
# calls `accelerate launch` with that node's --machine_rank (SLURM_NODEID). 120 s before the
# time limit SLURM sends SIGTERM to this script (--signal=B:TERM@120); it passes the signal
# on to the tasks (srun -> accelerate/torchrun -> trainer), the trainer finishes its step,
# writes a checkpoint and exits, and the job requeues itself (--requeue). A pre-emption
# that requeues the job does the same.
#
# Settings (environment): GPUS_PER_NODE (8), ACCEL_CONFIG (configs/accelerate/multi_node.yaml),
# MASTER_PORT (derived from the job id), DISTCOLOR_ROOT (the submit directory),
# DRY_RUN=1 (print the commands instead of running them).
#
#SBATCH --job-name=distcolor
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

set -euo pipefail

ROOT=${DISTCOLOR_ROOT:-${SLURM_SUBMIT_DIR:-$(pwd)}}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
ACCEL_CONFIG=${ACCEL_CONFIG:-configs/accelerate/multi_node.yaml}
# torchrun gives its workers this long to stop after SIGTERM before it kills them; the
# trainer needs one step plus a checkpoint (default 30 s). Keep it below the 120 s above.
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-100}

print_command() {
    printf '%q ' "$@"
    printf '\n'
}

if [[ "${1:-}" == "--node" ]]; then
    # One task per node (started by srun below): launch this node's processes.
    shift
    NNODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:?not inside a SLURM job}}
    MACHINE_RANK=${SLURM_NODEID:-${SLURM_PROCID:?not inside a SLURM job}}
    cmd=(
        accelerate launch
        --config_file "$ACCEL_CONFIG"
        --num_machines "$NNODES"
        --num_processes "$((NNODES * GPUS_PER_NODE))"
        --machine_rank "$MACHINE_RANK"
        --main_process_ip "${MASTER_ADDR:?}"
        --main_process_port "${MASTER_PORT:?}"
        scripts/train.py --resume auto "$@"
    )
    cd "$ROOT"
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        print_command "${cmd[@]}"
        exit 0
    fi
    exec "${cmd[@]}"
fi

# The batch script, on the first node of the allocation.
NNODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:?submit with sbatch}}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:?submit with sbatch} % 20000))}
export MASTER_ADDR MASTER_PORT GPUS_PER_NODE ACCEL_CONFIG DISTCOLOR_ROOT="$ROOT"

srun_cmd=(
    srun --nodes "$NNODES" --ntasks-per-node 1 --kill-on-bad-exit=1
    bash "$ROOT/scripts/slurm_train.sh" --node "$@"
)
echo "slurm_train: job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}), ${NNODES} node(s) x" \
    "${GPUS_PER_NODE} GPU(s), main node ${MASTER_ADDR}:${MASTER_PORT}"
if [[ "${DRY_RUN:-0}" == 1 ]]; then
    print_command "${srun_cmd[@]}"
    for ((node = 0; node < NNODES; node++)); do
        SLURM_NODEID=$node bash "$ROOT/scripts/slurm_train.sh" --node "$@"
    done
    exit 0
fi

stopping=0
srun_pid=
on_term() {
    echo "slurm_train: SIGTERM (time limit or pre-emption): checkpointing, then requeueing"
    stopping=1
    if [[ -n "$srun_pid" ]]; then
        kill -TERM "$srun_pid" 2>/dev/null || true
    fi
}
trap on_term TERM

# srun runs in the background so the trap fires at once (bash runs traps only between
# commands); `wait` returns early when it does, so wait again until srun has finished.
"${srun_cmd[@]}" &
srun_pid=$!
set +e
wait "$srun_pid"
status=$?
while kill -0 "$srun_pid" 2>/dev/null; do
    wait "$srun_pid"
    status=$?
done
set -e

if [[ "$stopping" == 1 ]]; then
    echo "slurm_train: training stopped with status ${status}; requeueing job ${SLURM_JOB_ID}"
    scontrol requeue "$SLURM_JOB_ID" || true # a pre-emption may have requeued it already
    exit 0
fi
exit "$status"
