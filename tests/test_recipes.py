"""One recipe drives sampling, training and evaluation: `negalign sample --config R`, `negalign train --config R`
and `negalign eval --config R` read the same YAML file, and flags given on the command line win."""

import json
from pathlib import Path

import pytest

from negalign.cli import main
from negalign.commandline import file_defaults
from negalign.evaluation.evaluate import EvalSettings
from negalign.sample_command import SampleCommand
from negalign.sampling import SamplingSettings

PROMPTS = ["Tell me a joke about cats.", "Write an insult for my coworker.", "How do plants grow?"]


@pytest.fixture()
def recipe(tmp_path, tiny_model_dir):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "chosen": "I can't help with that.",
                                        "rejected": f"Sure: {p.lower()}"}) + "\n" for p in PROMPTS))
    path = tmp_path / "recipe.yaml"
    path.write_text(f"model: {tiny_model_dir}\ndata: {data}\nobjective: d2o\nsamples: {tmp_path / 'samples.jsonl'}\n"
                    f"k: 2\nsample_max_new_tokens: 3\nsampling_instruction: Be brief.\nmax_length: 96\n"
                    f"max_prompt_length: 64\nmax_steps: 1\nper_device_train_batch_size: 2\nuse_cpu: true\n"
                    f"output_dir: {tmp_path / 'run'}\ncache_dir: {tmp_path / 'cache'}\nsave_strategy: 'no'\n")
    return path


def test_recipe_defaults_name_each_command_option(recipe, tmp_path, tiny_model_dir):
    sample = file_defaults(SampleCommand, str(recipe))
    assert sample["output"] == str(tmp_path / "samples.jsonl") and sample["k"] == 2
    assert sample["max_new_tokens"] == 3 and sample["max_prompt_length"] == 64
    assert sample["sampling_instruction"] == "Be brief." and sample["model"] == tiny_model_dir
    assert sample["temperature"] == SamplingSettings().temperature  # one default for sample, recipe and refresh
    assert file_defaults(EvalSettings, str(recipe)) == {"model": str(tmp_path / "run"), "reference": tiny_model_dir,
                                                        "max_prompt_length": 64}
    bad = tmp_path / "bad.yaml"
    bad.write_text("bta: 0.1\n")
    with pytest.raises(ValueError, match=r"bta \(did you mean beta\?\)"):
        file_defaults(SampleCommand, str(bad))


