#!/usr/bin/env bash
# Every GPU measurement of the README, as one script (a GPU machine's time is short).
#
#   bash bench/gpu_suite.sh OUT SECTION...   sections: env compile tta dcgan e2e bf16 population
#
# The GPU machine has jax/flax/optax/orbax/torch but no TensorFlow: MNIST comes from the array
# cache (`python -m train.data mnist` on a machine with TFDS writes it), found through
# TFDS_DATA_DIR. Results land in OUT/ and, after each section, in OUT/results.tgz.
# Both frameworks run full float32 (JAX_DEFAULT_MATMUL_PRECISION=highest here, TF32 off in
# the PyTorch children), so they do the same arithmetic.
set -u
OUT=${1:?usage: gpu_suite.sh OUT SECTION...}
shift
mkdir -p "$OUT/r"
export PYTHONUNBUFFERED=1 JAX_DEFAULT_MATMUL_PRECISION=highest XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PY:-python3}
AUTOTUNE0='{"xla_gpu_autotune_level": 0}'
NO_TRITON_GEMM='{"xla_gpu_enable_triton_gemm": false}'
# tensorboardX travels as a wheel where it is missing (`pip download ... -d .whl tensorboardX`)
if ! $PY -c 'import tensorboardX' 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

pack() { tar czf "$OUT/results.tgz" -C "$OUT" r; }

for section in "$@"; do
  echo "=== $section $(date +%T)"
  case $section in
    env)
      { nvidia-smi; $PY -c 'import jax, flax, optax, torch; print(jax.__version__, flax.__version__, optax.__version__, torch.__version__, jax.devices())'; } > "$OUT/r/env.txt" 2>&1 ;;
    compile)  # cold compile of each model's whole-epoch program (fresh process, empty cache): XLA's
              # default options vs no autotuning; the latter's warm (cache) load too
      timeout 100 $PY bench/compare.py --no-train --no-memory --no-eval --compile --no-compile-warm --out "$OUT/r/compile_default"
      ZOO_XLA_OPTIONS="$AUTOTUNE0" timeout 150 $PY bench/compare.py --no-train --no-memory --no-eval --compile --out "$OUT/r/compile_autotune0" ;;
    tta)  # the CNN record: recipes raced one after another, training time and compile apart
      timeout 80 $PY bench/time_to_accuracy.py --no-torch --evals-per-epoch 8 --max-epochs 5 --zoo-grid '[
        {"batch_size": 256, "lr": 0.004, "epochs": 4},
        {"batch_size": 256, "lr": 0.004, "epochs": 4, "dtype": "bfloat16"},
        {"batch_size": 512, "lr": 0.006, "epochs": 4, "dtype": "bfloat16"},
        {"batch_size": 1024, "lr": 0.01, "epochs": 5, "dtype": "bfloat16"}]' --out "$OUT/r" ;;
    dcgan)  # DCGAN recipe candidates, trained at the same time (only their quality matters here); each
            # export scores 10,000 samples (Frechet distance etc., train/gen_metrics.py) into its manifest
      for c in "long:--epochs 50" "wide:--epochs 30 --set g_features=[256,128] --set d_features=[64,128]"; do
        name=${c%%:*}; flags=${c#*:}
        ( timeout 130 $PY -m train.cli train dcgan --workdir "/tmp/dcgan_$name" $flags ${DCGAN_EXTRA:-} > "$OUT/r/dcgan_$name.log" 2>&1
          timeout 50 $PY -m train.cli export dcgan "/tmp/dcgan_${name}_export" --workdir "/tmp/dcgan_$name" \
            --quality-n ${QUALITY_N:-10000} >> "$OUT/r/dcgan_$name.log" 2>&1 \
            && tar czf "$OUT/dcgan_$name.tgz" -C /tmp "dcgan_${name}_export" "dcgan_$name/metrics.jsonl" "dcgan_$name/config.json" ) &
      done
      if [ "${DCGAN_WITH_COMPILE:-}" = 1 ]; then
        # cold compile with cuBLAS instead of autotuned Triton GEMMs, while the DCGANs train (its GPU
        # autotuning shares the chip with them: an upper bound on the compile time)
        ZOO_XLA_OPTIONS="$NO_TRITON_GEMM" timeout 100 $PY bench/compare.py --no-train --no-memory --no-eval --compile \
          --no-compile-warm --out "$OUT/r/compile_no_triton_gemm"
      fi
      wait
      tail -n 3 "$OUT"/r/dcgan_*.log ;;
    e2e)  # `zoo train MODEL` (default recipe) vs the PyTorch twin, whole processes, cold cache
      timeout 330 $PY bench/end_to_end.py --tag gpu --out "$OUT/r" ;;
    bf16)
      timeout 120 $PY bench/end_to_end.py --no-torch --models mlp cnn lstm autoencoder --zoo-args "--dtype bfloat16" \
        --tag gpu_bf16 --out "$OUT/r" ;;
    population)
      timeout 80 $PY bench/population.py --gpu-sweep --out "$OUT/r" ;;
    *) echo "unknown section $section" ;;
  esac
  pack
done
echo "=== done $(date +%T)"
