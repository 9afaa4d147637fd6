"""create_block_mask and BlockMask against a dense evaluation of the mods."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flex_fa4
from mod_codegen import UnsupportedModError
from flex_fa4 import BlockMask, and_masks, create_block_mask, noop_mask, or_masks
from flex_fa4.mods import (causal_mask, doc_ids_from_offsets, generate_doc_mask, generate_prefix_lm_mask,
                           generate_sliding_window)

from dense_reference import dense_mask


def _expected_blocks(mask_mod, B, H, Q, KV, bq, bkv):
    dense = dense_mask(mask_mod, B, H, Q, KV)
    nq, nk = -(-Q // bq), -(-KV // bkv)
    padded = torch.zeros(B, H, nq * bq, nk * bkv, dtype=torch.bool)
    padded[:, :, :Q, :KV] = dense
    count = padded.reshape(B, H, nq, bq, nk, bkv).sum(dim=(3, 5))
    return (count > 0) & (count < bq * bkv), count == bq * bkv


def _variant(draw_kind, Q, KV, rnd):
    doc = torch.sort(torch.randint(0, 4, (max(Q, KV),), generator=rnd)).values
    return {
        "noop": noop_mask,
        "causal": causal_mask,
        "sliding": generate_sliding_window(int(torch.randint(1, 40, (1,), generator=rnd))),
        "doc": generate_doc_mask(doc),
        "prefix": generate_prefix_lm_mask(int(torch.randint(0, Q + 1, (1,), generator=rnd))),
        "and_or": or_masks(and_masks(causal_mask, generate_sliding_window(7)), generate_prefix_lm_mask(3)),
        "per_head": lambda b, h, q, kv: (q - kv) % (h + 2) == b,
    }[draw_kind]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["noop", "causal", "sliding", "doc", "prefix", "and_or", "per_head"]),
    B=st.sampled_from([None, 1, 2]), H=st.sampled_from([None, 1, 3]),
    Q=st.integers(1, 150), KV=st.integers(1, 150),
    bq=st.sampled_from([16, 32, 64, 128]), bkv=st.sampled_from([16, 32, 64, 128]),
    seed=st.integers(0, 2**31 - 1),
)
def test_block_classification_matches_dense(kind, B, H, Q, KV, bq, bkv, seed):
    rnd = torch.Generator().manual_seed(seed)
    mod = _variant(kind, Q, KV, rnd)
    if kind == "per_head" and (B is None or H is None):
        B, H = B or 1, H or 1
    bm = create_block_mask(mod, B, H, Q, KV, device="cpu", BLOCK_SIZE=(bq, bkv))
    partial, full = bm.block_states()
    exp_partial, exp_full = _expected_blocks(mod, B or 1, H or 1, Q, KV, bq, bkv)
    assert torch.equal(partial, exp_partial)
    assert torch.equal(full, exp_full)
    # transposed lists describe the same blocks
    n_q = partial.shape[2]
    from flex_fa4.block_mask import _dense_from_ordered
    assert torch.equal(_dense_from_ordered(bm.q_num_blocks, bm.q_indices, n_q), partial.transpose(-1, -2))
    assert torch.equal(_dense_from_ordered(bm.full_q_num_blocks, bm.full_q_indices, n_q), full.transpose(-1, -2))
    assert bm.kv_indices.dtype == torch.int32 and bm.kv_num_blocks.dtype == torch.int32


def test_each_evaluated_chunk_stays_within_the_budget(monkeypatch):
    """No call of the mask evaluator sees more than _CHUNK_ELEMENTS (q, kv) pairs
    (beyond one query block per row, its minimum)."""
    from flex_fa4 import block_mask as bm_module

    seen = []
    real = bm_module.evaluate

    def spy(graph, inputs, *args, **kwargs):
        seen.append(inputs["q_idx"].numel() * inputs["kv_idx"].numel())
        return real(graph, inputs, *args, **kwargs)

    monkeypatch.setattr(bm_module, "evaluate", spy)
    monkeypatch.setattr(bm_module, "_CHUNK_ELEMENTS", 128 * 1024)
    doc = doc_ids_from_offsets(torch.tensor([0, 700, 2048]))
    create_block_mask(generate_doc_mask(doc), None, None, 2048, 2048, BLOCK_SIZE=64, device="cpu")
    assert len(seen) > 1 and max(seen) <= 128 * 1024


def test_chunked_evaluation_bounds_memory(monkeypatch):
    """Force tiny chunks: the result must not change."""
    from flex_fa4 import block_mask as bm_module

    doc = doc_ids_from_offsets(torch.tensor([0, 100, 130, 400, 512]))
    mod = generate_doc_mask(doc)
    whole = create_block_mask(mod, None, None, 512, 512, BLOCK_SIZE=32, device="cpu")
    monkeypatch.setattr(bm_module, "_CHUNK_ELEMENTS", 1)
    chunked = create_block_mask(mod, None, None, 512, 512, BLOCK_SIZE=32, device="cpu")
    assert torch.equal(whole.to_dense(), chunked.to_dense())
    assert torch.equal(whole.block_states()[1], chunked.block_states()[1])


def test_from_kv_blocks_round_trip():
    bm = create_block_mask(causal_mask, 2, 1, 300, 200, BLOCK_SIZE=(64, 32), device="cpu")
    again = BlockMask.from_kv_blocks(bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks, bm.full_kv_indices,
                                     BLOCK_SIZE=(64, 32), mask_mod=causal_mask, seq_lengths=(300, 200))
    for name in ("q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices"):
        assert torch.equal(getattr(bm, name), getattr(again, name)), name
    assert again.shape == (2, 1, 300, 200)


def test_views_repr_sparsity_and_to():
    bm = create_block_mask(causal_mask, None, None, 512, 512, BLOCK_SIZE=128, device="cpu")
    assert bm.sparsity() == pytest.approx(100 * (1 - 10 / 16))
    assert bm.to_dense().tolist() == [[[[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]]]
    text = repr(bm)
    assert "causal_mask" in text and "█" in text and "░" in text
    moved = bm.to("cpu")
    assert torch.equal(moved.kv_indices, bm.kv_indices) and moved.mask_mod is causal_mask
    assert bm.as_tensors().block_size_q == 128


def test_long_document_mask_builds_in_bounded_memory():
    """A long document mask (16k tokens on CPU, chunked) builds without the dense mask."""
    S = 16384
    doc = doc_ids_from_offsets(torch.tensor([0, 3000, 3001, 9000, 16000, S]))
    bm = create_block_mask(generate_doc_mask(doc), None, None, S, S, device="cpu")
    assert bm.kv_num_blocks.shape == (1, 1, 128)
    assert bm.sparsity() > 50


def test_create_block_mask_errors():
    with pytest.raises(TypeError, match="callable"):
        create_block_mask("causal", 1, 1, 8, 8, device="cpu")
    with pytest.raises(ValueError, match="positive"):
        create_block_mask(causal_mask, 1, 1, 0, 8, device="cpu")
    with pytest.raises(UnsupportedModError, match="boolean"):
        create_block_mask(lambda b, h, q, kv: q - kv, 1, 1, 8, 8, device="cpu")


def test_public_names():
    for name in ("flex_attention", "create_block_mask", "BlockMask", "and_masks", "or_masks", "noop_mask",
                 "AuxRequest", "explain"):
        assert hasattr(flex_fa4, name)


def test_from_kv_blocks_rejects_inconsistent_lists():
    num = torch.tensor([[[1, 1]]], dtype=torch.int32)
    idx = torch.tensor([[[[0, 1], [1, 0]]]], dtype=torch.int32)
    with pytest.raises(ValueError, match="both as partial and as full"):
        BlockMask.from_kv_blocks(num, idx, num, idx, BLOCK_SIZE=16)
    with pytest.raises(ValueError, match="outside"):
        BlockMask.from_kv_blocks(num, torch.tensor([[[[2, 0], [1, 0]]]], dtype=torch.int32), BLOCK_SIZE=16)
    with pytest.raises(ValueError, match="twice"):
        BlockMask.from_kv_blocks(num + 1, torch.tensor([[[[0, 0], [1, 1]]]], dtype=torch.int32), BLOCK_SIZE=16)
    with pytest.raises(ValueError, match="must lie in"):
        BlockMask.from_kv_blocks(num + 2, idx, BLOCK_SIZE=16)
