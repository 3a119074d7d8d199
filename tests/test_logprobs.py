import pytest
import torch

from negalign.logprobs import (
    naive_sequence_logps, pack_sequences, pad_token_logps, reduce_token_logps, sequence_logps, token_logps,
)
from tests.conftest import make_tiny_llama

SEQUENCES = [([5, 6, 7], [8, 9]), ([10], [11, 12, 13, 14]), ([3, 4, 5, 6, 7, 8], [2])]


def test_packing_layout_by_hand():
    batch = pack_sequences([([5, 6], [7, 8]), ([9], [10])])
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, 10]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 0, 1]]
    # position 1 (token 6) predicts 7, position 2 predicts 8, position 4 (token 9) predicts 10
    assert batch.target_positions.tolist() == [1, 2, 4]
    assert batch.target_ids.tolist() == [7, 8, 10]
    assert batch.target_sequence.tolist() == [0, 0, 1]
    assert batch.completion_lengths.tolist() == [2, 1]


def test_packed_logps_equal_naive_full_logits_fp32():
    model = make_tiny_llama(64)
    with torch.no_grad():
        fast = sequence_logps(model, pack_sequences(SEQUENCES), chunk_size=3)
        naive = naive_sequence_logps(model, SEQUENCES)
    assert torch.allclose(fast, naive, atol=1e-5), (fast, naive)


def test_bounded_rows_give_the_same_logps_with_little_padding():
    model = make_tiny_llama(64)
    batch = pack_sequences(SEQUENCES, row_tokens=8)
    # lengths 5, 5, 7 -> first-fit decreasing into rows of <= 8 tokens: [7], [5], [5]
    assert batch.input_ids.shape == (3, 7)
    assert batch.position_ids[1].tolist() == [0, 1, 2, 3, 4, 0, 1]  # dummy block restarts at 0
    with torch.no_grad():
        rows = sequence_logps(model, batch)
        naive = naive_sequence_logps(model, SEQUENCES)
    assert torch.allclose(rows, naive, atol=1e-5)
    two = pack_sequences(SEQUENCES, row_tokens=12)  # [7, 5] and [5]
    assert two.input_ids.shape == (2, 12)
    with torch.no_grad():
        assert torch.allclose(sequence_logps(model, two), naive, atol=1e-5)


def test_each_sequence_is_independent_of_its_neighbours():
    model = make_tiny_llama(64)
    with torch.no_grad():
        together = sequence_logps(model, pack_sequences(SEQUENCES))
        alone = torch.stack([sequence_logps(model, pack_sequences([s]))[0] for s in SEQUENCES])
    assert torch.allclose(together, alone, atol=1e-5)


def test_mean_reduction_divides_by_completion_length():
    model = make_tiny_llama(64)
    batch = pack_sequences(SEQUENCES)
    with torch.no_grad():
        tokens = token_logps(model, batch)
    sums = reduce_token_logps(tokens, batch, "sum")
    means = reduce_token_logps(tokens, batch, "mean")
    assert torch.allclose(means, sums / torch.tensor([2.0, 4.0, 1.0]))
    padded, mask = pad_token_logps(tokens, batch)
    assert mask.sum(1).tolist() == [2, 4, 1]
    assert torch.allclose((padded * mask).sum(1), sums)
    with pytest.raises(ValueError, match="logp_reduction"):
        reduce_token_logps(tokens, batch, "max")


def test_gradient_flows_to_the_model():
    model = make_tiny_llama(64).train()
    sequence_logps(model, pack_sequences(SEQUENCES)).sum().backward()
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
