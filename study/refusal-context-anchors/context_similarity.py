"""Largest all-MiniLM-L6-v2 cosine similarity between each preset's demonstration prompts and any prompt of the
built-in evaluation suites: a context's demonstrations must not be (near) copies of evaluation prompts.

    .venv/bin/python study/refusal-context-anchors/context_similarity.py
"""

from __future__ import annotations

import json

from negalign.data.paths import data_dir
from negalign.decontamination import evaluation_prompts
from negalign.evaluation.encoder import SentenceEncoder
from negalign.sampling_context import presets, resolve_context


def main() -> None:
    prompts = evaluation_prompts(data_dir(required=True))
    encoder = SentenceEncoder()
    theirs = encoder.encode(prompts)
    out = {}
    for name in presets():
        demos = [m["content"] for m in resolve_context(name) if m["role"] == "user"]
        best, at = (encoder.encode(demos) @ theirs.T).max(dim=1)
        out[name] = [{"demonstration": d, "max_cosine": round(float(c), 3), "closest": prompts[i]}
                     for d, c, i in zip(demos, best, at.tolist())]
        for row in out[name]:
            print(f"{name:<18} {row['max_cosine']:.3f}  {row['demonstration'][:60]!r} ~ {row['closest'][:60]!r}")
    print(json.dumps({"n_evaluation_prompts": len(prompts)}))


if __name__ == "__main__":
    main()
