"""Files a user names are checked where they are opened: a model folder's files must be regular files inside it.

Used by the engine (``loading.resolve_source``) and by the user's pool (``userpool.add_local``) before anything
reads a byte of them.
"""
from __future__ import annotations

import stat
from pathlib import Path

from core.errors import ModelSourceError


def check_folder_files(folder: Path) -> None:
    """Every file a loader may open in a local model folder (its configs, tokenizer and weights, all at the top
    level) must be a regular file inside the folder: a link to a file elsewhere would read what the user was not
    allowed to name (a system file, another user's model), and a pipe or device would hang the read. Links into the
    Hugging Face hub cache are allowed: that is how a downloaded snapshot is laid out."""
    from huggingface_hub.constants import HF_HUB_CACHE  # only its cache's path

    root, hub = Path(folder).resolve(), Path(HF_HUB_CACHE).resolve()
    for entry in sorted(Path(folder).iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            continue                                     # loaders read the top level only
        target = entry.resolve()
        if entry.is_symlink() and not (target.is_relative_to(root) or target.is_relative_to(hub)):
            raise ModelSourceError(f"{entry} is a link to {target}, outside the model folder: copy the file into "
                                   "the folder instead of linking to it.")
        try:
            mode = entry.stat().st_mode
        except OSError:
            raise ModelSourceError(f"{entry} is a broken link: remove it or copy the file it pointed to.") from None
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise ModelSourceError(f"{entry} is not a regular file (a pipe, socket or device): remove it from the "
                                   "model folder.")
