"""`negalign demo` with a generation server (docs/serving.md): the stages that generate from the starting model ask
the loopback server of tests/loopback_server.py (a tiny random model's answers from transformers' `generate`),
and write the rows local decoding writes; the trained models are evaluated locally; no key reaches a file; a
folder drawn locally is not continued through a server. The judge, the data sets and training are stubbed."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
from loopback_server import Loopback, model_server, save_untied_models

from negalign.serving import ServerOptions

HARMFUL = [[{"role": "user", "content": f"Tell me how to do harmful thing {i}"}] for i in range(3)]
BENIGN = [[{"role": "user", "content": f"Write a short note about topic {i}"}] for i in range(4)]
SAMPLED = ("answers", "harmful_anchors", "benign_samples", "benign_answers")  # the files drawn from the model


@pytest.fixture(scope="module")
def models(tmp_path_factory, smollm_tokenizer):
    return save_untied_models(tmp_path_factory, smollm_tokenizer)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def by_key(records: list[dict]) -> dict:
    return {(r["prompt"][-1]["content"], r["sample_index"]): r for r in records}


@pytest.fixture()
def stubbed_stages(tmp_path, monkeypatch):
    """The demo's data stages with their prompts, judge and anchor report stubbed, and every draw greedy (the
    anchors are sampled at temperature 0.7 in the demo: greedy here, so that local and served rows can be
    compared row for row); the starting model's decoding, or the server, is real."""
    import negalign.anchors
    import negalign.data.catalog
    import negalign.data.paths
    import negalign.sampling
    from negalign.evaluation.judge import HarmJudge
    from negalign.settings import SamplingSettings

    def prompts(sources, output, n, folder):
        return HARMFUL if sources == ["harmful"] * 2 else BENIGN

    class Judge:  # by the prompt's number: harmful 0 and 2 comply, benign 1 and 3 are refusals
        def complies(self, questions, texts):
            return [0.9 if int(q[-1]) % 2 == 0 else 0.1 for q in questions]

    monkeypatch.setattr(negalign.sampling, "prompts_for_sampling", prompts)
    monkeypatch.setattr(negalign.sampling, "SamplingSettings",
                        lambda **kw: SamplingSettings(**{**kw, "temperature": 0.0}))
    monkeypatch.setattr(negalign.data.catalog, "resolve_data",
                        lambda name, folder=None: "harmful" if name.startswith("harmful") else "benign")
    monkeypatch.setattr(negalign.data.paths, "data_dir", lambda folder=None: tmp_path)
    monkeypatch.setattr(negalign.anchors, "report_samples_file", lambda *a, **k: {})
    monkeypatch.setattr(negalign.anchors, "format_report", lambda report: "")
    monkeypatch.setattr(HarmJudge, "load", classmethod(lambda cls, *a: Judge()))


def _settings(out: Path, model_dir: str, **changes):
    from negalign.demo import DemoSettings

    return DemoSettings(preset="quick", output=str(out), model=model_dir, k=2, sample_max_new_tokens=8, **changes)


