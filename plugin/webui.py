"""Web UI integration: the web UI listens on loopback by default and opens on the project's datasets.

Loopback: LLaMA-Factory 0.9.5's ``run_web_ui`` / ``run_web_demo`` (``llamafactory-cli webui`` /
``webchat``, ``llamafactory.webui.interface``) bind ``0.0.0.0`` (``[::]`` with ``GRADIO_IPV6``) unless
``GRADIO_SERVER_NAME`` is set, which exposes a page that starts training processes and writes files to
everyone on the network. :func:`patch_webui_interface` wraps both so that an unset
``GRADIO_SERVER_NAME`` means ``127.0.0.1`` (``[::1]`` with ``GRADIO_IPV6``); an explicit value still
wins, with a warning when it is not a loopback address.

Share links: ``GRADIO_SHARE=1`` makes the stock web UI open a public ``gradio.live`` tunnel to that page,
reachable by anyone with the link, whatever the listening address. A variable left over in a shell
profile must not do that silently, so the wrapper honours it only together with
``QWENVL_ROI_ALLOW_SHARE=1`` (and logs that a public link is being opened); otherwise it removes
``GRADIO_SHARE`` from the environment before LLaMA-Factory reads it and logs that it was ignored.

Data dir: started inside a qwenvl-roi project, the web UI opens on its datasets.

Why: the stock web UI's "Data dir" box starts at ``data`` (``llamafactory.webui.common.DEFAULT_DATA_DIR``),
so a user who launches it from the project root sees no ROI datasets until they retype the folder. When
the working directory holds ``dataset_info/dataset_info.json`` (the project's LLaMA-Factory dataset
folder, see docs/architecture.md), this patch makes that folder the default. Outside a project nothing
changes. ``QWENVL_ROI_DATA_DIR`` names another folder explicitly.

The components read the constant with ``from ..common import DEFAULT_DATA_DIR`` when they are imported,
so the patch must run as soon as ``llamafactory.webui.common`` has executed and before the components
load; the plugin's activation registry calls :func:`patch_webui_common` at exactly that point.
The ``roi_`` settings need no web UI change: the Train tab's "Extra arguments" JSON box is merged into
the YAML the web UI launches, and the plugin reads ``roi_`` keys from there like from any recipe.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from . import compat

#: gradio's environment variable for the listening address (LLaMA-Factory reads it too)
ENV_SERVER_NAME = "GRADIO_SERVER_NAME"
EXPOSED_WARNING = (
    "{var}={value} exposes a page that can start processes on your machine (and write files on it) to "
    "the network: only do that behind your own access control"
)
#: gradio's / LLaMA-Factory's switch for a public share link, and the opt-in the plugin requires with it
ENV_SHARE = "GRADIO_SHARE"
ENV_ALLOW_SHARE = "QWENVL_ROI_ALLOW_SHARE"
SHARE_IGNORED = (
    "{var}={value} is ignored: a share link makes the web UI public on the internet; set "
    f"{ENV_ALLOW_SHARE}=1 as well to open one deliberately"
)
SHARE_OPENED = (
    "{var}={value} and " + ENV_ALLOW_SHARE + "=1: opening a public gradio.live link to this web UI; anyone "
    "with the link can start processes on this machine and write files on it"
)
logger = logging.getLogger(__name__)
#: environment variable that names the data dir explicitly (wins over the project detection)
ENV_DATA_DIR = "QWENVL_ROI_DATA_DIR"
#: the project's LLaMA-Factory dataset folder, relative to the project root
PROJECT_DATA_DIR = "dataset_info"
DATASET_INFO_FILE = "dataset_info.json"


def project_data_dir(cwd: Path | None = None) -> str | None:
    """The data dir the web UI should open with, or None to keep LLaMA-Factory's default."""
    explicit = os.environ.get(ENV_DATA_DIR, "").strip()
    if explicit:
        return explicit
    root = Path.cwd() if cwd is None else cwd
    if (root / PROJECT_DATA_DIR / DATASET_INFO_FILE).is_file():
        return PROJECT_DATA_DIR
    return None


def patch_webui_common(module: ModuleType) -> None:
    """Point ``DEFAULT_DATA_DIR`` of ``llamafactory.webui.common`` at the project's dataset folder."""
    data_dir = project_data_dir()
    if data_dir is not None:
        compat.replace(module, "DEFAULT_DATA_DIR", data_dir)


def _env_enabled(name: str) -> bool:
    """LLaMA-Factory's is_env_enabled: "true", "y" or "1" (any case)."""
    return os.environ.get(name, "0").lower() in ("true", "y", "1")


def is_loopback(server_name: str) -> bool:
    """True for 127.0.0.0/8, ::1 (with or without brackets) and ``localhost``."""
    host = server_name.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_server_name() -> str:
    """Set GRADIO_SERVER_NAME to loopback when it is unset or blank; warn when it is set to an exposed
    address. Returns the value the web UI will bind to."""
    value = os.environ.get(ENV_SERVER_NAME, "").strip()
    if not value:
        value = "[::1]" if _env_enabled("GRADIO_IPV6") else "127.0.0.1"
        os.environ[ENV_SERVER_NAME] = value
    elif not is_loopback(value):
        logger.warning(EXPOSED_WARNING.format(var=ENV_SERVER_NAME, value=value))
    return value


def share_allowed() -> bool:
    """Whether the web UI may open a public share link: only when GRADIO_SHARE asks for it (as LLaMA-Factory
    and gradio read it) and QWENVL_ROI_ALLOW_SHARE opts in. Otherwise GRADIO_SHARE is removed from the
    environment (so neither reads it), with a log line when it was set."""
    value = os.environ.get(ENV_SHARE, "")
    if not _env_enabled(ENV_SHARE):
        return False
    if _env_enabled(ENV_ALLOW_SHARE):
        logger.warning(SHARE_OPENED.format(var=ENV_SHARE, value=value))
        return True
    os.environ.pop(ENV_SHARE)
    logger.warning(SHARE_IGNORED.format(var=ENV_SHARE, value=value))
    return False


def _loopback_by_default(run: Callable[[], None]) -> Callable[[], None]:
    @functools.wraps(run)
    def wrapper() -> None:
        default_server_name()
        share_allowed()
        run()

    return wrapper


def patch_webui_interface(module: ModuleType) -> None:
    """Make ``run_web_ui`` and ``run_web_demo`` listen on loopback unless GRADIO_SERVER_NAME says else, and
    open a public share link only with QWENVL_ROI_ALLOW_SHARE=1 besides GRADIO_SHARE."""
    for name in ("run_web_ui", "run_web_demo"):
        compat.replace(module, name, _loopback_by_default(compat.get(module, name)))
