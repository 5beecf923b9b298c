"""Every `llamafactory-cli api` the docs show listens on loopback only.

LLaMA-Factory 0.9.5's API server binds ``API_HOST``, default ``0.0.0.0`` (every network interface, no
authentication unless ``API_KEY`` is set), so a command copied from the docs must set
``API_HOST=127.0.0.1``; exposing it is a deliberate, documented step. The variable's name is checked in
LLaMA-Factory's own source, so the docs cannot drift from what it reads.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "README.zh-CN.md", *sorted((ROOT / "docs").glob("*.md"))]
#: the command with the VAR=value assignments written before it
API_COMMAND = re.compile(r"((?:[A-Z_][A-Z0-9_]*=\S+\s+)*)llamafactory-cli\s+api\b")


def test_llamafactory_reads_api_host() -> None:
    from llamafactory.api import app

    source = inspect.getsource(app.run_api)
    assert 'os.getenv("API_HOST", "0.0.0.0")' in source  # unset: every interface
    assert 'os.getenv("API_KEY")' in inspect.getsource(app.create_app)


def test_every_api_command_in_the_docs_binds_loopback() -> None:
    found = []
    for doc in DOCS:
        for m in API_COMMAND.finditer(doc.read_text(encoding="utf-8")):
            env = dict(a.split("=", 1) for a in m.group(1).split())
            found.append(doc.name)
            assert env.get("API_HOST") in ("127.0.0.1", "::1"), f"{doc.name}: {m.group(0)!r}"
    assert {"README.md", "README.zh-CN.md", "evaluation.md"} <= set(found)
