"""Sampling settings are checked before anything expensive (issue 33, finding 6): `--temperature -1` sampled the
inverted distribution with exit 0, `--max-new-tokens -5` crashed after loading the model and left an empty
output behind, `--batch-size 0` said `range() arg 3 must not be zero`."""

import pytest

from negalign.cli import main
from negalign.sampling import SamplingSettings


@pytest.mark.parametrize("flag, value, message", [
    ("--temperature", "-1", "temperature: must be >= 0, got -1.0"),
    ("--max-new-tokens", "-5", "max_new_tokens: must be >= 1, got -5"),
    ("--batch-size", "0", "batch_size: must be >= 1, got 0"),
    ("--k", "0", "k: must be >= 1, got 0"),
    ("--top-p", "1.5", "top_p: must be in (0, 1], got 1.5"),
])
def test_a_bad_number_stops_sample_in_one_line_before_any_output(flag, value, message, tmp_path, capsys):
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "Hello?", "rejected": "no"}\n')
    out = tmp_path / "samples.jsonl"
    assert main(["sample", "--data", str(data), "--output", str(out), "--model", str(tmp_path / "no-model"),
                 flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert list(tmp_path.iterdir()) == [data]  # nothing written: no output, no meta, no decontamination record


def test_good_settings_pass_and_greedy_is_allowed():
    assert SamplingSettings(temperature=0.0, k=1).temperature == 0.0
