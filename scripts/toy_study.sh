#!/usr/bin/env bash
# scripts/toy_study.sh: the paper's protocol in miniature on the calibrated toy world (docs/toy_study.md).
# Every number in docs/toy_study.md was made by a command of this file. A killed phase continues where it
# stopped when run again: each training run resumes from its last checkpoint (train.py --resume) and a run or
# evaluation that finished (its DONE file) is skipped. Two jobs at a time, one torch thread each (2 CPU cores).
#
#   bash scripts/toy_study.sh signal    # the gradient-signal diagnostic (gradsignal.py): sharp vs calibrated, gamma
#   bash scripts/toy_study.sh sweep     # App. D in miniature: lr in {3e-5, 1e-4, 3e-4}, hard and fuzzy, 100 steps
#   bash scripts/toy_study.sh main      # hard / soft / fuzzy x seeds 0, 1, 2 at the chosen lr (LR=...), 200 steps
#   bash scripts/toy_study.sh gamma     # Table 6 in miniature: fuzzy, gamma in {0.1, 1, 3} x seeds 0, 1
#   bash scripts/toy_study.sh eval      # Tables 3-5, Fig. 3, out-of-domain rows of every run's last checkpoint
#                                       # (50 test problems; 25 for the gamma ablation: CPU time)
#
# Environment: LR (main, gamma; the sweep's choice, 3e-5), STEPS (200), GAMMAS (the gamma phase's list), ONLY (a
# regular expression: run only the phase's jobs whose line matches, e.g. ONLY="fuzzy-g1-s0 "), JOBS (2 at a time).
#
# The base model is one for every run, as in the paper (one Llama per table); the seeds are RL seeds (data
# order, rollouts). The runs' batch is 4 prompts x 8 samples (the tiny recipe's 8 x 8 halved: twice the steps
# in the same CPU time). The evaluation reads each run's last checkpoint, not the paper's best-validation one: on
# 100 validation problems (standard error ~3 points) the best is mostly the luckiest validation, often step 25.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
BASE=${BASE:-models/toy-calibrated-s0}
OUT=${OUT:-runs/study}
LR=${LR:-3e-5}   # the sweep's choice
STEPS=${STEPS:-200}
COMMON="--recipe tiny --model $BASE --prompts_per_step 4 --samples 8 --val_size 100 --val_every 25 --save_every 25"

train() {   # train <out> <flags...>: a new run, or the rest of a killed one
    local out=$1; shift
    [ -f "$out/DONE" ] && return 0
    local resume=""
    [ -f "$out/config.json" ] && resume="--resume"
    python train.py $COMMON "$@" --out "$out" $resume > "$out.log" 2>&1 && touch "$out/DONE"
}

evaluate() {   # evaluate <label> <problems> <checkpoints...>: the six settings, pass@k to 32, the held-out skills
    local label=$1 limit=$2; shift 2
    [ -f "$OUT/eval/DONE_$label" ] && return 0
    mkdir -p "$OUT/eval"
    python evaluate.py --recipe tiny --model "$@" --label "$label" --samples 32 --limit "$limit" \
        --ood test_mul test_expr --out "$OUT/eval" > "$OUT/eval/$label.log" 2>&1 && touch "$OUT/eval/DONE_$label"
}
export -f train evaluate
export COMMON OUT

jobs_of() {   # the phase's jobs, one shell command a line
    case $1 in
    signal) for w in toy toy-calibrated; do   # the study's batch, K = 8 batches per mode
               echo "python gradsignal.py --recipe tiny --model $w --mode hard soft fuzzy --prompts_per_step 4 \
                     --batches 8 --buckets 4 --out $OUT/signal-$w > $OUT/signal-$w.log 2>&1"; done
           for g in 1 3; do
               echo "python gradsignal.py --recipe tiny --model toy-calibrated --mode fuzzy --gamma $g \
                     --prompts_per_step 4 --batches 8 --buckets 4 --out $OUT/signal-g$g > $OUT/signal-g$g.log 2>&1"
           done ;;
    sweep) for lr in 3e-5 1e-4 3e-4; do for m in hard fuzzy; do
               echo "train $OUT/sweep-$m-lr$lr --mode $m --lr $lr --steps 100 --seed 0"; done; done ;;
    main)  for s in 0 1 2; do for m in hard soft fuzzy; do
               echo "train $OUT/$m-s$s --mode $m --lr $LR --steps $STEPS --seed $s"; done; done ;;
    gamma) for g in ${GAMMAS:-0.1 1 3}; do for s in 0 1; do
               echo "train $OUT/fuzzy-g$g-s$s --mode fuzzy --gamma $g --lr $LR --steps $STEPS --seed $s"; done; done ;;
    eval)  echo "evaluate base 50 $BASE"
           for m in hard soft fuzzy; do echo "evaluate $m 50 $OUT/$m-s0/last $OUT/$m-s1/last $OUT/$m-s2/last"; done
           for g in 0.1 1 3; do echo "evaluate fuzzy-g$g 25 $OUT/fuzzy-g$g-s0/last $OUT/fuzzy-g$g-s1/last"; done ;;
    *) echo "usage: bash scripts/toy_study.sh signal|sweep|main|gamma|eval" >&2; exit 2 ;;
    esac
}

mkdir -p "$OUT"
jobs_of "$1" | grep -E -- "${ONLY:-.}" | xargs -P "${JOBS:-2}" -I{} bash -c '{}'
