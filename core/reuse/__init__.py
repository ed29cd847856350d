"""Reusing models: finetuning, task search from a few examples, merging adapters."""
