"""Reading and writing sysctls through /proc/sys."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)
ROOT = Path("/proc/sys")


def path(name: str) -> Path:
    return ROOT / name.replace(".", "/")


def read(name: str) -> str | None:
    try:
        return path(name).read_text().strip()
    except OSError:
        return None


def write(name: str, value: str | int) -> bool:
    """Set ``name`` when it differs; False (with a warning) when it cannot be set."""
    value = str(value)
    if read(name) == value:
        return True
    try:
        path(name).write_text(value)
    except OSError as exc:
        log.warning("cannot set sysctl name=%s value=%s error=%s", name, value, exc.strerror)
        return False
    log.info("sysctl set name=%s value=%s", name, value)
    return True
