"""Silence transformers' and the Hub's own progress bars and log lines: the engine reports progress itself."""
from __future__ import annotations


def quiet_transformers() -> None:
    import huggingface_hub.utils  # heavy: imported by the code that loads models, not before
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
