"""What a saved model carries besides its weights: the resolved config and the package versions."""

from __future__ import annotations

import json
import os
import platform
from importlib.metadata import PackageNotFoundError, version

import yaml

from negalign.files import atomic_write_text

PACKAGES = ("negalign", "torch", "transformers", "datasets", "peft", "accelerate")


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def write_provenance(output_dir: str, config) -> None:
    os.makedirs(output_dir, exist_ok=True)
    resolved = {k: v for k, v in config.to_dict().items() if not k.startswith("_")}
    atomic_write_text(os.path.join(output_dir, "negalign_config.yaml"),
                      yaml.safe_dump(json.loads(json.dumps(resolved, default=str)), sort_keys=True))
    atomic_write_text(os.path.join(output_dir, "versions.json"), json.dumps(package_versions(), indent=2))
