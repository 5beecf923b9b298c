"""``GRADIO_SHARE=1`` alone does not open a public gradio.live link: sharing needs QWENVL_ROI_ALLOW_SHARE=1
as well, and the log says which way it went.

The web UI is meant to stay on loopback (test_webui_listen.py); gradio's share link tunnels it to a public
URL. A fresh process imports the real ``llamafactory.webui.interface`` (the plugin patches it at import)
and calls its ``run_web_ui`` / ``run_web_demo`` under each environment; only gradio's page is replaced by
a recorder of ``launch()``'s arguments, so no tunnel is opened (the network is blocked here anyway).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

_LAUNCH = r"""
import json, os, sys
import llamafactory.webui.interface as interface

class _Page:
    def queue(self):
        return self

    def launch(self, **kwargs):
        print("LAUNCH " + json.dumps(kwargs), file=sys.stderr, flush=True)

interface.create_ui = lambda *a, **k: _Page()
interface.create_web_demo = lambda *a, **k: _Page()
for entry, env in json.loads(sys.argv[1]):
    for var in ("GRADIO_SHARE", "QWENVL_ROI_ALLOW_SHARE", "GRADIO_SERVER_NAME"):
        os.environ.pop(var, None)
    os.environ.update(env)
    print("CASE", file=sys.stderr, flush=True)
    getattr(interface, entry)()
"""

CASES = [
    ("run_web_ui", {"GRADIO_SHARE": "1"}),
    ("run_web_demo", {"GRADIO_SHARE": "1"}),
    ("run_web_ui", {"GRADIO_SHARE": "true", "QWENVL_ROI_ALLOW_SHARE": "1"}),
    ("run_web_demo", {"GRADIO_SHARE": "y", "QWENVL_ROI_ALLOW_SHARE": "true"}),
    ("run_web_ui", {"QWENVL_ROI_ALLOW_SHARE": "1"}),  # allowed but not asked: no link
    ("run_web_ui", {}),
]


def test_share_needs_an_explicit_opt_in() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRADIO_", "QWENVL_ROI_ALLOW"))}
    env.update(GRADIO_ANALYTICS_ENABLED="False", DISABLE_VERSION_CHECK="1")
    argv = [sys.executable, "-c", _LAUNCH, json.dumps(CASES)]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    logs = proc.stderr.split("CASE\n")[1:]
    assert len(logs) == len(CASES), proc.stderr[-3000:]
    launched = []
    for log in logs:
        line = next(x for x in log.splitlines() if x.startswith("LAUNCH "))
        launched.append(json.loads(line.removeprefix("LAUNCH ")))
    assert [k["share"] for k in launched] == [False, False, True, True, False, False], launched
    assert all(k["server_name"] == "127.0.0.1" for k in launched), launched
    for log in logs[:2]:
        assert "GRADIO_SHARE=1 is ignored" in log and "QWENVL_ROI_ALLOW_SHARE=1" in log, log
    for log in logs[2:4]:
        assert "opening a public gradio.live link" in log, log
    for log in logs[4:]:
        assert "GRADIO_SHARE" not in log and "gradio.live" not in log, log
