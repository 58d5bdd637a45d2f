"""The ONNX encoder backends against the torch twin: export, cache, parity, identity.

The exports go to a temporary ``SHOPSEARCH_CACHE``, with sockets closed so that any
attempt to reach a model hub fails the test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import shopsearch.retrieval.onnx_export as onnx_export
from shopsearch.api.service import SearchService
from shopsearch.api.settings import Settings
from shopsearch.indexer.snapshot import SnapshotError
from shopsearch.retrieval.encoders import ENCODER_BACKENDS, Encoder, ModelError, model_info

pytest.importorskip("onnxruntime", reason="the ONNX backends need onnxruntime")

TEXTS = [
    "DEWALT 20-Volt MAX Lithium-Ion Cordless 1/2 in. Drill/Driver Kit",
    "cordless drill",
    "Simpson Strong-Tie 12-Gauge Angle",
    "BEHR Premium Textured DeckOver 1-gal. #SC-141 Tugboat Wood and Concrete Coating",
    "pvc pipe 1/2 in. x 10 ft.",
    "x",
    "",
    "Delta Vero 1-Handle Shower Only Faucet Trim Kit in Chrome (Valve Not Included) " * 8,
]


def _cosines(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return np.asarray((a * b).sum(axis=1))


@pytest.fixture(scope="module")
def onnx_encoder(onnx_cache: Path) -> Encoder:
    return Encoder(device="cpu", backend="onnx")


@pytest.fixture(scope="module")
def int8_encoder(onnx_cache: Path, onnx_encoder: Encoder) -> Encoder:
    return Encoder(device="cpu", backend="onnx-int8")


def test_export_is_cached_under_the_model_checksum(
    onnx_cache: Path, encoder: Encoder, onnx_encoder: Encoder, int8_encoder: Encoder
) -> None:
    model_dir = onnx_cache / "onnx" / encoder.info.sha256[:16]
    for precision in ("fp32", "int8"):
        assert (model_dir / precision / "export.json").is_file()
        assert (model_dir / precision / "transformer_0.onnx").is_file()
    assert sorted(p.name for p in model_dir.iterdir()) == ["fp32", "int8"]  # no temp dirs left
    assert onnx_encoder.backend == "onnx" and int8_encoder.backend == "onnx-int8"


def test_onnx_fp32_matches_torch(encoder: Encoder, onnx_encoder: Encoder) -> None:
    assert (
        _cosines(onnx_encoder.encode_document(TEXTS), encoder.encode_document(TEXTS)).min() > 0.999
    )
    assert _cosines(onnx_encoder.encode_query(TEXTS), encoder.encode_query(TEXTS)).min() > 0.999


def test_onnx_int8_is_close_to_torch(encoder: Encoder, int8_encoder: Encoder) -> None:
    cos = _cosines(int8_encoder.encode_document(TEXTS), encoder.encode_document(TEXTS))
    assert cos.mean() > 0.98 and cos.min() > 0.95, cos
    queries = TEXTS[:6]
    assert _cosines(int8_encoder.encode_query(queries), encoder.encode_query(queries)).mean() > 0.98


@pytest.mark.parametrize("which", ["onnx_encoder", "int8_encoder"])
def test_shapes_and_unit_length(
    which: str, encoder: Encoder, request: pytest.FixtureRequest
) -> None:
    enc: Encoder = request.getfixturevalue(which)
    assert enc.dim == encoder.dim == 384 and enc.device == "cpu"
    for out in (enc.encode_document(TEXTS, batch_size=3), enc.encode_query(TEXTS[:2])):
        assert out.dtype == np.float32 and out.shape[1] == enc.dim
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert enc.encode_document([]).shape == (0, enc.dim)
    # The item tower keeps the input order although it sorts by length inside. (int8
    # scales activations per batch, so a text's vector moves a little with its batch.)
    one_by_one = np.vstack([enc.encode_document([t]) for t in TEXTS[:4]])
    batched = enc.encode_document(TEXTS[:4])
    if enc.backend == "onnx":
        np.testing.assert_allclose(batched, one_by_one, atol=2e-3)
    assert _cosines(batched, one_by_one).min() > 0.97


def test_each_backend_is_a_distinct_model(
    encoder: Encoder, onnx_encoder: Encoder, int8_encoder: Encoder
) -> None:
    infos = [encoder.info, onnx_encoder.info, int8_encoder.info]
    assert len({i.sha256 for i in infos}) == 3
    assert len({i.id for i in infos}) == 3
    assert {i.path for i in infos} == {encoder.info.path}  # --model stays the same directory
    assert [i.to_dict()["backend"] for i in infos] == ["torch", "onnx", "onnx-int8"]


def test_second_load_reuses_the_cache(
    onnx_encoder: Encoder, int8_encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_export(*args: Any, **kwargs: Any) -> None:
        pytest.fail("exported again although the cache holds the export")

    monkeypatch.setattr(onnx_export, "_export_fp32", no_export)
    monkeypatch.setattr(onnx_export, "_quantize", no_export)
    assert Encoder(device="cpu", backend="onnx").info == onnx_encoder.info
    assert Encoder(device="cpu", backend="onnx-int8").info == int8_encoder.info


def test_a_failed_export_leaves_nothing(
    onnx_encoder: Encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_then_die(model: Any, out: Path) -> None:
        (out / "transformer_0.onnx").write_bytes(b"half a graph")
        raise RuntimeError("killed")

    monkeypatch.setattr(onnx_export, "_export_fp32", half_then_die)
    with pytest.raises(onnx_export.OnnxExportError, match="killed"):
        onnx_export.export_onnx(onnx_encoder.model, "ab" * 32, "fp32", cache_dir=tmp_path)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_unknown_backend_lists_the_choices() -> None:
    with pytest.raises(ModelError, match="'tensorrt'; choose one of torch, onnx, onnx-int8"):
        Encoder(device="cpu", backend="tensorrt")
    assert ENCODER_BACKENDS == ("torch", "onnx", "onnx-int8")
    with pytest.raises(ValueError, match="onnx-int8"):
        Settings(encoder_backend="tensorrt")  # type: ignore[arg-type]


def test_service_uses_the_configured_backend_and_refuses_a_torch_snapshot(
    sample_index: Path, onnx_encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOPSEARCH_ENCODER_BACKEND", "onnx-int8")
    service = SearchService(Settings(index_dir=sample_index, reload_interval_s=0))
    assert service.encoder.backend == "onnx-int8"
    with pytest.raises(SnapshotError, match=r"query tower is .*\+onnx-int8"):
        service.load()


def test_reranker_onnx_backends_score_like_torch(onnx_cache: Path, cross_encoder_dir: Path) -> None:
    from shopsearch.rerank.cross_encoder import Reranker

    query = "cordless drill"
    torch_scores = Reranker(cross_encoder_dir, device="cpu").score(query, TEXTS)
    fp32 = Reranker(cross_encoder_dir, device="cpu", backend="onnx")
    int8 = Reranker(cross_encoder_dir, device="cpu", backend="onnx-int8")
    # Cached under the weights' checksum; the classifier graph outputs one logit per pair.
    export_dir = onnx_cache / "onnx" / model_info(cross_encoder_dir).sha256[:16]
    for precision in ("fp32", "int8"):
        meta = json.loads((export_dir / precision / "export.json").read_text())
        assert meta["outputs"] == ["logits"], meta
    assert fp32.backend == "onnx" and fp32.info.id.endswith("+onnx")
    assert fp32.info.sha256 != int8.info.sha256
    fp32_scores, int8_scores = fp32.score(query, TEXTS), int8.score(query, TEXTS)
    assert fp32_scores.shape == (len(TEXTS),) and fp32_scores.dtype == np.float32
    np.testing.assert_allclose(fp32_scores, torch_scores, atol=1e-4)
    # Dynamic int8 follows the CPU's kernels (AVX2 vs AVX-512 VNNI round differently), and
    # this head is untrained, so its scores span little beyond quantisation noise: 0.93
    # to 0.99 measured across machines. Int8's ranking quality is gated in the eval reports.
    assert np.corrcoef(int8_scores, torch_scores)[0, 1] > 0.9
    assert fp32.score(query, []).shape == (0,)
    # The service's default: int8 on this CPU, the same export.
    auto = Reranker(cross_encoder_dir, device="cpu", backend="auto")
    assert auto.backend == "onnx-int8" and auto.info.sha256 == int8.info.sha256
    np.testing.assert_allclose(auto.score(query, TEXTS), int8_scores, rtol=1e-5)


def test_reranker_backend_resolution() -> None:
    from shopsearch.rerank.cross_encoder import RerankerError, resolve_reranker_backend

    assert resolve_reranker_backend("auto", "cpu") == "onnx-int8"
    assert resolve_reranker_backend("auto", "cuda") == "torch"
    assert resolve_reranker_backend("onnx", "cuda") == "onnx"
    with pytest.raises(RerankerError, match="choose one of auto, torch, onnx, onnx-int8"):
        resolve_reranker_backend("tensorrt", "cpu")
