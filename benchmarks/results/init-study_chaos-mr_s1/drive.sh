#!/bin/bash
# Initialisation study on CHAOS MRI, setting 1: fold by fold, seeds 0 and 1 side by side (1 torch thread each).
# Resumable: rerun this script; finished runs and scores are reused.
export NO_ALBUMENTATIONS_UPDATE=1 FEWSHOT_DATA=/work/shared/data OMP_NUM_THREADS=1 PYTHONPATH=/work/study-wt
PY=/work/main/.venv/bin/python
OUT=/work/runs/study-mri
COMMON=(study --config mri_cbr_small --dataset chaos-mr --backbones cbr-small --inits random,genesis,mim,meanvar
  --weights meanvar=mim --steps 2000 --eval-every 250 --reach 0.5,0.6,0.65 --genesis-steps 2000 --pretrain-bf16
  --out $OUT --set train.num_workers=1 --set model.finetune.steps=0 --set data.cache_dir=$OUT/cache
  --set train.progress_bar=false)
cd /work/study-wt
for fold in ${FOLDS:-0 1 2 3 4}; do
  for seed in 0 1; do
    $PY -m fewshot "${COMMON[@]}" --seeds $seed --folds $fold > $OUT/log_fold${fold}_seed${seed}.txt 2>&1 &
  done
  wait
  echo "fold $fold done $(date)" >> $OUT/progress.txt
done
