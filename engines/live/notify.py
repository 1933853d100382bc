"""Post a message to a webhook: Slack (``{"text"}``), Telegram (``sendMessage``) or generic JSON.

The URL (and the Telegram chat id) come from environment variables named in the config, never from a file,
and are never logged. Standard library only (``urllib``), with a timeout; a failure is logged and reported
as ``False``, never raised — a notification must not stop trading.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)


def build_request(kind: str, url: str, text: str, payload: Mapping[str, Any] | None = None,
                  chat_id: str | None = None) -> urllib.request.Request:
    """Return the HTTP POST for ``kind`` (``slack``, ``telegram`` or ``json``)."""
    if kind == "slack":
        body: dict[str, Any] = {"text": text}
    elif kind == "telegram":
        if not chat_id:
            raise ValueError("telegram needs a chat id")
        body = {"chat_id": chat_id, "text": text}
        if not url.rstrip("/").endswith("sendMessage"):
            url = url.rstrip("/") + "/sendMessage"
    elif kind == "json":
        body = {"text": text, **(payload or {})}
    else:
        raise ValueError(f"unknown webhook kind {kind!r}")
    return urllib.request.Request(url, data=json.dumps(body, default=str).encode("utf-8"), method="POST",
                                  headers={"Content-Type": "application/json"})


def post_message(webhook: Any, text: str, payload: Mapping[str, Any] | None = None,
                 env: Mapping[str, str] | None = None) -> bool:
    """Post ``text`` (and for ``json`` the ``payload``) to the webhook configured in ``webhook``.

    Parameters
    ----------
    webhook
        ``cfg.live.webhook`` (kind, url_env, telegram_chat_id_env, timeout_seconds).
    text
        The message.
    payload
        Extra JSON fields for the generic ``json`` kind.
    env
        Environment (``os.environ`` by default).

    Returns
    -------
    bool
        True when the server answered 2xx; False when not configured or on any failure (logged).
    """
    if webhook.kind == "none":
        return False
    env = os.environ if env is None else env
    url = env.get(webhook.url_env, "")
    if not url:
        logger.warning("webhook %s: environment variable %s is not set; nothing posted", webhook.kind,
                       webhook.url_env)
        return False
    try:
        request = build_request(webhook.kind, url, text, payload, env.get(webhook.telegram_chat_id_env))
        with urllib.request.urlopen(request, timeout=webhook.timeout_seconds) as response:
            ok = 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        logger.error("webhook %s post failed (%s); the summary is in the log folder", webhook.kind, reason)
        return False
    if not ok:
        logger.error("webhook %s answered HTTP %s", webhook.kind, response.status)
    return ok
