"""LLaMA-Factory plugin: activation hook, roi_ settings, parameter selection, optimizer groups."""
