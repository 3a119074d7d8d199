"""Where the offline data sets live. The first that applies wins:

1. an explicit folder (`--data-dir`, `data_dir=`);
2. `$NEGALIGN_DATA`;
3. `shared/data` beside the repository negalign is installed from (found from this file, so any working
   directory works: the layout of a checkout next to `shared/`);
4. `../shared/data` from the working directory (a checkout's layout when negalign is installed elsewhere);
5. `~/.cache/negalign/data` (`$NEGALIGN_CACHE/data`), where `negalign data fetch` downloads when none of the
   above exists.

Without any of them, catalog names fall back to the Hugging Face Hub (negalign.data.catalog).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "NEGALIGN_DATA"
REPOSITORY = Path(__file__).resolve().parents[2]  # negalign/data/paths.py -> the checkout


def download_dir() -> Path:
    """Where `negalign data fetch` puts data sets when no data directory exists yet (5 above)."""
    from negalign.models import cache_dir

    return cache_dir() / "data"


def default_data_dirs() -> list[Path]:
    """The implicit candidates (3 to 5 above), in order."""
    return [REPOSITORY.parent / "shared" / "data", Path.cwd().parent / "shared" / "data", download_dir()]


def data_dir(explicit: str | os.PathLike | None = None, *, required: bool = False) -> Path | None:
    """The data directory, or None when none is set and no default exists (raises if `required`).

    An explicit path or `$NEGALIGN_DATA` is returned even if it does not exist yet, so the caller's error
    names the path the user asked for; only the implicit defaults are checked for existence.
    """
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    for candidate in default_data_dirs():
        if candidate.is_dir():
            return candidate
    if required:
        raise FileNotFoundError(f"no data directory: pass --data-dir DIR or set ${DATA_ENV} (neither "
                                f"{' nor '.join(str(p) for p in default_data_dirs())} exists); "
                                "`negalign data fetch` downloads the data sets into it")
    return None
