"""Pack what ``eval/cuda_bench.sh`` needs on a lent GPU machine into ``.gpu/`` (ignored),
and unpack the model there.

The GPU machine has no network and takes at most 64 MiB of the working tree per call, so
nothing can be installed or downloaded there. Its image already has torch,
sentence-transformers, numpy, pandas and onnxruntime; this carries the rest of
shopsearch's imports as Python 3.12 wheels (faiss-cpu, tantivy, fastapi, pydantic, ...),
the Home Depot catalog and dev queries (read from ``../shared``, never committed), and the
bundled all-MiniLM-L6-v2 in a form that fits the limit:

- weights stored in fp16 and upcast to fp32 on the GPU machine (|error| <= 2^-11 relative;
  every timing there runs the fp32 graph, as ``serve`` does);
- the word-embedding rows of word pieces that no Home Depot title, train or dev query, and
  no query-rewrite source contains are zeroed before compression (they are never looked
  up in that run, so its vectors are those of the fp16 model), which lets xz halve them.

With the repository's files that travel too, this sits at about 62 of the 64 MiB.

Usage, from a checkout (here, then there)::

    .venv/bin/python eval/cuda_bundle.py pack   # writes .gpu/{whl,data,model.tar.xz}
    python3 eval/cuda_bundle.py unpack DEST     # on the GPU machine: DEST/model (fp32)

Only ``pack`` needs this project's environment (and PyPI); ``unpack`` needs torch and
safetensors.
"""

from __future__ import annotations

import argparse
import io
import lzma
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / ".gpu"
HOMEDEPOT = REPO.parent / "shared" / "datasets" / "homedepot"

#: Imports of shopsearch missing from the GPU image, at this project's pinned versions
#: (pyproject.toml); with --no-deps, so every one it needs is named.
WHEELS = (
    "faiss-cpu==1.15.1",  # faiss-gpu's wheels (135 MB + CUDA 12 libraries) cannot travel
    "tantivy==0.27.0",
    "sentence-transformers==6.2.0",  # the pinned version (the image has 6.0.1)
    "pydantic==2.14.4",
    "pydantic_core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "pydantic-settings==2.16.3",
    "python-dotenv==1.2.4",
    "fastapi==0.163.2",
    "starlette==1.10.0",
    "opentelemetry-api==1.45.2",
    "uvicorn==0.54.0",
    "httptools==0.9.0",
    "symspellpy==6.10.1",
    "snowballstemmer==3.1.1",
    "cachetools==8.0.0",
    # `eval` computes its metrics with ranx (imported lazily); these are what its import
    # loads. The Elasticsearch client is left behind: nothing measured there imports it.
    "ranx==0.3.21",
    "ir-datasets==0.6.3",
    "cbor2==6.3.0",
    "lz4==4.4.5",
    "orjson==3.13.0",
)
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"
HALF_WEIGHTS = "model.fp16.safetensors"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64")  # fmt: skip


def _download_wheels(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "-d", str(dest)]  # fmt: skip
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run([*cmd, *WHEELS], check=True)


def _used_token_ids(model_dir: Path) -> set[int]:
    """Word pieces of every text the GPU run can encode: titles, queries, rewrite sources."""
    import pandas as pd
    from transformers import AutoTokenizer

    from shopsearch.indexer.judgments.datasets import load_homedepot

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    texts = set(pd.read_csv(HOMEDEPOT / "products.csv")["product_title"].dropna().astype(str))
    for split in ("train", "dev"):
        texts |= {q.text for q in load_homedepot(HOMEDEPOT / f"{split}.csv").queries}
    # The rewriter's own word lists live in these modules' literals.
    for module in ("query_rewrite.py", "spelling.py", "item_text.py"):
        texts.add((REPO / "retrieval" / module).read_text())
    used = set(tokenizer.all_special_ids)
    ordered = sorted(texts)
    for batch_start in range(0, len(ordered), 4096):
        for ids in tokenizer(ordered[batch_start : batch_start + 4096], truncation=False)[
            "input_ids"
        ]:
            used.update(ids)
    return used


def pack_model(model_dir: Path, archive: Path, keep_ids: set[int]) -> int:
    """Write ``model_dir`` to the xz tar ``archive``: its weights in fp16, the word-embedding
    rows not in ``keep_ids`` zeroed, every other file as it is. Returns the rows kept."""
    import torch
    from safetensors.torch import load_file, save

    weights = load_file(str(model_dir / "model.safetensors"))
    keep = torch.zeros(weights[WORD_EMBEDDINGS].shape[0], dtype=torch.bool)
    keep[sorted(keep_ids)] = True
    weights[WORD_EMBEDDINGS] = weights[WORD_EMBEDDINGS] * keep[:, None]
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
    blob = save(half)
    with tarfile.open(archive, "w:xz", preset=9) as tar:
        for path in sorted(model_dir.rglob("*")):
            if path.is_file() and path.name not in ("model.safetensors", "README.md"):
                tar.add(path, arcname=str(path.relative_to(model_dir)))
        info = tarfile.TarInfo(HALF_WEIGHTS)
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    return int(keep.sum())


def pack() -> None:
    """Write ``.gpu/whl``, ``.gpu/data`` and ``.gpu/model.tar.xz`` (see the module doc)."""
    from shopsearch.retrieval.encoders import default_model_path

    shutil.rmtree(BUNDLE, ignore_errors=True)
    _download_wheels(BUNDLE / "whl")
    data = BUNDLE / "data"
    data.mkdir(parents=True)
    for name in ("products.csv", "dev.csv"):
        with (HOMEDEPOT / name).open("rb") as src, lzma.open(data / f"{name}.xz", "wb") as dst:
            shutil.copyfileobj(src, dst)
    model_dir = default_model_path()
    kept = pack_model(model_dir, BUNDLE / "model.tar.xz", _used_token_ids(model_dir))
    total = sum(p.stat().st_size for p in BUNDLE.rglob("*") if p.is_file())
    print(f"{BUNDLE}: {total / 2**20:.1f} MiB, {kept} word pieces kept")


def unpack(dest: Path, archive: Path = BUNDLE / "model.tar.xz") -> Path:
    """Extract ``archive`` (from :func:`pack_model`) into ``dest/model`` with fp32 weights;
    returns that directory."""
    import torch
    from safetensors.torch import load_file, save_file

    model = dest / "model"
    model.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:xz") as tar:
        tar.extractall(model, filter="data")
    half = model / HALF_WEIGHTS
    weights = load_file(str(half))
    save_file(
        {k: (v.to(torch.float32) if v.is_floating_point() else v) for k, v in weights.items()},
        str(model / "model.safetensors"),
    )
    half.unlink()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("pack", help="write .gpu/ here")
    unpack_parser = sub.add_parser("unpack", help="on the GPU machine: DEST/model")
    unpack_parser.add_argument("dest", type=Path)
    args = parser.parse_args()
    if args.command == "pack":
        pack()
    else:
        print(unpack(args.dest))


if __name__ == "__main__":
    main()
