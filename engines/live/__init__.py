"""The live engine: the same ``MLStrategy`` as the backtest on IB's polling feeds and broker (``feeds.ib``).

- :mod:`engines.live.node` — :func:`~engines.live.node.build_live` (Cerebro wiring) and
  :class:`~engines.live.node.LiveHooks` (entry gate, restore at start, persist after every bar, daily summary);
- :mod:`engines.live.state` — :class:`~engines.live.state.StateStore`, the SQLite memory across crashes;
- :mod:`engines.live.recovery` — restoring books after a restart and adopting trades the store lost from IB;
- :mod:`engines.live.safety` — paper-only checks, the kill switch and flatten-everything;
- :mod:`engines.live.heartbeat` — the heartbeat file the health check reads;
- :mod:`engines.live.reports` — the decision log and the daily summary;
- :mod:`engines.live.notify` — the webhook client (Slack, Telegram, JSON);
- :mod:`engines.live.rehearsal` — rehearsals: ibsim started in-process, an external simulator's clock.

Nothing here talks to IB's client library: IB is reached through the adapter :mod:`feeds.ib` (its session,
feeds, broker, the order journal interface the state store implements, and plain records of executions and open
orders).
"""
