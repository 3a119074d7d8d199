"""Downloading the catalog's sets that have no Hugging Face Hub copy, from raw GitHub URLs pinned to a commit
(negalign.data.catalog holds the entries; this module knows nothing of them but what it is handed).

One set may be several files (the JailbreakBench artifacts are 18). All of them are downloaded into a staging
folder beside the data, each is checked to parse as the readers expect (a JSON list of instructions, a
JailbreakBench artifact, a CSV with the columns read), and only when every one passes are they moved into place,
each through negalign.files.atomic_output: a corrupt, refused or interrupted download of a set writes nothing.
urllib only (no new dependency), with a timeout; under HF_HUB_OFFLINE=1 nothing is tried, and the error says
where to get the files by hand.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

RAW = "https://raw.githubusercontent.com"
TIMEOUT = 60  # seconds a download may wait for data before it is given up


@dataclass(frozen=True)
class GitHub:
    """Files of a GitHub repository at one commit: `path` is a file, or, with `files`, the folder holding them
    (each name is the same under `path` in the repository and under the entry's local folder)."""

    repo: str                    # owner/name
    commit: str                  # 40 hex digits: what is downloaded cannot change under the same entry
    path: str
    files: tuple[str, ...] = ()

    def urls(self) -> list[tuple[str, str]]:
        """(raw URL, name under the local path; "" for a single file) for every file."""
        base = "/".join(part for part in (RAW, self.repo, self.commit, self.path) if part)
        return [(base, "")] if not self.files else [(f"{base}/{name}", name) for name in self.files]

    def page(self) -> str:
        """The file's or folder's page on GitHub, at the pinned commit (for a person to download by hand)."""
        page = f"https://github.com/{self.repo}/{'tree' if self.files else 'blob'}/{self.commit}"
        return f"{page}/{self.path}" if self.path else page

    def describe(self) -> str:
        count = f" ({len(self.files)} files)" if self.files else ""
        return f"github.com/{self.repo} at {self.commit[:10]}, {self.path}{count}"


class Unavailable(OSError):
    """Nothing could be downloaded (offline, no network, the server refused): the message says where to get
    the set by hand."""


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def by_hand(source: GitHub, target: Path) -> str:
    if not source.files:
        return f"get it by hand from {source.page()} into {target}"
    return (f"get the {len(source.files)} files under {source.page()} by hand into {target}, keeping their "
            f"folders ({source.files[0]}, ...)")


# ------------------------------------------------------------------------------------- what a file must be

def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"is not JSON ({error})") from None


def _instructions(path: Path, name: str) -> None:
    items = _json(path)
    if not isinstance(items, list) or not items:
        raise ValueError("is not a non-empty JSON list")
    bad = next((n for n, item in enumerate(items) if not isinstance(item, dict)
                or not isinstance(item.get("instruction"), str)), None)
    if bad is not None:
        raise ValueError(f"item {bad} has no \"instruction\" text")


def _jbb_artifact(path: Path, name: str) -> None:
    record = _json(path)
    if not isinstance(record, dict):
        raise ValueError("is not a JSON object")
    if name.endswith("attack-info.json"):
        return
    parameters, rows = record.get("parameters"), record.get("jailbreaks")
    if not isinstance(parameters, dict) or not {"method", "model"} <= set(parameters):
        raise ValueError("has no parameters.method and parameters.model (not a JailbreakBench artifact)")
    if not isinstance(rows, list) or not rows:
        raise ValueError("has no jailbreaks list (not a JailbreakBench artifact)")
    bad = next((n for n, row in enumerate(rows)
                if not isinstance(row, dict) or not {"goal", "response", "jailbroken"} <= set(row)), None)
    if bad is not None:
        raise ValueError(f"jailbreaks[{bad}] lacks goal, response or jailbroken")


def _csv(path: Path, name: str, columns: tuple[str, ...]) -> None:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            rows = sum(1 for _ in reader)
    except (UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"is not CSV ({error})") from None
    absent = [c for c in columns if c not in header]
    if absent:
        raise ValueError(f"has no column(s) {', '.join(absent)} (its header: {', '.join(header) or 'none'})")
    if not rows:
        raise ValueError("has a header and no rows")


def check_file(kind: str, path: Path, name: str) -> None:
    """Raise ValueError (the reason) unless the downloaded file `path` (named `name` in the set) is what the
    readers take: kind "instructions", "jbb-artifact", or "csv:COLUMN,COLUMN,...". """
    if kind == "instructions":
        _instructions(path, name)
    elif kind == "jbb-artifact":
        _jbb_artifact(path, name)
    elif kind.startswith("csv:"):
        _csv(path, name, tuple(kind.removeprefix("csv:").split(",")))
    else:
        raise ValueError(f"unknown check {kind!r}")


# ------------------------------------------------------------------------------------------------ fetching

def _download(url: str, destination: Path, timeout: float) -> None:
    import http.client
    import shutil
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(destination, "wb") as sink:
            shutil.copyfileobj(response, sink)
    except (OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or error
        raise Unavailable(f"could not download {url} ({type(error).__name__}: {reason})") from None


def fetch_github(name: str, source: GitHub, check: str, target: Path, overwrite: bool = False,
                 timeout: float = TIMEOUT) -> Path:
    """Download set `name` (the files of `source`) to `target` (its file, or its folder when `source` has
    several files); files already there are kept unless `overwrite`. Raises Unavailable (offline, network,
    HTTP error; with where to get it by hand) or ValueError (a file that does not parse), having written
    nothing."""
    from negalign.files import atomic_output

    wanted = [(url, target / local if local else target) for url, local in source.urls()]
    todo = [(url, path) for url, path in wanted if overwrite or not path.exists()]
    if not todo:
        return target
    if offline():
        raise Unavailable(f"data set {name!r}: offline (HF_HUB_OFFLINE=1), not downloaded; "
                          f"{by_hand(source, target)}")
    root = target.parent
    while not root.exists():  # staged in the nearest existing folder above the set (the same file system)
        root = root.parent
    with tempfile.TemporaryDirectory(prefix=".negalign-fetch-", dir=root) as staging:
        staged = []
        for number, (url, path) in enumerate(todo):
            file = Path(staging) / str(number)
            try:
                _download(url, file, timeout)
            except Unavailable as error:
                raise Unavailable(f"data set {name!r}: {error}; nothing written; {by_hand(source, target)}") from None
            try:
                check_file(check, file, path.name)
            except ValueError as error:
                raise ValueError(f"data set {name!r}: {url} {error}; nothing written") from None
            staged.append((file, path))
        for file, path in staged:  # every file parsed: move each into place
            with atomic_output(path) as tmp:
                os.replace(file, tmp)
    return target
