#!/bin/bash
# Offline pipelines on the CPU (CUDA hidden), several variants side by side: which settings learn in every stage.
# Writes each variant's pipeline.json and stage metrics to $OUT/<variant>/.
set -u
source docs/runs/setup.sh
export CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=3 MKL_NUM_THREADS=3
run() {  # name recipe overrides...
  local name=$1 recipe=$2; shift 2
  local args=()
  for o in "$@"; do args+=(--set "$o"); done
  timeout 450 python3 -m ftcli train "$recipe" --set output_dir=/tmp/runs/$name --set 'export.formats=[]' "${args[@]}" \
    > $OUT/$name.log 2>&1
  mkdir -p $OUT/$name
  cp /tmp/runs/$name/pipeline.json $OUT/$name/ 2>/dev/null
  for s in /tmp/runs/$name/stages/*; do cp $s/metrics.jsonl $OUT/$name/$(basename $s).jsonl 2>/dev/null; done
}
Q=recipes/pipeline-qwen3-reasoning-offline.yaml
run llama3 recipes/pipeline-llama3-offline.yaml &
run q-a $Q stages.0.train.max_steps=60 &
run q-b $Q stages.0.train.max_steps=30 &
run q-c $Q stages.0.train.max_steps=60 stages.1.train.learning_rate=1e-2 &
run q-d $Q stages.0.train.max_steps=30 stages.1.train.grpo.max_completion_length=40 stages.1.train.seed=3 &
wait
