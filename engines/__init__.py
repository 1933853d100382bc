"""The engines that run ``MLStrategy``: the backtest engine and the live engine (see ``engines/README.md``)."""
