"""Interactive Brokers adapter: everything that talks to IB, and the only package that imports ib_async.

It knows nothing of the strategy or the engines: it turns IB messages into backtrader bars, order events and
plain records, and requests into IB calls (nautilus_trader's ``adapters/interactive_brokers`` shape).

- :mod:`feeds.ib.errors` — IB error codes by meaning, :func:`~feeds.ib.errors.classify`, the exceptions;
- :mod:`feeds.ib.session` — :class:`~feeds.ib.session.IBSession`, the one connection (reconnect, alert, re-sync);
- :mod:`feeds.ib.mapping` — pure tables and conversions: order types and statuses, ``orderRef``, IB fills and
  open orders as :class:`~feeds.ib.mapping.ExecutionRecord` / :class:`~feeds.ib.mapping.OpenOrderRecord`;
- :mod:`feeds.ib.budget` — :class:`~feeds.ib.budget.RequestBudget`, IB's historical-data pacing rules;
- :mod:`feeds.ib.feed` — :class:`~feeds.ib.feed.IBPollingFeed`, a live backtrader feed of closed bars;
- :mod:`feeds.ib.journal` — :class:`~feeds.ib.journal.OrderJournal`, the interface the broker persists orders
  and fills through (the live engine implements it);
- :mod:`feeds.ib.broker` — :class:`~feeds.ib.broker.IBBroker`, backtrader's broker on an IB account;
- :mod:`feeds.ib.account` — executions, open orders, positions and marks as records outside a backtrader run,
  and the flatten orders;
- :mod:`feeds.ib.download` — ``python -m feeds.ib.download``: history into the Parquet bar store.

Submodules are imported explicitly (``from feeds.ib.session import IBSession``) so that importing the
package does not load ib_async or backtrader.
"""
