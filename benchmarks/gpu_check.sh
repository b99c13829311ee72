#!/usr/bin/env bash
# What only a CUDA GPU can show, in one go (4.5 minutes on one H100):
#   1. the rule contract (tests/test_contract.py) on the GPU: forward bit for bit, B = W gives
#      backprop's gradients, bf16 and fp16 autocast;
#   2. ResNet-18 step time per rule against the native step, fp32 and bf16 + channels_last;
#   3. `biograd train` on the GPU with bf16, channels_last and torch.compile;
#   4. compiled steps (bf16, channels_last) for every rule, torch.compile's default mode and
#      reduce-overhead (CUDA graphs), batch 128: the host cost per layer, compiled away or not.
# Each part writes its table or log into OUT (default gpu-check/) as it finishes: 9 files
# (machine.txt, contract.txt, step_fp32.md, step_bf16_cl.md, train-ss.txt, train-kp.txt,
# train-brsf.txt, step_compiled.md, step_cudagraphs.md).
# (Parts 3 and 4 were extended after the last GPU run, of 2026-11-27; they have not run yet.)
#
#     bash benchmarks/gpu_check.sh [OUT]
set -u
out=${1:-gpu-check}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi -L | tee "$out/machine.txt"
$py -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision",
torchvision.__version__, torch.cuda.get_device_name())' | tee -a "$out/machine.txt"

echo "== 1. contract on cuda"
BIOGRAD_TEST_DEVICE=cuda CUBLAS_WORKSPACE_CONFIG=:4096:8 \
    $py -m pytest -q -p no:cacheprovider --maxfail 40 -rf tests/test_contract.py 2>&1 \
    | tail -n 60 | tee "$out/contract.txt"

echo "== 2. step time, fp32 and bf16 + channels_last"
bench="$py benchmarks/step_time.py --device cuda --sizes 224 --batch 128"
$bench --repeats 15 | tee "$out/step_fp32.md"
$bench --repeats 15 --amp bf16 --channels-last | tee "$out/step_bf16_cl.md"

echo "== 3. biograd train on cuda: bf16, channels_last, torch.compile"
for rule in ss kp brsf; do
    $py -m biograd train --data fake --model resnet18 --rule "$rule" --device cuda --amp bf16 \
        --channels-last --compile --compile-mode reduce-overhead --epochs 2 \
        --steps-per-epoch 30 --batch-size 128 \
        --out "${TMPDIR:-/tmp}/gpu-check-train-$rule" --progress none 2>&1 | tail -n 8 \
        | tee "$out/train-$rule.txt"
done

echo "== 4. compiled steps"
# the rules that break the graph at each layer (dfa, drtp, dfa_blocks) slow every converted
# model compiled in the same process (step_time.py refuses the mix): dfa in its own run
whole="bp fa ss frsf brsf sign_fixed kp wm sa aa ia"
$bench --repeats 10 --warmup 2 --amp bf16 --channels-last --compile --rules $whole \
    | tee "$out/step_compiled.md"
$bench --repeats 10 --warmup 2 --amp bf16 --channels-last --compile --rules dfa \
    | tee -a "$out/step_compiled.md"
$bench --repeats 10 --warmup 2 --amp bf16 --channels-last --compile \
    --compile-mode reduce-overhead --rules $whole | tee "$out/step_cudagraphs.md"
