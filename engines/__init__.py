"""The engines: each wires the one ``MLStrategy`` to its own data and broker (backtest here, live beside it)."""
