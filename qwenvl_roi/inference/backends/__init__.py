"""Scoring backends, one module each (the protocol and the registry: qwenvl_roi/inference/backend.py).

- ``hf`` (hf.py): transformers, with LLaMA-Factory's training collator and a KV cache cut at a token.
"""