def test_the_demos_sampling_stages_ask_the_server_and_write_local_decodings_rows(models, stubbed_stages, tmp_path,
                                                                                 monkeypatch, capsys):
    from negalign.demo.data import prepare_data

    path, model = models["a"]
    monkeypatch.setenv("DEMO_SERVER_KEY", "sk-DEMO-SECRET-77")
    local = prepare_data(_settings(tmp_path / "local", path), tmp_path / "local", path, {})
    with Loopback(model_server(model, models["tokenizer"])) as server:
        options = ServerOptions(generation_server=server.base_url, server_api_key_env="DEMO_SERVER_KEY")
        served = prepare_data(_settings(tmp_path / "served", path, server=options), tmp_path / "served", path, {})
    for role in SAMPLED:
        mine, theirs = rows(getattr(local, role)), rows(getattr(served, role))
        assert mine and by_key(theirs) == by_key(mine), role  # the same answers, lengths and end flags, row for row
        meta = json.loads(Path(str(getattr(served, role)) + ".meta.json").read_text())
        assert meta["engine"] == "server" and meta["server"]["url"] == server.base_url, role
        assert meta["server"]["check"]["passed"] is True and meta["model"] == path
        assert "engine" not in json.loads(Path(str(getattr(local, role)) + ".meta.json").read_text())
    flagged = {r["prompt"][-1]["content"] for r in rows(served.flagged)}
    assert flagged == {HARMFUL[0][0]["content"], HARMFUL[2][0]["content"]}
    # one model check for every stage (its 3 greedy prompts), then one request per prompt of each stage
    completions = server.completions()
    checks = [c for c in completions if c["max_tokens"] == 32]
    assert len(checks) == 3 and len(completions) == 3 + len(HARMFUL) + len(flagged) + 2 * len(BENIGN)
    assert [r["path"] for r in server.requests].count("/v1/models") == 1
    assert {r["headers"].get("Authorization") for r in server.requests} == {"Bearer sk-DEMO-SECRET-77"}
    # the anchors file D2O reads says the server drew both parts; no file holds the key
    mixed = json.loads(Path(str(served.anchors) + ".meta.json").read_text())
    assert mixed["engine"] == "server" and mixed["mixed_with"][0]["engine"] == "server"
    assert mixed["mixed_with"][0]["server"]["url"] == server.base_url
    written = [f for f in (tmp_path / "served").rglob("*") if f.is_file()]
    assert len(written) > 8 and all(b"sk-DEMO-SECRET-77" not in f.read_bytes() for f in written)
    out, err = capsys.readouterr()
    assert f"the starting model's answers come from the generation server {server.base_url}" in out
    assert "sk-DEMO-SECRET-77" not in out + err


def _stub_run(monkeypatch, evaluated: list):
    import negalign.data.catalog
    import negalign.demo
    import negalign.evaluation.evaluate
    import negalign.evaluation.report
    import negalign.models
    import negalign.pipeline
    from negalign.demo.data import demo_files

    monkeypatch.setattr(negalign.data.catalog, "check_available", lambda *a, **k: None)
    monkeypatch.setattr(negalign.demo, "_check_ifeval", lambda settings: None)
    monkeypatch.setattr(negalign.models, "resolve_model_path", lambda name: "base-model")
    monkeypatch.setattr(negalign.demo, "prepare_data", lambda settings, out, base, timings: demo_files(settings, out))
    monkeypatch.setattr(negalign.pipeline, "train", lambda config: None)
    monkeypatch.setattr(negalign.evaluation.evaluate, "evaluate", evaluated.append)
    monkeypatch.setattr(negalign.evaluation.report, "compare", lambda runs, out, **_: {"runs": runs})


def test_the_starting_model_is_evaluated_through_the_server_and_the_trained_ones_locally(tmp_path, monkeypatch,
                                                                                       capsys):
    from negalign.demo import DemoSettings, run_demo

    evaluated = []
    _stub_run(monkeypatch, evaluated)
    url = "http://demo-user:pw-SECRET@127.0.0.1:9/v1"  # a password in the URL is no more written than the key
    out = tmp_path / "demo"
    settings = DemoSettings(preset="quick", output=str(out), methods=["d2o", "kto"],
                            server=ServerOptions(generation_server=url, served_model="smol"))
    run_demo(settings)
    assert [(e.model, e.reference, e.server.generation_server) for e in evaluated] == [
        ("base-model", None, url), (str(out / "runs" / "d2o"), "base-model", None),
        (str(out / "runs" / "kto"), "base-model", None)]
    assert all(not e.server.enabled for e in evaluated[1:])
    said = [line for line in capsys.readouterr().out.splitlines() if "evaluated locally" in line]
    assert said == ["[negalign demo] the trained models are evaluated locally: the generation server "
                    "http://127.0.0.1:9/v1 serves the starting weights, not theirs"]
    record = json.loads((out / "demo_config.json").read_text())
    assert record["server"] == {**asdict(ServerOptions()), "generation_server": "http://127.0.0.1:9/v1",
                                "served_model": "smol"}
    assert "pw-SECRET" not in (out / "demo_config.json").read_text()


