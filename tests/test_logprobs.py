import pytest
import torch

from negalign.attention import PACKED_ATTENTION
from negalign.logprobs import (
    naive_sequence_logps,
    pack_sequences,
    pad_token_logps,
    reduce_token_logps,
    sequence_logps,
    token_logps,
)
from tests.conftest import make_tiny_llama

SEQUENCES = [([5, 6, 7], [8, 9]), ([10], [11, 12, 13, 14]), ([3, 4, 5, 6, 7, 8], [2])]


def test_packing_layout_by_hand():
    batch = pack_sequences([([5, 6], [7, 8]), ([9], [10])])
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, 10]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 0, 1]]
    assert batch.blocks.tolist() == [[0, 4, 0, 0], [4, 2, 0, 0]]  # one causal block per sequence
    # position 1 (token 6) predicts 7, position 2 predicts 8, position 4 (token 9) predicts 10
    assert batch.target_positions.tolist() == [1, 2, 4]
    assert batch.target_ids.tolist() == [7, 8, 10]
    assert batch.target_sequence.tolist() == [0, 0, 1]
    assert batch.completion_lengths.tolist() == [2, 1]


def test_shared_prompt_layout_by_hand():
    # two completions of prompt [5, 6] and one of [9]: the prompt [5, 6] is laid out once
    batch = pack_sequences([([5, 6], [7, 8]), ([9], [10]), ([5, 6], [11, 12, 13])])
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 11, 12, 13, 9, 10]]
    # completions continue the prompt's positions, as if each followed it alone
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 2, 3, 4, 0, 1]]
    # (start, length, prefix start, prefix length): the prompt, then each completion seeing the prompt
    assert batch.blocks.tolist() == [[0, 2, 0, 0], [2, 2, 0, 2], [4, 3, 0, 2], [7, 2, 0, 0]]
    # position 1 (last prompt token) predicts the first token of both completions of [5, 6]
    assert batch.target_positions.tolist() == [1, 2, 7, 1, 4, 5]
    assert batch.target_ids.tolist() == [7, 8, 10, 11, 12, 13]
    assert batch.target_sequence.tolist() == [0, 0, 1, 2, 2, 2]
    unshared = pack_sequences([([5, 6], [7, 8]), ([9], [10]), ([5, 6], [11, 12, 13])], share_prompts=False)
    assert unshared.input_ids.numel() == 4 + 2 + 5


def test_packed_logps_equal_naive_full_logits_fp32():
    model = make_tiny_llama(64)
    with torch.no_grad():
        fast = sequence_logps(model, pack_sequences(SEQUENCES), chunk_size=3)
        naive = naive_sequence_logps(model, SEQUENCES)
    assert torch.allclose(fast, naive, atol=1e-5), (fast, naive)


SHARED = [([5, 6, 7], [8, 9]), ([10], [11, 12, 13, 14]), ([5, 6, 7], [20, 21, 22]), ([3, 4], [2]),
          ([5, 6, 7], [30]), ([10], [40, 41])]


def test_shared_prompts_give_the_unshared_logps_and_gradients():
    """Encoding a prompt once for all its completions is exact: same log-probs, and the same gradients
    (every completion's gradient flows back through the one shared copy of the prompt)."""
    results = []
    for share in (True, False):
        model = make_tiny_llama(64).train()
        logps = sequence_logps(model, pack_sequences(SHARED, share_prompts=share))
        (logps * torch.arange(1.0, 7.0)).sum().backward()  # distinct weights: no cancelling by symmetry
        results.append((logps.detach(), [p.grad.clone() for p in model.parameters()]))
    (shared, shared_grads), (unshared, unshared_grads) = results
    with torch.no_grad():
        naive = naive_sequence_logps(make_tiny_llama(64), SHARED)
    assert torch.allclose(shared, naive, atol=1e-5) and torch.allclose(unshared, naive, atol=1e-5)
    for a, b in zip(shared_grads, unshared_grads):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert sum(g.abs().sum() for g in shared_grads) > 0


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_block_attention_is_scoped_to_the_packed_forward(implementation):
    """A packed forward runs block attention; the model keeps its own attention implementation for every
    other forward (generation, evaluation, left-padded batches), with the same results as before."""
    model = make_tiny_llama(64)
    model.set_attn_implementation(implementation)
    ids = torch.tensor([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        packed = sequence_logps(model, pack_sequences(SEQUENCES))
        assert model.config._attn_implementation == implementation
        after = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(before[mask.bool()], after[mask.bool()], atol=1e-6)
    assert torch.allclose(packed, naive_sequence_logps(model, SEQUENCES), atol=1e-4)


def test_block_attention_stays_on_under_gradient_checkpointing():
    """The backward re-runs checkpointed forwards outside the packed call: the switch must stay then (the
    recompute test below checks the gradients), and ordinary forwards still give SDPA's results."""
    model = make_tiny_llama(64).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    before = model(input_ids=ids).logits.detach()
    sequence_logps(model, pack_sequences(SEQUENCES)).sum().backward()
    assert model.config._attn_implementation == PACKED_ATTENTION
    assert torch.allclose(model(input_ids=ids).logits.detach(), before, atol=1e-6)


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


def test_gradient_checkpointing_recomputes_the_same_block_attention():
    """Checkpointing re-runs each layer's forward during backward: the blocks must travel with it (a
    recompute under plain SDPA would attend across sequences and give other gradients)."""
    grads = []
    for checkpointing in (False, True):
        model = make_tiny_llama(64).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        sequence_logps(model, pack_sequences(SHARED)).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("bias", [False, True])
def test_head_logits_is_the_linear_head_with_its_gradients(bias):
    """weight @ hidden^T (the faster layout on CPU) gives F.linear's logits and the same gradients for the
    hidden states and the head's weight; a head that is not a plain Linear runs its own forward."""
    import torch.nn.functional as F

    from negalign.logprobs import head_logits

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 300, bias=bias)
    hidden = torch.randn(2, 5, 16, requires_grad=True)
    target = torch.randint(0, 300, (10,))
    grads = []
    for logits_of in (lambda h: F.linear(h, head.weight, head.bias), lambda h: head_logits(head, h)):
        logits = logits_of(hidden)
        assert logits.shape == (2, 5, 300)
        F.cross_entropy(logits.reshape(10, 300), target).backward()
        grads.append((logits.detach(), hidden.grad.clone(), head.weight.grad.clone()))
        hidden.grad = head.weight.grad = None
        if bias:
            head.bias.grad = None
    for ours, theirs in zip(grads[1], grads[0]):
        assert torch.allclose(ours, theirs, atol=1e-5)
    scaled = torch.nn.Sequential(head, torch.nn.Tanh())  # not a Linear: its own forward
    assert torch.equal(head_logits(scaled, hidden), scaled(hidden))
