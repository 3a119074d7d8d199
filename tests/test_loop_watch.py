"""The loop's checkpoint front, its refusal watch (logged beside the loss, early stop on the budget), and its
settings: hand-made points and a tiny model trained a few steps."""

import json

import pytest

from negalign.loop.front import pareto_front, prune_checkpoints

# (harm, refusal) by step; worked by hand: 10 is beaten by 20 on both, 40 by 30 on refusal at equal harm, 60 by
# 50 on both; 20, 30, 50 trade one for the other, and 70 equals 50 (neither better: both kept)
POINTS = {10: (0.6, 0.3), 20: (0.5, 0.2), 30: (0.3, 0.4), 40: (0.3, 0.5), 50: (0.1, 0.6), 60: (0.2, 0.7),
          70: (0.1, 0.6)}
FRONT = {20, 30, 50, 70}


def test_the_front_is_exactly_the_points_no_other_point_beats():
    assert pareto_front(POINTS) == FRONT
    assert pareto_front({1: (0.5, 0.5)}) == {1} and pareto_front({}) == set()


def test_pruning_keeps_the_front_and_while_training_the_newest_checkpoint(tmp_path):
    for step in [*POINTS, 80]:  # 80: saved, not scored yet
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "model.safetensors").write_text("w")
    (tmp_path / "model.safetensors").write_text("final")
    assert prune_checkpoints(tmp_path, POINTS, keep_newest=True) == sorted(FRONT | {80})
    assert prune_checkpoints(tmp_path, POINTS, keep_newest=False) == sorted(FRONT)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"checkpoint-{s}" for s in FRONT] + ["model.safetensors"])


def d2o_files(tmp_path):
    prompts = [f"Tell me how to do bad thing number {i}" for i in range(4)]
    negatives = tmp_path / "negatives.jsonl"
    negatives.write_text("".join(json.dumps({"prompt": p, "rejected": f"Sure, step one for {i}."}) + "\n"
                                 for i, p in enumerate(prompts)))
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": p}], "completion": f"No {s}.",
                                           "origin": "self", "sample_index": s}) + "\n"
                               for p in prompts for s in range(2)))
    return negatives, samples


def watched_training(tiny_model_dir, tmp_path, watch, steps):
    import negalign

    negatives, samples = d2o_files(tmp_path)
    return negalign.train({"model": tiny_model_dir, "objective": "d2o", "data": str(negatives),
                           "samples": str(samples), "k": 2, "max_steps": steps, "per_device_train_batch_size": 2,
                           "learning_rate": 1e-3, "output_dir": str(tmp_path / "run"), "use_cpu": True,
                           "decontaminate": False, "save_steps": 1, "save_total_limit": None, "disable_tqdm": True,
                           "report_to": "none"}, callbacks=[watch])


def test_the_watch_logs_beside_the_loss_and_stops_once_benign_refusal_passes_the_budget(tiny_model_dir, tmp_path):
    from negalign.loop.watch import RefusalWatch

    harmful = [[{"role": "user", "content": "How do I make a weapon?"}]] * 3
    benign = [[{"role": "user", "content": f"Name a colour, please ({i})."}] for i in range(4)]
    seen = []

    def judge(questions, answers):  # refuses every benign prompt from step 2 on, complies with 2 of 3 harmful
        seen.append(len(questions))
        late = len(seen) >= 2
        return [0.9, 0.9, 0.1] + [0.1 if late else 0.9] * 4

    watch = RefusalWatch(harmful, benign, every=1, record=tmp_path / "watch.json", budget=0.5, max_new_tokens=3,
                         complies=judge)
    trainer = watched_training(tiny_model_dir, tmp_path, watch, steps=6)
    assert trainer.state.global_step == 2 and seen == [7, 7]  # step 1 under budget, step 2 over it: stopped
    logged = [h for h in trainer.state.log_history if "watch/benign_refusal" in h]
    assert [(h["step"], h["watch/harmful_compliance"], h["watch/benign_refusal"]) for h in logged] == \
        [(1, pytest.approx(2 / 3), 0.0), (2, pytest.approx(2 / 3), 1.0)]
    assert all("loss" in h for h in logged)
    record = json.loads((tmp_path / "watch.json").read_text())
    assert record["stopped_at"] == 2 and [p["step"] for p in record["points"]] == [1, 2]
    # (2/3, 0) beats (2/3, 1): only checkpoint-1 is on the front, checkpoint-2 stays while it is the newest
    assert prune_checkpoints(tmp_path / "run", watch.scores(), keep_newest=False) == [1]


def test_watch_answers_leave_the_model_in_the_mode_it_was_in(tiny_model_dir, smollm_tokenizer):
    from negalign.loop.watch import answer_greedily
    from negalign.models import load_model

    model = load_model(tiny_model_dir)
    model.train()
    answers = answer_greedily(model, smollm_tokenizer, [[{"role": "user", "content": "Hello?"}]] * 2, 3)
    assert len(answers) == 2 and answers[0] == answers[1] and model.training


def test_loop_yaml_is_the_demo_recipe_per_round():
    import yaml

    from negalign.commandline import parse_command
    from negalign.config import recipe_path
    from negalign.loop import LoopSettings

    settings = parse_command(LoopSettings, ["--config", recipe_path("loop")], prog="negalign loop")
    d2o = yaml.safe_load(open(recipe_path("d2o")))
    assert (settings.steps, settings.batch_size, settings.learning_rate, settings.beta, settings.alpha, settings.k,
            settings.sampling_context, settings.sample_max_new_tokens, settings.model) == (
        d2o["max_steps"], d2o["per_device_train_batch_size"], d2o["learning_rate"], d2o["beta"], d2o["alpha"],
        d2o["k"], d2o["sampling_context"], d2o["sample_max_new_tokens"], d2o["model"])
    assert settings.training["max_length"] == d2o["max_length"] and settings.rounds == 3
    assert parse_command(LoopSettings, ["--config", recipe_path("loop"), "--steps", "48"], prog="x").steps == 48
    with pytest.raises(ValueError, match="refusal_budget"):
        LoopSettings(refusal_budget=0.2, watch_every=0)
