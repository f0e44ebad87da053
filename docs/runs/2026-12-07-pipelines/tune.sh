#!/bin/bash
# Offline pipelines on the CPU (CUDA hidden), several variants side by side: which settings learn in every stage
# (the open question: a GRPO setting whose mean reward rises after SFT on builtin:tiny-qwen3).
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
run q-lr5e-4 $Q stages.1.train.learning_rate=5e-4 stages.1.train.max_steps=24 &
run q-lr1e-3 $Q stages.1.train.max_steps=24 &
run q-lr2e-3 $Q stages.1.train.learning_rate=2e-3 stages.1.train.max_steps=24 &
run q-merged $Q stages.1.merge_before=true stages.1.train.max_steps=24 &
wait
