"""Converters: parse -> split -> candidates -> prompt -> write (LLaMA-Factory sharegpt datasets)."""
