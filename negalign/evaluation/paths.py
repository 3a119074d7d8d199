"""Where the offline data sets live: `--data-dir`, else `$NEGALIGN_DATA`, else `../shared/data` beside the
current directory when it exists (the layout of this workplace: the checkout sits next to `shared/`)."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "NEGALIGN_DATA"


def data_dir(explicit: str | os.PathLike | None = None, *, required: bool = False) -> Path | None:
    """The data directory, or None when none is set and the default is absent (raises if `required`).

    An explicit path or `$NEGALIGN_DATA` is returned even if it does not exist yet, so the caller's error
    names the path the user asked for; only the implicit default is checked for existence.
    """
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    default = Path.cwd().parent / "shared" / "data"
    if default.is_dir():
        return default
    if required:
        raise FileNotFoundError(f"no data directory: pass --data-dir DIR or set ${DATA_ENV} "
                                f"(the default {default} does not exist)")
    return None
