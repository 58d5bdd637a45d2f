"""The GPU machine's model bundle (eval/cuda_bundle.py): what unpacks there is the model
that was packed here, in fp16 precision, with only the unused word pieces zeroed."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from shopsearch.eval.cuda_bundle import WORD_EMBEDDINGS, pack_model, unpack


def test_pack_then_unpack_keeps_the_used_rows_and_every_file(tmp_path: Path) -> None:
    model = tmp_path / "model"
    (model / "1_Pooling").mkdir(parents=True)
    (model / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (model / "vocab.txt").write_text("[PAD]\nwood\nscrew\n")
    generator = torch.Generator().manual_seed(0)
    weights = {
        WORD_EMBEDDINGS: torch.randn(50, 8, generator=generator),
        "encoder.layer.0.output.dense.weight": torch.randn(8, 8, generator=generator),
        "embeddings.position_ids": torch.arange(16).unsqueeze(0),
    }
    save_file(weights, str(model / "model.safetensors"))

    kept = pack_model(model, tmp_path / "model.tar.xz", {0, 3, 7})
    out = unpack(tmp_path / "there", tmp_path / "model.tar.xz")

    assert kept == 3
    assert (out / "1_Pooling" / "config.json").read_text() == '{"pooling_mode_mean_tokens": true}'
    assert (out / "vocab.txt").read_text() == "[PAD]\nwood\nscrew\n"
    assert not (out / "model.fp16.safetensors").exists()
    back = load_file(str(out / "model.safetensors"))
    assert back.keys() == weights.keys()
    rows = back[WORD_EMBEDDINGS]
    assert rows.dtype == torch.float32
    torch.testing.assert_close(
        rows[[0, 3, 7]], weights[WORD_EMBEDDINGS][[0, 3, 7]], rtol=1e-3, atol=1e-3
    )
    assert rows[[1, 2, 4, 5, 6, 49]].abs().sum() == 0
    dense = "encoder.layer.0.output.dense.weight"
    torch.testing.assert_close(back[dense], weights[dense], rtol=1e-3, atol=1e-3)
    assert torch.equal(back["embeddings.position_ids"], weights["embeddings.position_ids"])
