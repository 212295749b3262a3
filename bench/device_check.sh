#!/usr/bin/env bash
# Issue 4's GPU check as one command on a lent GPU machine (the `device` tool), within one 10-minute call.
#
# Here, first:   .venv/bin/python -P bench/device_kit.py        (.devkit/: wheels the image lacks, model shapes;
#                rebuild it at the commit under test: its MANIFEST's git sha labels the results)
# Then:          run(command="bash bench/device_check.sh", carry=[".devkit"], timeout_s=590)
# Back here:     the files under $OUT (env.txt, device-pass.log, results.csv, gpu-tests.log, gpu-junit.xml);
#                append results.csv's rows to bench/results.csv and write bench/RESULTS.md's device section.
#
# It runs, each under its own time limit so the later parts still run when one hangs:
#   1. the kit's random-weight models (SmolLM2-135M and all-MiniLM-L6-v2 shapes)           ~30 s
#   2. bench/bench_device_pass.py on CUDA: sample, eval, score (Triton MBR), QLoRA ORPO train
#      (bitsandbytes' CUDA NF4, bf16, fused loss), with time, tokens/s and peak memory      limit 200 s
#   3. tests/gpu (make test-gpu): compiled Triton kernels and fused/Liger ORPO against their
#      references, a QLoRA step, sampling, one whole round with the policy on the GPU       limit 300 s
#   4. issue 15's vLLM A/Bs (bench_device_pass.py --vllm-ab): vllm.batching per-question vs continuous,
#      vllm.engine_in_process true vs false, through VllmSampler, N = 32, ~3K-token prompts    limit 240 s
#      Skipped with a message (exit 0) when the image has no vllm, as the lent H100 image has not: there,
#      `bash bench/device_check.sh vllm-ab` runs only the models and this part.
# DEVICE_PASS_ARGS adds arguments to part 2 (e.g. "--device cpu --quick" to rehearse it on a CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/sealong-device-out}
PY=${PY:-python3}
MODELS=${MODELS:-/tmp/sealong-device-models}
mkdir -p "$OUT" "$MODELS"
if [ ! -f .devkit/MANIFEST.json ]; then
    echo "no .devkit/ here: build it with bench/device_kit.py and name .devkit in carry" >&2
    exit 2
fi

# The package without installing it (the image cannot reach an index): a namespace folder of links.
SHIM=$(mktemp -d)
mkdir -p "$SHIM/sealong"
for d in loop kernels store; do ln -s "$PWD/$d" "$SHIM/sealong/$d"; done
export PYTHONPATH="$PWD/.devkit/site:$SHIM${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
SEALONG_GIT_SHA=$($PY -c 'import json; print(json.load(open(".devkit/MANIFEST.json"))["git_sha"])')
export SEALONG_GIT_SHA
export SEALONG_SMOLLM2_TOKENIZER="$MODELS/smollm2-135m-instruct" SEALONG_TEST_EMBEDDER="$MODELS/all-minilm-l6-v2"

{
    date -u
    echo "git $SEALONG_GIT_SHA"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
    $PY -P - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("torch", "triton", "transformers", "peft", "sentence_transformers", "bitsandbytes",
             "liger_kernel", "sqlite_utils", "sealong.loop.cli"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "ok"))
    except Exception as e:  # report, do not stop: the parts below say what each needs
        print(name, "FAILED:", type(e).__name__, e)
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
} 2>&1 | tee "$OUT/env.txt"

ONLY=${1:-all}  # "vllm-ab": the models and part 4 only

echo "== 1. random-weight models"
timeout 120 $PY -P bench/device_kit.py --materialize "$MODELS" 2>&1 | tee "$OUT/materialize.log"
made=$?

pass=0 tests=0
if [ "$ONLY" != vllm-ab ]; then
    echo "== 2. device pass"
    # shellcheck disable=SC2086  # DEVICE_PASS_ARGS is a list of arguments
    timeout 200 $PY -P bench/bench_device_pass.py --policy "$MODELS/smollm2-135m-instruct" \
        --embedder "$MODELS/all-minilm-l6-v2" --csv "$OUT/results.csv" ${DEVICE_PASS_ARGS:-} 2>&1 \
        | tee "$OUT/device-pass.log"
    pass=$?

    echo "== 3. tests/gpu"
    timeout 300 $PY -P -m pytest -p no:cacheprovider -m gpu_test tests/gpu -v -rA \
        --junitxml="$OUT/gpu-junit.xml" 2>&1 | tee "$OUT/gpu-tests.log"
    tests=$?
fi

echo "== 4. vLLM A/Bs: batching (per-question vs continuous), engine_in_process (true vs false)"
if $PY -c 'import vllm' >/dev/null 2>&1; then
    timeout 240 $PY -P bench/bench_device_pass.py --vllm-ab --policy "$MODELS/smollm2-135m-instruct" \
        --questions 16 --n 32 --new-tokens 128 --context-tokens 3000 --csv "$OUT/results.csv" 2>&1 \
        | tee "$OUT/vllm-ab.log"
    ab=$?
else
    echo "vllm is not installed in this image: the vLLM A/Bs are skipped (they need vllm and CUDA)" \
        | tee "$OUT/vllm-ab.log"
    ab=0
fi

rm -rf "$SHIM"
echo "== exit codes: models $made, device pass $pass, gpu tests $tests, vllm A/Bs $ab (124: hit its time limit)"
[ "$made" -eq 0 ] && [ "$pass" -eq 0 ] && [ "$tests" -eq 0 ] && [ "$ab" -eq 0 ]
