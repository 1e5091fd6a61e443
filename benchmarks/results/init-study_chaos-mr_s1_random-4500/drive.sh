#!/bin/bash
# Compute-matched arm of the CHAOS MRI initialisation study: random init trained 4,500 steps (about the time of a
# 2,000-step pretraining + 2,000 training steps). Fold by fold, seeds 0 and 1 side by side, 1 torch thread each.
# Resumable: rerun this script. WAIT_PID: wait for that process (the main study) to end first.
export NO_ALBUMENTATIONS_UPDATE=1 FEWSHOT_DATA=/work/shared/data OMP_NUM_THREADS=1 PYTHONPATH=/work/cv-wt
[ -n "$WAIT_PID" ] && while kill -0 "$WAIT_PID" 2>/dev/null; do sleep 30; done
PY=/work/main/.venv/bin/python
OUT=/work/runs/study-mri-4500
COMMON=(study --config mri_cbr_small --dataset chaos-mr --backbones cbr-small --inits random
  --steps 4500 --eval-every 500 --reach 0.5,0.6,0.65
  --out $OUT --set train.num_workers=1 --set model.finetune.steps=0 --set data.cache_dir=/work/runs/study-mri/cache
  --set train.progress_bar=false)
cd /work/cv-wt
for fold in ${FOLDS:-0 1 2 3 4}; do
  for seed in 0 1; do
    $PY -m fewshot "${COMMON[@]}" --seeds $seed --folds $fold > $OUT/log_fold${fold}_seed${seed}.txt 2>&1 &
  done
  wait
  echo "fold $fold done $(date)" >> $OUT/progress.txt
done
