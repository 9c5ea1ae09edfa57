#!/usr/bin/env bash
# scripts/slips_study.sh: the README's first command in every mode and seed, on the slips world (docs/learning.md).
# Every number of docs/learning.md's results was made by a command of this file. A killed phase continues where it
# stopped when run again: each training run resumes from its last checkpoint (train.py --resume) and a run or
# evaluation that finished (its DONE file) is skipped. Two jobs at a time, one torch thread each (2 CPU cores).
#
#   bash scripts/slips_study.sh main    # python train.py --recipe tiny --mode {hard,soft,fuzzy} --seed {0,1,2}
#   bash scripts/slips_study.sh eval    # Tables 3-5 and Fig. 3 of each base model and run's last/ checkpoint
#                                       # (50 test problems, 16 samples: CPU time)
#
# Unlike scripts/toy_study.sh, a seed here is the first command's --seed: it picks the base model
# (models/toy-slips-s<seed>) as well as the RL randomness, so the spread over seeds includes the base model's.
# Environment: SEEDS (0 1 2), ONLY (a regular expression: run only the phase's jobs whose line matches), JOBS (2 at
# a time).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
OUT=${OUT:-runs/slips}
SEEDS=${SEEDS:-0 1 2}

train() {   # train <out> <flags...>: a new run, or the rest of a killed one
    local out=$1; shift
    [ -f "$out/DONE" ] && return 0
    local resume=""
    [ -f "$out/config.json" ] && resume="--resume"
    python train.py --recipe tiny "$@" --out "$out" $resume > "$out.log" 2>&1 && touch "$out/DONE"
}

evaluate() {   # evaluate <label> <checkpoints...>: the six settings, pass@k to 16
    local label=$1; shift
    [ -f "$OUT/eval/DONE_$label" ] && return 0
    mkdir -p "$OUT/eval"
    python evaluate.py --recipe tiny --model "$@" --label "$label" --samples 16 --limit 50 --plots \
        --out "$OUT/eval" > "$OUT/eval/$label.log" 2>&1 && touch "$OUT/eval/DONE_$label"
}
export -f train evaluate
export OUT

jobs_of() {   # the phase's jobs, one shell command a line
    case $1 in
    main) for s in $SEEDS; do for m in fuzzy hard soft; do
              echo "train $OUT/tiny-$m-s$s --mode $m --seed $s"; done; done ;;
    eval) echo "evaluate base $(for s in $SEEDS; do echo -n " models/toy-slips-s$s"; done)"
          for m in hard soft fuzzy; do echo "evaluate $m $(for s in $SEEDS; do echo -n " $OUT/tiny-$m-s$s/last"; done)"; done ;;
    *) echo "usage: bash scripts/slips_study.sh main|eval" >&2; exit 2 ;;
    esac
}

mkdir -p "$OUT"
jobs_of "$1" | grep -E -- "${ONLY:-.}" | xargs -P "${JOBS:-2}" -I{} bash -c '{}'
