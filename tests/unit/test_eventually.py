"""The tests' poll, eventually() (tests/conftest.py): a coroutine check is awaited, and an
asserting check is asked again until the deadline, then its own error is raised."""

from __future__ import annotations

import pytest

from tests.conftest import eventually

pytestmark = pytest.mark.unit


async def test_a_coroutine_check_is_awaited_until_its_value_is_truthy() -> None:
    calls = 0

    async def check() -> int:
        nonlocal calls
        calls += 1
        return calls if calls >= 3 else 0

    assert await eventually(check, within=5, every=0) == 3


async def test_an_asserting_check_is_asked_again_then_its_own_error_is_raised() -> None:
    calls = 0

    def check() -> bool:
        nonlocal calls
        calls += 1
        assert calls >= 3, "not yet"
        return True

    assert await eventually(check, within=5, every=0) is True

    def never() -> bool:
        raise AssertionError("found 2, expected 3")

    with pytest.raises(AssertionError, match="found 2, expected 3"):
        await eventually(never, within=0.05, every=0.01)


async def test_a_falsy_check_fails_at_the_deadline_saying_what_it_last_returned() -> None:
    with pytest.raises(AssertionError, match="last: 0"):
        await eventually(lambda: 0, within=0.05, every=0.01)