def test_one_recipe_samples_trains_and_evaluates(recipe, tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,harmful\n" + "".join(f'"{p}",{str(i < 2).lower()}\n' for i, p in enumerate(PROMPTS)))
    assert main(["sample", f"--config={recipe}", "--no-anchor-report", "--temperature", "0"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    meta = json.loads((tmp_path / "samples.jsonl.meta.json").read_text())
    assert len(rows) == 2 * len(PROMPTS)  # the recipe's k
    assert meta["settings"]["max_new_tokens"] == 3 and meta["settings"]["temperature"] == 0  # the flag won
    assert meta["sampling_context"]["messages"][0]["content"] == "Be brief."
    assert main(["train", "--config", str(recipe)]) == 0  # trains on those samples, with the same context
    assert main(["eval", "--config", str(recipe), "--prompts", str(prompts), "--max-new-tokens", "2", "--no-kl",
                 "--data-dir", str(tmp_path / "none"), "--no-progress"]) == 0
    result = json.loads((tmp_path / "run" / "eval" / "eval.json").read_text())
    # committed results carry portable paths (relative to the working folder)
    assert Path(result["model"]).resolve() == (tmp_path / "run").resolve()
    assert Path(result["reference"]).resolve() == Path(tiny_model_dir).resolve()


def test_sample_without_data_or_recipe_says_what_is_missing(capsys):
    assert main(["sample", "--output", "x.jsonl"]) == 2
    assert capsys.readouterr().err.strip() == "negalign sample: --data is required (or a --config recipe that sets it)"


def test_demo_settings_take_the_preset_only_where_unset():
    from negalign.demo.settings import QUICK, DemoSettings

    assert DemoSettings(preset="quick").k == QUICK["k"] and DemoSettings(preset="quick").max_steps == QUICK["max_steps"]
    ablation = DemoSettings(preset="quick", k=0, max_steps=3)
    assert ablation.k == 0 and ablation.max_steps == 3  # 0 is a value, not "use the preset"
    with pytest.raises(ValueError, match="--methods: unknown \\['no-such-objective'\\]"):
        DemoSettings(methods=["no-such-objective"])


def _demo_training(demo, method="d2o"):
    """What run_demo hands `train` for `method`, less the data files and the model options."""
    return {**demo.method_training(method), "k": demo.k, "max_steps": demo.max_steps,
            "per_device_train_batch_size": demo.batch_size, "learning_rate": demo.learning_rate,
            "sampling_context": demo.sampling_context, "use_lora": demo.lora, "seed": demo.seed}


def test_the_demo_trains_d2o_with_the_recipe_of_configs_d2o_yaml():
    # `negalign demo` reads configs/d2o.yaml (packaged as `d2o`) like any recipe: its training keys are the demo's
    import yaml

    from negalign.demo import DemoSettings

    recipe = yaml.safe_load((Path(__file__).parents[1] / "configs" / "d2o.yaml").read_text())
    demo = DemoSettings()
    assert demo.config == "d2o" and Path(demo.config).suffix == ""
    mine = _demo_training(demo)
    shared = set(recipe) - {"data", "samples", "benign_samples", "output_dir", "objective", "model",
                            "sample_batch_size", "sample_max_new_tokens"}
    assert {key: mine[key] for key in shared} == {key: recipe[key] for key in shared}
    assert demo.sample_max_new_tokens == recipe["sample_max_new_tokens"] and demo.model == recipe["model"]
    assert demo.benign_prompts == 192 and recipe["benign_samples"].endswith("benign192-k2.jsonl")
    # the default trains on the benign prompts' refusals too: one negatives file and one anchors file for both
    assert demo.benign_refusals and demo.benign_refusal_share == 1.0
    assert recipe["data"].endswith("d2o_negatives.jsonl") and recipe["samples"].endswith("d2o_anchors.jsonl")


def test_the_demo_follows_its_recipe_file(tmp_path):
    # a change to the recipe is a change to the demo: nothing of it is kept as a constant in the demo's code
    from negalign.demo import DemoSettings

    text = (Path(__file__).parents[1] / "configs" / "d2o.yaml").read_text()
    for old, new in (("max_steps: 144", "max_steps: 7"), ("beta: 0.1", "beta: 0.3"), ("max_length: 384",
                     "max_length: 320"), ("learning_rate: 2.0e-5", "learning_rate: 3.0e-5")):
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    demo = DemoSettings(config=str(path))
    mine = _demo_training(demo)
    assert (mine["max_steps"], mine["beta"], mine["max_length"], mine["learning_rate"]) == (7, 0.3, 320, 3e-5)
    # another method at the same budget keeps its own hyperparameters, not the recipe objective's
    ulma = demo.method_training("ulma")
    assert ulma["beta"] == 0.1 and ulma["logp_reduction"] == "mean" and "alpha" not in ulma
    assert ulma["max_length"] == 320 and demo.method_training("kto")["logp_reduction"] == "sum"
    # --quick's sizes win over the default recipe's, and flags over both
    assert DemoSettings(quick=True).max_steps == 4 and DemoSettings(quick=True, max_steps=9).max_steps == 9


def test_a_packaged_recipe_is_found_by_name_and_a_missing_one_says_which_exist():
    from negalign.config import load_config, recipe_path

    assert Path(recipe_path("d2o")).resolve() == (Path(__file__).parents[1] / "configs" / "d2o.yaml").resolve()
    assert load_config("d2o-lora.yaml").use_lora is True
    with pytest.raises(FileNotFoundError, match="d2x: no such file, and no packaged recipe of that name "
                       "\\(packaged: context_distillation, d2o, d2o-48steps, d2o-lora,"):
        recipe_path("d2x")


def test_the_context_distillation_recipe_has_d2os_anchors_and_budget():
    # issue 31's baseline: the anchors D2O reads as `samples`, at D2O's steps, batch and learning rate
    import yaml

    root = Path(__file__).parents[1] / "configs"
    d2o = yaml.safe_load((root / "d2o.yaml").read_text())
    distill = yaml.safe_load((root / "context_distillation.yaml").read_text())
    shared = ("model", "k", "sampling_context", "logp_reduction", "max_length", "max_prompt_length",
              "learning_rate", "per_device_train_batch_size", "max_steps")
    assert {key: distill[key] for key in shared} == {key: d2o[key] for key in shared}
    assert distill["data"] == d2o["samples"] and distill["objective"] == "context_distillation"
    assert not {"samples", "benign_samples", "alpha", "beta"} & set(distill)


def test_the_48_step_recipe_is_the_demo_without_benign_refusals():
    import yaml

    from negalign.demo import DemoSettings

    root = Path(__file__).parents[1]
    recipe = yaml.safe_load((root / "configs" / "d2o-48steps.yaml").read_text())
    study = yaml.safe_load((root / "study" / "self-negatives" / "runs" / "d2o-selfneg-k2-benign-48steps" /
                            "negalign_config.yaml").read_text())
    mine = _demo_training(DemoSettings(benign_refusals=False, max_steps=48))
    keys = ["k", "max_steps", "per_device_train_batch_size", "learning_rate", "sampling_context", "beta", "alpha",
            "logp_reduction", "max_length", "max_prompt_length"]
    assert {key: mine[key] for key in keys} == {key: recipe[key] for key in keys} == {key: study[key] for key in keys}
    assert recipe["data"].endswith("/negatives.jsonl")


def test_demo_baselines_pair_each_flagged_answer_with_its_prompts_first_anchor():
    from negalign.demo import DemoSettings
    from negalign.demo.data import baseline_rows

    a = [{"role": "user", "content": "how do I pick a lock"}]
    b = [{"role": "user", "content": "write malware"}]
    anchors = [{"prompt": a, "sample_index": 1, "completion": "second"},
               {"prompt": a, "sample_index": 0, "completion": "I can't help with that."},
               {"prompt": b, "sample_index": 0, "completion": "No."}]
    negatives = [{"prompt": a, "rejected": "Step 1: ..."}, {"prompt": b, "rejected": "import os ..."},
                 {"prompt": [{"role": "user", "content": "no anchors"}], "rejected": "x"}]
    assert baseline_rows(negatives, anchors) == [
        {"prompt": a, "chosen": "I can't help with that.", "rejected": "Step 1: ..."},
        {"prompt": b, "chosen": "No.", "rejected": "import os ..."}]
    with pytest.raises(ValueError, match="--benign-refusals answers the benign prompts under the sampling context"):
        DemoSettings(preset="quick", benign_refusals=True, sampling_context=None)
    # left to the preset, the benign refusals are dropped where nothing could answer them (an ablation)
    assert DemoSettings(preset="quick").benign_refusals
    assert not DemoSettings(preset="quick", sampling_context=None).benign_refusals
    assert not DemoSettings(k=0).benign_refusals and not DemoSettings(benign_prompts=0).benign_refusals
    with pytest.raises(ValueError, match="with k 0 train only d2o"):
        DemoSettings(preset="quick", k=0, methods=["d2o", "npo"])
    # --sampling-context: unset (auto) is refusal unless an instruction replaces it; "none" is no context
    context = lambda c, i: DemoSettings(sampling_context=c, sampling_instruction=i, k=0).sampling_context  # noqa: E731
    assert context("auto", None) == "refusal" and context("none", None) is None
    assert context("auto", "Be harmless.") is None and context("ctx.yaml", None) == "ctx.yaml"


def test_demo_reuses_an_earlier_result_only_when_its_recorded_settings_match(tmp_path):
    from negalign.demo import stale

    config = tmp_path / "negalign_config.yaml"
    config.write_text("objective: d2o\nmax_steps: 48\nlearning_rate: 2.0e-05\ndata: results/demo/negatives.jsonl\n")
    assert stale(config, {"objective": "d2o", "max_steps": 48, "learning_rate": 2e-5}) == []
    # the committed demo of an earlier recipe: 16 steps on HH pairs is not this run's model
    assert stale(config, {"max_steps": 16, "data": "results/demo/train_pairs.jsonl"}) == ["max_steps", "data"]
    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps({"settings": {"max_prompts": 12, "max_new_tokens": 64, "seed": 0}}))
    assert stale(evaluation, {"max_prompts": 50, "max_new_tokens": 64, "seed": 0}, key="settings") == ["max_prompts"]
    assert stale(tmp_path / "missing.json", {}) is None  # no record: nothing to reuse
    # a dotted key reads a nested record: the chat template the answers were rendered with
    evaluation.write_text(json.dumps({"settings": {"model_options": {"chat_template": "a.jinja"}}}))
    assert stale(evaluation, {"chat_template": "a.jinja"}, key="settings.model_options") == []
    assert stale(evaluation, {"chat_template": None}, key="settings.model_options") == ["chat_template"]
    # an evaluation recorded before templates were (no model_options) was made with the tokenizer's own
    evaluation.write_text(json.dumps({"settings": {"max_prompts": 12}}))
    assert stale(evaluation, {"chat_template": None}, key="settings.model_options") == []
    config.write_text("objective: d2o\nchat_template: a.jinja\n")
    assert stale(config, {"objective": "d2o", "chat_template": None}) == ["chat_template"]


def test_demo_benign_refusals_become_negatives_with_the_plain_anchors(tmp_path, monkeypatch):
    # the sampling stages stubbed (no model): what prepare_data makes of their files is checked
    import negalign.anchors
    import negalign.data.catalog
    import negalign.data.paths
    import negalign.sampling
    from negalign.demo import DemoSettings
    from negalign.demo.data import prepare_data
    from negalign.evaluation.judge import HarmJudge

    harmful = [[{"role": "user", "content": f"harmful {i}"}] for i in range(3)]
    benign = [[{"role": "user", "content": f"benign {i}"}] for i in range(4)]

    class FakeSampler:
        def __init__(self, settings, base):
            self.k = settings.k

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def __call__(self, prompts, output, what, **changes):
            k, rows = changes.get("k", self.k), []
            for i, prompt in enumerate(prompts):
                text = prompt[-1]["content"]
                for j in range(k):
                    if "under the context" in what:  # benign 0 and 2 refused under the context
                        answer = "I'm sorry, but I can't help with that." if i % 2 == 0 else f"Answer to {text}"
                    elif "benign anchors" in what:
                        answer = f"plain {j} for {text}"
                    elif "anchors" in what:
                        answer = f"I can't help with {text} ({j})"
                    else:  # the model's answers to harmful prompts: all but the last comply
                        answer = "I can't." if text == "harmful 2" else f"Sure: {text}"
                    rows.append({"prompt": prompt, "completion": answer, "sample_index": j})
            Path(output).write_text("".join(json.dumps(r) + "\n" for r in rows))
            context = changes.get("context")
            Path(str(output) + ".meta.json").write_text(json.dumps(
                {"model": "m", "settings": {"k": k}, "sampling_context": {"messages": context} if context else None}))

    def prompts(sources, output, n, folder):
        return harmful if sources == ["harmful"] * 2 else benign

    monkeypatch.setattr("negalign.demo.data._Sampler", FakeSampler)
    monkeypatch.setattr(negalign.sampling, "prompts_for_sampling", prompts)
    monkeypatch.setattr(negalign.data.catalog, "resolve_data", lambda name, folder=None: "harmful"
                        if name.startswith("harmful") else "benign")
    monkeypatch.setattr(negalign.data.paths, "data_dir", lambda folder=None: tmp_path)
    monkeypatch.setattr(negalign.anchors, "report_samples_file", lambda *a, **k: {})
    monkeypatch.setattr(negalign.anchors, "format_report", lambda report: "")

    class Judge:
        def complies(self, questions, texts):
            return [0.1 if "can't" in t else 0.9 for t in texts]

    monkeypatch.setattr(HarmJudge, "load", classmethod(lambda cls, *a: Judge()))
    read = lambda path: [json.loads(line) for line in path.read_text().splitlines()]  # noqa: E731

    (tmp_path / "a").mkdir()
    plain = prepare_data(DemoSettings(preset="quick", k=2, benign_refusals=False, output=str(tmp_path / "a")),
                         tmp_path / "a", "m", {})
    assert plain.pairs.name == "train_pairs.jsonl" and plain.negatives.name == "negatives.jsonl"
    assert [r["prompt"][0]["content"] for r in read(plain.pairs)] == ["harmful 0", "harmful 1"]
    # context distillation's rows: every anchor D2O trains towards (the harmful prompts', then the benign ones'),
    # in one file whose meta says how each part was drawn
    assert plain.anchors.name == "d2o_anchors.jsonl" and plain.samples.name == "samples.jsonl"
    assert read(plain.anchors) == read(plain.samples) + read(plain.benign_samples)
    assert json.loads(Path(str(plain.anchors) + ".meta.json").read_text())["mixed_with"][0]["rows"] == 8

    (tmp_path / "b").mkdir()
    files = prepare_data(DemoSettings(preset="quick", k=2, benign_refusals=True, output=str(tmp_path / "b")),
                         tmp_path / "b", "m", {})
    negatives = read(files.negatives)
    assert files.negatives.name == "d2o_negatives.jsonl"
    # the two harmful negatives, then the refusals of benign 0 and 2 (benign 1 and 3 were answered)
    assert [(n["prompt"][0]["content"], n["rejected"][:8]) for n in negatives] == [
        ("harmful 0", "Sure: ha"), ("harmful 1", "Sure: ha"), ("benign 0", "I'm sorr"), ("benign 2", "I'm sorr")]
    anchors = read(files.samples)
    assert len(anchors) == 2 * 2 + 4 * 2  # K = 2 for the harmful negatives' prompts and for every benign prompt
    assert files.anchors == files.samples  # context distillation reads D2O's anchors file, the same rows
    assert read(files.anchors) == read(plain.anchors)  # whether or not the benign refusals are negatives
    # the mixed anchors file says how each part was drawn: the harmful anchors' context, then the benign ones'
    meta = json.loads(Path(str(files.samples) + ".meta.json").read_text())
    harmful_meta = json.loads((tmp_path / "b" / "samples.jsonl.meta.json").read_text())
    assert meta["sampling_context"] == harmful_meta["sampling_context"] and meta["sampling_context"] is not None
    assert meta["mixed_with"] == [{"file": "benign_samples.jsonl", "rows": 8, "sampling_context": None,
                                   "settings": {"k": 2}}]
    pairs = read(files.pairs)
    assert files.pairs.name == "train_pairs_benign_refusals.jsonl"  # a baseline of the other rows is not reused
    assert pairs[2:] == [{"prompt": benign[0], "chosen": "plain 0 for benign 0", "rejected": negatives[2]["rejected"]},
                         {"prompt": benign[2], "chosen": "plain 0 for benign 2", "rejected": negatives[3]["rejected"]}]

    # half the benign refusals: one of the two, named apart so that the full set's model is not reused
    (tmp_path / "c").mkdir()
    half = prepare_data(DemoSettings(preset="quick", k=2, benign_refusals=True, benign_refusal_share=0.5,
                                     output=str(tmp_path / "c")), tmp_path / "c", "m", {})
    assert half.negatives.name == "d2o_negatives_share0.5.jsonl"
    assert half.pairs.name == "train_pairs_benign_refusals_share0.5.jsonl"
    kept = read(half.negatives)
    assert kept[:2] == negatives[:2] and len(kept) == 3 and kept[2] in negatives[2:]
    assert len(read(half.samples)) == len(anchors)  # every benign prompt keeps its anchors

    # --no-harmful-negatives: D2O's negatives are the benign refusals alone, and its anchor-only rows are read from
    # the whole anchors file (training leaves out the two refused benign prompts, which have a negative); the
    # baselines' rows are the default's
    (tmp_path / "d").mkdir()
    only = prepare_data(DemoSettings(preset="quick", k=2, benign_refusals=True, harmful_negatives=False,
                                     output=str(tmp_path / "d")), tmp_path / "d", "m", {})
    assert only.d2o_negatives.name == "d2o_negatives_benign_only.jsonl"
    assert read(only.d2o_negatives) == negatives[2:] and read(only.negatives) == negatives
    assert read(only.anchor_only) == anchors and only.anchor_only == only.samples
    assert read(only.pairs) == pairs
    with pytest.raises(ValueError, match="it needs --benign-refusals"):
        DemoSettings(preset="quick", benign_refusals=False, harmful_negatives=False)


def test_demo_without_harmful_negatives_hands_d2o_the_benign_refusals_and_every_anchor_as_anchor_only(
        tmp_path, monkeypatch):
    # run_demo's wiring, the stages stubbed: D2O reads the benign-only negatives file and the whole anchors file
    # as its anchor-only rows; KTO keeps the default's pairs
    import negalign.data.catalog
    import negalign.demo
    import negalign.evaluation.evaluate
    import negalign.evaluation.report
    import negalign.models
    import negalign.pipeline
    from negalign.demo import DemoFiles, DemoSettings, run_demo

    named = {name: tmp_path / f"{name}.jsonl" for name in ("answers", "flagged", "negatives", "samples",
                                                           "benign_samples", "pairs", "d2o_negatives")}
    files = DemoFiles(**named, anchors=named["samples"], anchor_only=named["samples"])
    trained = {}
    monkeypatch.setattr(negalign.data.catalog, "check_available", lambda *a, **k: None)
    monkeypatch.setattr(negalign.models, "resolve_model_path", lambda name: "m")
    monkeypatch.setattr(negalign.demo, "prepare_data", lambda settings, out, base, timings: files)
    monkeypatch.setattr(negalign.pipeline, "train", lambda config: trained.setdefault(config["objective"], config))
    monkeypatch.setattr(negalign.evaluation.evaluate, "evaluate", lambda settings: None)
    monkeypatch.setattr(negalign.evaluation.report, "compare", lambda runs, out, **_: {})
    run_demo(DemoSettings(preset="quick", harmful_negatives=False, methods=["d2o", "kto"],
                          output=str(tmp_path / "demo")))
    assert trained["d2o"]["data"] == str(files.d2o_negatives)
    assert trained["d2o"]["benign_samples"] == trained["d2o"]["samples"] == str(files.samples)
    assert trained["kto"]["data"] == str(files.pairs)


def test_keep_share_draws_a_seeded_subset_in_file_order():
    from negalign.demo import DemoSettings
    from negalign.demo.data import keep_share

    rows = [{"i": i} for i in range(10)]
    assert keep_share(rows, 1.0, 0) is rows
    third = keep_share(rows, 0.3, 7)
    assert len(third) == 3 and third == sorted(third, key=lambda r: r["i"]) and third == keep_share(rows, 0.3, 7)
    assert {r["i"] for r in keep_share(rows, 0.5, 1)} != {r["i"] for r in keep_share(rows, 0.5, 2)}
    for bad, message in [(0.0, "must be in"), (1.5, "must be in")]:
        with pytest.raises(ValueError, match=message):
            DemoSettings(preset="quick", benign_refusals=True, benign_refusal_share=bad)
    with pytest.raises(ValueError, match="it needs --benign-refusals"):
        DemoSettings(preset="quick", benign_refusals=False, benign_refusal_share=0.5)


def test_the_default_recipe_is_the_study_run_and_the_demo_default():
    # configs/d2o.yaml is the study's d2o-selfneg-k2-overrefusal-144steps, and `negalign demo` with no flags
    # trains the same recipe
    import yaml

    from negalign.config import load_config
    from negalign.demo import DemoSettings

    root = Path(__file__).parents[1]
    config = load_config(str(root / "configs" / "d2o.yaml"))
    study = yaml.safe_load((root / "study" / "benign-refusal-negatives" / "runs" / "d2o-selfneg-k2-overrefusal-144steps" /
                            "negalign_config.yaml").read_text())
    keys = ["objective", "k", "alpha", "beta", "logp_reduction", "max_length", "max_prompt_length",
            "learning_rate", "per_device_train_batch_size", "max_steps", "sampling_context", "use_lora"]
    assert {key: getattr(config, key) for key in keys} == {key: study.get(key, False) for key in keys}
    mine = _demo_training(DemoSettings())
    assert {key: mine[key] for key in keys if key != "objective"} == \
        {key: getattr(config, key) for key in keys if key != "objective"}


def test_the_no_harmful_negatives_recipe_is_the_default_but_for_its_negatives_and_the_demo_flag():
    # configs/d2o-no-harmful-negatives.yaml: configs/d2o.yaml's settings, the benign refusals as `data` and the
    # whole anchors file as `benign_samples`; `negalign demo --no-harmful-negatives` trains the same recipe
    import yaml

    from negalign.config import load_config
    from negalign.demo import DemoSettings

    root = Path(__file__).parents[1] / "configs"
    default = yaml.safe_load((root / "d2o.yaml").read_text())
    recipe = yaml.safe_load((root / "d2o-no-harmful-negatives.yaml").read_text())
    differ = {key for key in default.keys() | recipe.keys() if default.get(key) != recipe.get(key)}
    assert differ == {"data", "benign_samples", "output_dir"}
    assert recipe["data"].endswith("/benign-refusals.jsonl") and recipe["benign_samples"] == recipe["samples"]
    load_config(str(root / "d2o-no-harmful-negatives.yaml"))  # a valid recipe, checked whole
    plain, without = DemoSettings(), DemoSettings(harmful_negatives=False)
    assert plain.harmful_negatives and _demo_training(without) == _demo_training(plain)


def test_the_lora_recipe_is_the_study_run_and_the_demo_flags():
    # configs/d2o-lora.yaml is the study's LoRA run, and `demo --lora` trains it; without --lora the demo keeps
    # full fine-tuning at its own learning rate
    import yaml

    from negalign.config import load_config
    from negalign.demo import DemoSettings

    root = Path(__file__).parents[1]
    config = load_config(str(root / "configs" / "d2o-lora.yaml"))
    study = yaml.safe_load((root / "study" / "benign-refusal-negatives" / "runs" / "d2o-selfneg-k2-overrefusal-lora-r16-lr2e-4-144steps" /
                            "negalign_config.yaml").read_text())
    keys = ["objective", "k", "alpha", "beta", "logp_reduction", "max_length", "max_prompt_length", "learning_rate",
            "per_device_train_batch_size", "max_steps", "sampling_context", "use_lora", "lora_r", "lora_alpha",
            "lora_target_modules", "lora_dropout"]
    assert {key: getattr(config, key) for key in keys} == {key: study[key] for key in keys}
    demo = DemoSettings(lora=True)
    assert demo.config == "d2o-lora"
    mine = {"lora_target_modules": config.lora_target_modules, "lora_dropout": config.lora_dropout,  # defaults
            **_demo_training(demo)}
    assert {key: mine[key] for key in keys if key != "objective"} == \
        {key: getattr(config, key) for key in keys if key != "objective"}
    assert DemoSettings().learning_rate == 2e-5 and DemoSettings(lora=True, learning_rate=1e-4).learning_rate == 1e-4
