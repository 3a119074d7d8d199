"""docs/python.md's examples run as written, in order, on a tiny random-weight model (issue 34): only the first
block, which names the model and output folder, is replaced."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "python.md"


def test_every_python_example_in_docs_python_md_runs(tiny_model_dir, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 4 and blocks[0].lstrip().startswith("# the names the examples use")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NEGALIGN_CACHE", str(tmp_path / "cache"))
    # the examples' recipes leave use_cpu unset: a GPU would be used where there is one, not in this suite
    namespace = {"MODEL": tiny_model_dir, "OUT": str(tmp_path / "runs")}
    for number, block in enumerate(blocks[1:], start=2):
        try:
            exec(compile(block, f"docs/python.md block {number}", "exec"), namespace)
        except Exception as error:  # say which example broke
            raise AssertionError(f"docs/python.md block {number} failed: {type(error).__name__}: {error}") from error
    assert namespace["trainer"].state.global_step == 2  # the last training example (D2O) ran its steps
    assert (tmp_path / "runs" / "dpo-lora" / "adapter_model.safetensors").exists()
    assert namespace["trl_style"].state.global_step == 1 and (tmp_path / "runs" / "trl-style" / "README.md").exists()
    assert namespace["report"].n_rows_written == 4  # 2 prompts x K 2
