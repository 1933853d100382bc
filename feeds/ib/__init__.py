"""Interactive Brokers boundary: the only package that imports ib_async.

- :mod:`feeds.ib.errors` — IB error codes by meaning, :func:`~feeds.ib.errors.classify`, the exceptions;
- :mod:`feeds.ib.session` — :class:`~feeds.ib.session.IBSession`, the one connection (reconnect, alert, re-sync);
- :mod:`feeds.ib.budget` — :class:`~feeds.ib.budget.RequestBudget`, IB's historical-data pacing rules;
- :mod:`feeds.ib.feed` — :class:`~feeds.ib.feed.IBPollingFeed`, a live backtrader feed of closed bars;
- :mod:`feeds.ib.download` — ``python -m feeds.ib.download``: history into the Parquet bar store.

Submodules are imported explicitly (``from feeds.ib.session import IBSession``) so that importing the
package does not load ib_async or backtrader.
"""
