"""The packed row's attention layouts (negalign.attention): the block table by hand, and every layout giving
the unpacked log-probs and gradients (flex: forward only, PyTorch has no FlexAttention backward on a CPU).
The same checks on CUDA, in fp32 and bf16, are in tests/test_cuda.py."""

import pytest
import torch

from negalign.attention import block_table, build_mask, dense_mask, resolve_layout
from negalign.logprobs import naive_sequence_logps, pack_sequences, sequence_logps
from tests.conftest import make_tiny_llama

SHARED = [([5, 6, 7], [8, 9]), ([10], [11, 12, 13, 14]), ([5, 6, 7], [20, 21, 22]), ([3, 4], [2]),
          ([5, 6, 7], [30]), ([10], [40, 41])]


def test_block_table_by_hand():
    # prompt [5, 6] with two completions, then [9] + [10] alone (tests/test_logprobs.py lays this out by hand)
    batch = pack_sequences([([5, 6], [7, 8]), ([9], [10]), ([5, 6], [11, 12, 13])])
    block_of, prefix_of = block_table(batch.blocks, batch.input_ids.shape[1])
    assert block_of.tolist() == [0, 0, 1, 1, 2, 2, 2, 3, 3]
    assert prefix_of.tolist() == [-1, -1, 0, 0, 0, 0, 0, -1, -1]


def test_dense_mask_by_hand():
    batch = pack_sequences([([5, 6], [7]), ([5, 6], [8, 9])])  # [5 6 | 7 | 8 9]: one prompt, two completions
    mask = dense_mask(batch.blocks, 5)[0, 0].int().tolist()
    assert mask == [[1, 0, 0, 0, 0],   # prompt token 0: causal
                    [1, 1, 0, 0, 0],   # prompt token 1
                    [1, 1, 1, 0, 0],   # completion 1: the prompt and itself
                    [1, 1, 0, 1, 0],   # completion 2, token 0: the prompt, not completion 1
                    [1, 1, 0, 1, 1]]   # completion 2, token 1


def test_layout_names():
    assert resolve_layout("auto", "cpu") == "blocks"
    assert resolve_layout("auto", "cuda") in ("flex", "sdpa")
    assert resolve_layout("sdpa", "cpu") == "sdpa"
    with pytest.raises(ValueError, match="packed_attention must be one of"):
        resolve_layout("flash", "cpu")


def _logps_and_grads(layout: str, share: bool = True):
    model = make_tiny_llama(64).train()  # 4 query heads on 2 key/value heads: the GQA path too
    logps = sequence_logps(model, pack_sequences(SHARED, share_prompts=share), attention=layout)
    (logps * torch.arange(1.0, 7.0)).sum().backward()  # distinct weights: no cancelling by symmetry
    return logps.detach(), [p.grad.clone() for p in model.parameters()]


def test_one_masked_call_gives_the_blockwise_logps_and_gradients():
    blocks, blocks_grads = _logps_and_grads("blocks")
    dense, dense_grads = _logps_and_grads("sdpa")
    unshared, unshared_grads = _logps_and_grads("sdpa", share=False)
    with torch.no_grad():
        naive = naive_sequence_logps(make_tiny_llama(64), SHARED)
    for logps in (blocks, dense, unshared):
        assert torch.allclose(logps, naive, atol=1e-5), (logps, naive)
    for a, b, c in zip(blocks_grads, dense_grads, unshared_grads):
        assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)
    assert sum(g.abs().sum() for g in dense_grads) > 0


def test_flex_layout_gives_the_unpacked_logps_without_gradients():
    pytest.importorskip("torch.nn.attention.flex_attention")
    model = make_tiny_llama(64)
    with torch.no_grad():
        flex = sequence_logps(model, pack_sequences(SHARED), attention="flex")
        naive = naive_sequence_logps(model, SHARED)
    assert torch.allclose(flex, naive, atol=1e-5), (flex, naive)


def test_the_mask_is_built_once_per_batch_not_per_layer(monkeypatch):
    import negalign.logprobs as logprobs

    calls = []
    monkeypatch.setattr(logprobs, "build_mask", lambda *a: calls.append(a) or build_mask(*a))
    model = make_tiny_llama(64)  # 2 layers
    with torch.no_grad():
        sequence_logps(model, pack_sequences(SHARED), attention="sdpa")
    assert len(calls) == 1


def test_recomputing_the_head_in_the_backward_gives_the_same_logps_and_gradients():
    """The GPU path keeps no chunk's logits for the backward (they are recomputed there): same numbers."""
    from negalign.logprobs import _token_logps

    results = []
    for recompute in (False, True):
        model = make_tiny_llama(64).train()
        tokens = _token_logps(model, pack_sequences(SHARED), chunk_size=4, recompute_head=recompute)
        (tokens * torch.linspace(0.5, 2.0, tokens.numel())).sum().backward()
        results.append((tokens.detach(), [p.grad.clone() for p in model.parameters()]))
    (kept, kept_grads), (recomputed, recomputed_grads) = results
    assert torch.equal(kept, recomputed)
    for a, b in zip(kept_grads, recomputed_grads):
        assert torch.allclose(a, b, atol=1e-6)
    assert sum(g.abs().sum() for g in recomputed_grads) > 0


@pytest.mark.parametrize("layout, mask_type", [("blocks", tuple), ("sdpa", torch.Tensor), ("flex", "BlockMask")])
def test_the_layout_asked_for_is_the_one_that_runs(layout, mask_type, monkeypatch):
    import negalign.attention as attention

    seen = []
    original = attention.packed_attention
    monkeypatch.setattr(attention, "packed_attention",
                        lambda *a, negalign_mask=None, **k: seen.append(negalign_mask) or original(*a, negalign_mask=negalign_mask, **k))
    from transformers import AttentionInterface

    AttentionInterface.register(attention.PACKED_ATTENTION, attention.packed_attention)
    try:
        with torch.no_grad():
            sequence_logps(make_tiny_llama(64), pack_sequences(SHARED), attention=layout)
    finally:
        AttentionInterface.register(attention.PACKED_ATTENTION, original)
    assert len(seen) == 2  # one call per layer, each handed the one mask built for the batch
    assert all(m is seen[0] for m in seen)
    assert type(seen[0]).__name__ == mask_type if isinstance(mask_type, str) else isinstance(seen[0], mask_type)
