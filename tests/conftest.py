"""Session-wide test environment: offline Hugging Face, caches in a temporary HF_HOME."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="qwenvl-roi-hf-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
