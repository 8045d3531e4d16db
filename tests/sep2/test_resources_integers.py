"""Integers in server XML are bounded by their XSD type before Python converts them.

A number of 4,301+ digits matched the integer pattern and then made int() itself refuse (a
ValueError from deep inside the reader, caught only by luck); a long one still cost quadratic
time. The reader refuses more than 20 significant digits (SEP2's widest integers are 64-bit)
with its own error naming the element.
"""

from __future__ import annotations

import pytest

from dynexport.sep2 import resources as r
from dynexport.sep2.xml import MAX_INT_DIGITS, Sep2ParseError, parse_int
from tests.sep2.test_resources_hostile import _time


@pytest.mark.parametrize("digits", [21, 4300, 4301, 100_000])
def test_huge_integer_is_refused_with_the_modules_error_naming_the_element(digits: int) -> None:
    with pytest.raises(Sep2ParseError) as caught:
        r.parse_time(_time("9" * digits))
    assert "currentTime" in str(caught.value)
    assert f"{digits} digits" in str(caught.value)


def test_huge_negative_integer_is_refused_too() -> None:
    with pytest.raises(Sep2ParseError, match="tzOffset"):
        r.parse_time(_time().replace(b"<tzOffset>0<", b"<tzOffset>-" + b"7" * 5000 + b"<"))


def test_widest_64_bit_values_and_leading_zeros_still_parse() -> None:
    assert parse_int("18446744073709551615", "R", "x", 0, (1 << 64) - 1) == (1 << 64) - 1
    assert parse_int("-9223372036854775808", "R", "x", -(1 << 63), 0) == -(1 << 63)
    assert parse_int("0" * 10_000 + "42", "R", "x", 0, 100) == 42
    assert r.parse_time(_time("000000001700000000")).current_time == 1_700_000_000
    assert MAX_INT_DIGITS == 20


def test_twenty_one_digit_value_is_out_of_range_not_a_crash() -> None:
    with pytest.raises(Sep2ParseError, match="x: integer of 21 digits is out of range"):
        parse_int("1" + "0" * 20, "R", "x", 0, (1 << 64) - 1)
