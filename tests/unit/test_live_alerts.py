"""A disconnection alert goes to the webhook as well as the log."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from config.settings import load_config
from engines.live import node


def test_session_alert_is_posted_to_the_configured_webhook(monkeypatch: pytest.MonkeyPatch) -> None:
    posted: list[tuple[Any, str, Any]] = []
    def fake_post(webhook: Any, text: str, payload: Any = None) -> bool:
        posted.append((webhook, text, payload))
        return True

    monkeypatch.setattr(node, "post_message", fake_post)
    cfg = load_config("config/paper.toml", ["live.webhook.kind=slack"])
    session = SimpleNamespace(on_alert=[])

    node.alert_to_webhook(session, cfg)  # type: ignore[arg-type]
    for callback in session.on_alert:
        callback("IB disconnected for 300 s; still trying")

    assert len(posted) == 1
    webhook, text, payload = posted[0]
    assert webhook.kind == "slack"
    assert text.startswith("ALERT mlx:")
    assert "IB disconnected for 300 s" in text
    assert payload == {"alert": "IB disconnected for 300 s; still trying"}
