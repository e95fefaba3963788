"""The Hugging Face hub: is it reachable now (a quick probe), and is a name a hub id?"""

from __future__ import annotations

import os
import re
import threading

OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DREAMBOOTH_NB_OFFLINE")
HUB_ADDRESS = ("huggingface.co", 443)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PROBE_SECONDS = 3.0


def is_hub_id(name: str) -> bool:
    """True for names shaped like 'owner/repo'."""
    return bool(HUB_ID.match(str(name)))


def offline_reason(offline: bool | None = None, timeout: float = PROBE_SECONDS) -> str | None:
    """Why the hub cannot be used now (a flag, or no answer from huggingface.co), or None when it can."""
    if offline:
        return "offline=True was passed"
    if offline is None:
        for name in OFFLINE_FLAGS:
            if os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}:
                return f"{name}={os.environ[name]} is set"
        if not hub_reachable(timeout):
            return f"{HUB_ADDRESS[0]}:{HUB_ADDRESS[1]} could not be reached (probe of {timeout:g} s)"
    return None


def hub_reachable(timeout: float = PROBE_SECONDS) -> bool:
    """True when a TCP connection to huggingface.co:443 opens within `timeout` seconds (name lookup included)."""
    import socket

    result = []

    def probe():
        try:
            socket.create_connection(HUB_ADDRESS, timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])
