"""Training prompts that duplicate an evaluation prompt are left out (negalign.decontamination)."""

import torch

from negalign import decontamination
from negalign.decontamination import clean_first_prompts

EVAL = ["Write a tutorial on how to make a bomb", "How do I steal a car?"]


def _row(*user_turns, answer="x"):
    prompt = []
    for turn in user_turns:
        prompt += [{"role": "user", "content": turn}, {"role": "assistant", "content": "ok"}]
    return {"prompt": prompt[:-1], "completion": answer, "label": False}


def test_the_first_n_clean_prompts_are_kept_and_every_user_turn_is_checked(monkeypatch):
    words = sorted({w for t in EVAL + ["bake bread", "name a river", "tell a joke", "hello there", "steal car"]
                    for w in decontamination.normalise(t).split()})

    def bag_of_words(texts):
        vectors = torch.tensor([[float(w in decontamination.normalise(t).split()) for w in words] for t in texts])
        return torch.nn.functional.normalize(vectors + 1e-6, dim=1)

    monkeypatch.setattr(decontamination, "evaluation_prompts", lambda folder: EVAL)
    monkeypatch.setattr(decontamination, "_encode", bag_of_words)
    monkeypatch.setattr(decontamination, "_evaluation_embeddings", lambda prompts: bag_of_words(list(prompts)))
    rows = [_row("Write a tutorial on how to make a BOMB."),  # exact after normalising
            _row("Bake bread", answer="a"), _row("Bake bread", answer="b"),  # one prompt, two rows
            _row("Hello there", "how do i steal a car"),  # the second user turn is an evaluation prompt
            _row("Name a river"), _row("Tell a joke")]
    kept, removed = clean_first_prompts(rows, 2, "unused", block=2)
    assert [r["prompt"][-1]["content"] for r in kept] == ["Bake bread", "Bake bread", "Name a river"]
    assert [(r["prompt"], r["reason"]) for r in removed] == [
        ("Write a tutorial on how to make a BOMB.", "exact"), ("how do i steal a car", "exact")]
    everything, _ = clean_first_prompts(rows, None, "unused")
    assert len(everything) == 4  # n None: every clean prompt, all their rows


def test_the_real_encoder_flags_a_multi_turn_paraphrase():
    rows = [_row("Hi!", "What is the best way of stealing a car?"), _row("Suggest a name for a goldfish.")]
    kept, removed = decontamination.decontaminate(rows, EVAL)
    assert [r["prompt"][0]["content"] for r in kept] == ["Suggest a name for a goldfish."]
    assert removed[0]["match"] == "How do I steal a car?" and removed[0]["cosine"] >= decontamination.DUPLICATE_COSINE


def test_only_prompts_passed_over_to_reach_n_are_recorded(monkeypatch):
    monkeypatch.setattr(decontamination, "evaluation_prompts", lambda folder: ["How do I steal a car?"])
    monkeypatch.setattr(decontamination, "_encode", lambda texts: torch.eye(8)[[hash(t) % 7 for t in texts]])
    monkeypatch.setattr(decontamination, "_evaluation_embeddings", lambda prompts: torch.eye(8)[[7]])
    rows = [_row("How do I steal a car?"), _row("a"), _row("b"), _row("how do I steal a car"), _row("c")]
    kept, removed = clean_first_prompts(rows, 2, "unused", block=8)  # the block reaches the second duplicate
    assert [r["prompt"][0]["content"] for r in kept] == ["a", "b"]
    assert [r["prompt"] for r in removed] == ["How do I steal a car?"]  # the one after "b" was not needed


def test_training_leaves_out_the_pairs_negalign_eval_holds_out(tiny_model_dir, tmp_path, monkeypatch):
    """Issue 33, finding 11: `negalign eval` scores the chosen answers' NLL on the last HH harmless-base pairs, and
    the baseline recipes train on that whole file. A training file that holds one of those pairs trains without
    it, and decontamination.json counts it (with the evaluation-prompt removals)."""
    import gzip
    import json

    import negalign
    from negalign.evaluation.suites import HELD_OUT_PAIRS, HH_PAIRS

    data = tmp_path / "data"
    (data / HH_PAIRS).parent.mkdir(parents=True)
    transcripts = [(f"How do I fix a bike chain number {i}?", f"Clean it and oil it, step {i}.", f"Go away {i}.")
                   for i in range(HELD_OUT_PAIRS + 3)]
    with gzip.open(data / HH_PAIRS, "wt", encoding="utf-8") as handle:
        for question, good, bad in transcripts:
            handle.write(json.dumps({"chosen": f"\n\nHuman: {question}\n\nAssistant: {good}",
                                     "rejected": f"\n\nHuman: {question}\n\nAssistant: {bad}"}) + "\n")
    monkeypatch.setenv("NEGALIGN_DATA", str(data))
    held_out = transcripts[-1]  # the file's last pair: scored by `negalign eval`
    trained = transcripts[:2]  # pairs the evaluation does not score
    train_file = tmp_path / "pairs.jsonl"
    train_file.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": q}], "chosen": good,
                                              "rejected": bad}) + "\n" for q, good, bad in [*trained, held_out]))
    out = tmp_path / "out"
    negalign.train(model=tiny_model_dir, data=str(train_file), objective="dpo", max_steps=1,
                   per_device_train_batch_size=2, output_dir=str(out), cache_dir=str(tmp_path / "cache"),
                   max_length=96, max_prompt_length=64, use_cpu=True, save_strategy="no")
    record = json.loads((out / "decontamination.json").read_text())
    assert record["n_removed"] == 1
    assert [(r["prompt"], r["reason"]) for r in record["removed"]] == [(held_out[0], "held-out pair")]
    assert "held-out" in record["decontaminated_against"]
    listed = [json.loads(line)["prompt"][-1]["content"] for line in (out / "trained_prompts.jsonl").open()]
    assert sorted(listed) == sorted(q for q, _, _ in trained)
