"""The real web UI listens on loopback unless GRADIO_SERVER_NAME says otherwise (read from the kernel).

Stock LLaMA-Factory 0.9.5 binds 0.0.0.0; the plugin's start-up hook makes 127.0.0.1 the default in the
processes that serve the web UI (`llamafactory-cli webui`, `webchat`). The listening address is read from
/proc/net/tcp and /proc/net/tcp6, not from our code.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import pytest
from qwenvl_roi.plugin.webui import ENV_SERVER_NAME, default_server_name, is_loopback

LISTEN = "0A"


def _address(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # /proc/net/tcp6 prints four host-order 32-bit words
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return str(ipaddress.IPv6Address(words))


def listening_addresses(port: int) -> list[str]:
    """Local addresses of sockets in LISTEN state on ``port``, from the kernel's tables."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).is_file():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            addr, hex_port = fields[1].split(":")
            if fields[3] == LISTEN and int(hex_port, 16) == port:
                found.append(_address(addr))
    return sorted(found)


def _serve(command: list[str], cwd: Path, server_name: str | None, port: int) -> list[str]:
    env = {
        **os.environ,
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
    }
    env.pop(ENV_SERVER_NAME, None)
    env.pop("GRADIO_IPV6", None)
    if server_name is not None:
        env[ENV_SERVER_NAME] = server_name
    log = cwd / f"{command[0]}.log"
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("llamafactory-cli")), *command],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 300
            while not (addresses := listening_addresses(port)):
                assert proc.poll() is None, f"{command[0]} exited early:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"{command[0]} did not listen within 300 s"
                time.sleep(0.5)
        finally:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
    return addresses


@pytest.mark.slow
def test_webui_listens_on_loopback_by_default(tmp_path: Path, free_port: Callable[[], int]) -> None:
    assert _serve(["webui"], tmp_path, None, free_port()) == ["127.0.0.1"]  # stock LLaMA-Factory: 0.0.0.0


@pytest.mark.slow
def test_explicit_server_name_wins_for_webchat(
    tmp_path: Path, tiny_qwen2_5_vl: Path, free_port: Callable[[], int]
) -> None:
    command = ["webchat", "--model_name_or_path", str(tiny_qwen2_5_vl), "--template", "qwen2_vl"]
    assert _serve(command, tmp_path, "127.0.0.2", free_port()) == ["127.0.0.2"]


def test_default_and_explicit_server_name(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(ENV_SERVER_NAME, raising=False)
    monkeypatch.delenv("GRADIO_IPV6", raising=False)
    assert default_server_name() == "127.0.0.1" and os.environ[ENV_SERVER_NAME] == "127.0.0.1"
    monkeypatch.delenv(ENV_SERVER_NAME)
    monkeypatch.setenv("GRADIO_IPV6", "1")
    assert default_server_name() == "[::1]"
    with caplog.at_level(logging.WARNING):
        monkeypatch.setenv(ENV_SERVER_NAME, "0.0.0.0")
        assert default_server_name() == "0.0.0.0"
    assert "GRADIO_SERVER_NAME=0.0.0.0 exposes" in caplog.text
    assert [is_loopback(n) for n in ("127.0.0.2", "[::1]", "localhost", "0.0.0.0", "[::]", "10.0.0.5")] == [
        True,
        True,
        True,
        False,
        False,
        False,
    ]
