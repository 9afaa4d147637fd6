#!/usr/bin/env bash
# One device call: the GPU tests, then a timed slice of the benchmark sweep.
# Run on the GPU machine after the bundle is set up (see BENCHMARKS.md):
#   bash benchmarks/device_run.sh tests 1/2        # half of the GPU correctness tests
#   bash benchmarks/device_run.sh tests 2/2        # the other half, then the mask build
#   bash benchmarks/device_run.sh bench fwd 8192   # one sweep slice, results under $OUT
# The whole GPU suite (195 tests) took 11-12 min on an H100 (session 11), past one device
# call's 10 minutes, so `tests K/N` runs every N-th collected test from the K-th on; a shard
# that runs out of time says so (rc 124) instead of passing quietly.
set -uo pipefail
OUT="${OUT:-/tmp/flex_fa4_out}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
# A machine that went idle is given back and the next call gets a fresh one without the
# bundle: the sweep would then skip fa4 and the peers, and most GPU tests would fail on the
# import. Refuse instead, and say what to do.
if ! python3 -c "import cutlass, flash_attn.cute" 2>/dev/null; then
  echo "device_run.sh: cutlass or flash_attn.cute is not importable: this machine has no device"
  echo "bundle (a fresh machine?). Run the two bundle calls (.devbundle/p1, then p2) first."
  exit 3
fi
case "${1:-tests}" in
tests)
  shard="${2:-1/1}"; k="${shard%/*}"; n="${shard#*/}"
  files=(tests/test_gpu_end_to_end.py tests/test_cute_mod_codegen.py tests/test_triton_backend.py
         tests/test_cute_fwd_gpu.py tests/test_cute_disk_cache.py tests/test_call_cache.py
         tests/test_triton_kernels.py)
  select="gpu or forward_backward or auto or triton_backend or disk or call_cache"
  python3 -m pytest -q -p no:cacheprovider --collect-only "${files[@]}" -k "$select" 2>/dev/null \
    | grep '::' > "$OUT/gpu_test_ids.txt"
  mapfile -t ids < <(awk -v k="$k" -v n="$n" '(NR - k) % n == 0' "$OUT/gpu_test_ids.txt")
  echo "shard $shard: ${#ids[@]} of $(wc -l < "$OUT/gpu_test_ids.txt") tests"
  [ "${#ids[@]}" -gt 0 ] || { echo "no tests collected for shard $shard"; exit 2; }
  # autotuning off: correctness does not need the fastest tile, and it saves minutes
  FLEX_FA4_TRITON_AUTOTUNE=0 timeout 540 python3 -m pytest -q -p no:cacheprovider "${ids[@]}" \
    2>&1 | tee "$OUT/gpu_tests_${k}of${n}.log"
  rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && echo "shard $shard ran out of time (540 s): run it in more shards"
  [ "$k" = "$n" ] || exit "$rc"
  python3 - <<'PY' 2>&1 | tee "$OUT/mask_build.log"
import time, torch
from flex_fa4 import create_block_mask
from flex_fa4.mods import generate_doc_mask, doc_ids_from_offsets
S = 131072
offsets = torch.sort(torch.randint(1, S, (63,))).values
doc = doc_ids_from_offsets(torch.cat([torch.tensor([0]), offsets, torch.tensor([S])])).cuda()
mask = generate_doc_mask(doc)
create_block_mask(mask, None, None, 4096, 4096, device="cuda")  # warm-up: tracing, kernels
torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
t = time.perf_counter()
bm = create_block_mask(mask, None, None, S, S, device="cuda")
torch.cuda.synchronize()
print(f"create_block_mask document mask S={S}: {time.perf_counter() - t:.2f} s, "
      f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, sparsity {bm.sparsity():.1f}%")
PY
  exit "$rc"
  ;;
bench)
  mode="${2:-fwd}"; seqlens="${3:-8192}"; limit="${4:-420}"
  tag="bench_${mode//,/_}_${seqlens//,/_}"  # $OUT names may hold only letters, digits, '.', '_', '-'
  timeout $((limit + 150)) python3 -m flex_fa4 bench --modes "$mode" --seqlens "$seqlens" --time-limit "$limit" \
    --no-progress --out "$OUT/$tag" 2>&1 | tee "$OUT/$tag.log"
  exit "${PIPESTATUS[0]}"
  ;;
esac