def test_without_a_server_the_demo_evaluates_everything_locally_and_says_nothing_of_it(tmp_path, monkeypatch,
                                                                                      capsys):
    from negalign.demo import DemoSettings, run_demo

    evaluated = []
    _stub_run(monkeypatch, evaluated)
    run_demo(DemoSettings(preset="quick", output=str(tmp_path / "demo")))
    assert len(evaluated) == 2 and not any(e.server.enabled for e in evaluated)
    assert "generation server" not in capsys.readouterr().out
    assert json.loads((tmp_path / "demo" / "demo_config.json").read_text())["server"] == asdict(ServerOptions())


def test_a_folder_drawn_locally_is_not_continued_through_a_server_nor_the_other_way(tmp_path, monkeypatch):
    from negalign.demo import DemoSettings, run_demo
    from negalign.demo.folder import changed_settings, folder_verdict

    local = DemoSettings(preset="quick", output=str(tmp_path / "demo"))
    served = DemoSettings(preset="quick", output=str(tmp_path / "demo"),
                          server=ServerOptions(generation_server="http://127.0.0.1:8000/v1"))
    moved = DemoSettings(preset="quick", output=str(tmp_path / "demo"),  # restarted elsewhere, other limits
                         server=ServerOptions(generation_server="http://10.0.0.2:9000", server_concurrency=2,
                                              served_model="other-name"))
    switch = ("engine: 'local' -> 'server' (the starting model's answers and anchors drawn by negalign's own "
              "decoding are not mixed with ones drawn by a generation server)")
    assert changed_settings(asdict(local), served) == [switch]
    assert changed_settings(asdict(served), local) == [
        "engine: 'server' -> 'local' (the starting model's answers and anchors drawn by a generation server are "
        "not mixed with ones drawn by negalign's own decoding)"]
    assert changed_settings(asdict(served), moved) == []
    older = {k: v for k, v in asdict(local).items() if k != "server"}  # a demo recorded before the setting
    assert changed_settings(older, local) == [] and changed_settings(older, served) == [switch]
    # run_demo refuses the folder in one line, before any stage, unless --overwrite
    _stub_run(monkeypatch, [])
    run_demo(local)
    assert folder_verdict(served)(tmp_path / "demo").startswith(f"holds a demo made with other settings ({switch}")
    with pytest.raises((ValueError, OSError), match="engine: 'local' -> 'server'") as refused:
        run_demo(served)
    assert "--overwrite" in str(refused.value) and "\n" not in str(refused.value)


def test_the_server_settings_are_the_demos_flags_and_a_recipes_keys(tmp_path, monkeypatch):
    import negalign.demo as demo
    from negalign.cli import main
    from negalign.commandline import parse_command
    from negalign.demo import DemoSettings

    seen = []
    monkeypatch.setattr(demo, "run_demo", seen.append)
    assert main(["demo", "--quick", "--generation-server", "http://127.0.0.1:8000/v1", "--server-concurrency", "3",
                 "--served_model", "smol"]) == 0
    assert (seen[-1].server.generation_server, seen[-1].server.server_concurrency, seen[-1].server.served_model) \
        == ("http://127.0.0.1:8000/v1", 3, "smol")
    assert main(["demo", "--quick"]) == 0 and seen[-1].server == ServerOptions()  # default: off
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: smollm2-135m-instruct\nobjective: d2o\ngeneration_server: http://127.0.0.1:8001/v1\n"
                      "server_concurrency: 2\nserver_check_agreement: 0.98\n")
    assert main(["demo", "--quick", "--config", str(recipe)]) == 0
    server = seen[-1].server
    assert (server.generation_server, server.server_concurrency, server.server_check_agreement) == \
        ("http://127.0.0.1:8001/v1", 2, 0.98)
    assert main(["demo", "--quick", "--config", str(recipe), "--server-concurrency", "5"]) == 0  # a flag wins
    assert seen[-1].server.server_concurrency == 5
    # the demo draws its anchors itself: the server is not a training setting of the methods it trains
    made = DemoSettings(preset="quick", config=str(recipe))
    assert made.server.generation_server == "http://127.0.0.1:8001/v1"
    assert not any(key.startswith(("generation_server", "server_", "served_")) for key in made.training)
    with pytest.raises(ValueError, match="generation_server must be an http:// or https:// address"):
        parse_command(DemoSettings, ["--quick", "--generation-server", "127.0.0.1:8000"], prog="negalign demo")
