"""Access to the Hugging Face hub (timm's and transformers' pretrained weights): fail fast offline.

huggingface_hub retries an unreachable hub for about a minute before giving up. While camscope
loads from the hub, :func:`hub_access` first checks in a few seconds whether the hub's host
answers; if it does not, it switches huggingface_hub to offline mode (cached files only) for the
duration, so a model that is not cached fails at once with camscope's one-line error.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

logger = logging.getLogger("camscope.models")

CONNECT_TIMEOUT_S = 3.0


def hub_reachable(timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub's endpoint (``HF_ENDPOINT``) opens within ``timeout``."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def hub_access() -> Iterator[bool]:
    """Context for hub downloads; yields whether the hub may be contacted (False: cache only).

    Offline mode set by the user (``HF_HUB_OFFLINE=1``) is kept; otherwise an unreachable hub
    turns it on until the block ends (restored in ``finally``)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        yield False
        return
    if hub_reachable():
        yield True
        return
    logger.info("the Hugging Face hub (%s) cannot be reached; using the local cache only", constants.ENDPOINT)
    constants.HF_HUB_OFFLINE = True
    try:
        yield False
    finally:
        constants.HF_HUB_OFFLINE = False
