"""IB error codes classified by meaning (feeds.ib.errors.classify)."""

from __future__ import annotations

import pytest

from feeds.ib.errors import (
    CONNECTIVITY_LOST_CODES,
    CONNECTIVITY_RESTORED_CODES,
    FARM_INFO_CODES,
    FATAL_CODES,
    NO_DATA_CODES,
    NO_PERMISSION_CODES,
    ORDER_REJECTION_CODES,
    WARNING_CODES,
    ErrorKind,
    NeedsHumanError,
    TemporaryIBError,
    classify,
)

PACING_TEXT = "Historical Market Data Service error message:Historical data request pacing violation"


@pytest.mark.parametrize(("codes", "kind"), [
    (CONNECTIVITY_LOST_CODES, ErrorKind.CONNECTIVITY_LOST),
    (CONNECTIVITY_RESTORED_CODES, ErrorKind.CONNECTIVITY_RESTORED),
    (ORDER_REJECTION_CODES, ErrorKind.ORDER_REJECTED),
    (NO_DATA_CODES, ErrorKind.NO_DATA),
    (NO_PERMISSION_CODES, ErrorKind.NO_PERMISSION),
    (FARM_INFO_CODES, ErrorKind.INFO),
    (WARNING_CODES, ErrorKind.WARNING),
    (FATAL_CODES, ErrorKind.FATAL),
])
def test_every_code_of_a_named_set_classifies_to_its_kind(codes: frozenset[int], kind: ErrorKind) -> None:
    assert {code: classify(code) for code in codes} == dict.fromkeys(codes, kind)


def test_named_sets_do_not_overlap() -> None:
    sets = [CONNECTIVITY_LOST_CODES, CONNECTIVITY_RESTORED_CODES, ORDER_REJECTION_CODES, NO_DATA_CODES,
            NO_PERMISSION_CODES, FARM_INFO_CODES, WARNING_CODES, FATAL_CODES]
    assert sum(len(s) for s in sets) == len(frozenset().union(*sets))


@pytest.mark.parametrize(("text", "kind"), [
    (PACING_TEXT, ErrorKind.PACING),
    ("Historical Market Data Service error message:HMDS query returned no data: SPY@SMART Trades", ErrorKind.NO_DATA),
    ("Historical Market Data Service error message:API historical data query cancelled: 7", ErrorKind.NO_DATA),
    ("Historical Market Data Service error message:invalid step: 1", ErrorKind.NO_DATA),
    ("Historical Market Data Service error message:No market data permissions for ISLAND STK",
     ErrorKind.NO_PERMISSION),
    ("Historical Market Data Service error message:No market data permissions for NYSE STK", ErrorKind.NO_PERMISSION),
    ("Historical Market Data Service error message:Trading TWS session is connected from a different IP address",
     ErrorKind.FATAL),
])
def test_162_is_decided_by_its_text(text: str, kind: ErrorKind) -> None:
    assert classify(162, text) is kind


def test_real_time_pacing_and_message_rate_are_pacing() -> None:
    assert classify(420, "Invalid Real-time Query: pacing violation") is ErrorKind.PACING
    assert classify(100, "Max rate of messages per second has been exceeded.") is ErrorKind.PACING


def test_cancel_confirmation_202_is_info_not_a_rejection() -> None:
    assert classify(202, "Order Canceled - reason:") is ErrorKind.INFO
    assert classify(201, "Order rejected - reason: margin") is ErrorKind.ORDER_REJECTED


def test_unknown_codes_are_warnings() -> None:
    assert classify(2199, "some new notice") is ErrorKind.WARNING
    assert classify(987654) is ErrorKind.WARNING


def test_exceptions_carry_the_ib_code_and_are_distinct() -> None:
    human = NeedsHumanError("clientId in use", code=326)
    assert human.code == 326
    assert not issubclass(NeedsHumanError, TemporaryIBError)
    assert TemporaryIBError("refused").code is None
