"""Scoring a formula as the original gym-cards did, without ``eval``.

The original EZPoints/Points24 joined the formula's tokens into one string (``"".join``, so the numbers
"1" and "1" become 11, two "*" become Python's power ``**``, two "/" its floor division ``//``, and the
blank tokens of refused numbers become spaces) and called Python's ``eval`` on it; any exception scored
as a wrong formula. ``python_value`` reads the same string with a parser for the part of Python's
expression grammar these characters can form, and computes with Python's own int/float/complex
operators, so every value (including float rounding: ``8/(3-8/3)`` is 23.99999999999999, not 24) is the
one ``eval`` gave, while nothing is ever executed::

    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/" | "//") factor)*
    factor := ("+" | "-") factor | power
    power  := atom ["**" factor]
    atom   := NUMBER | "(" expr ")"

What Python would accept but cannot compute here: ``()`` (an empty tuple, never equal to a number) and
calls such as ``2(3)`` (a TypeError) are parse errors here, which scores the same. An integer power with a
result over ``MAX_POWER_BITS`` bits (``10**10**10``) is refused instead of computed: ``eval`` would run
for hours or out of memory, and with four cards at most nothing left in the formula could bring such a
number back to the target.
"""

from __future__ import annotations

import math
import operator
import re

MAX_POWER_BITS = 1_000_000
_TOKEN = re.compile(r"\s*(?:(\d+)|(\*\*|//|[-+*/()]))")
_BINARY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
           "//": operator.floordiv}  # fmt: skip

Number = int | float | complex


class _Unscoreable(Exception):
    """The string is not a Python expression of these characters, or computing it fails."""


def _tokens(text: str) -> list[str]:
    """Python's tokenisation of the string: digit runs are one literal, ``**`` and ``//`` one operator."""
    out, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            if text[pos:].strip():
                raise _Unscoreable(f"unexpected character {text[pos]!r}")
            break  # trailing whitespace
        out.append(match.group(1) or match.group(2))
        pos = match.end()
    return out


def _power(base: Number, exponent: Number) -> Number:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if exponent * math.log2(abs(base)) > MAX_POWER_BITS:
            raise _Unscoreable("power too large to compute")
    return base**exponent


class _Parser:
    def __init__(self, tokens: list[str]):
        self.tokens, self.pos = tokens, 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise _Unscoreable("unexpected end of formula")
        self.pos += 1
        return token

    def expr(self) -> Number:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            value = _BINARY[op](value, self.term())
        return value

    def term(self) -> Number:
        value = self.factor()
        while self.peek() in ("*", "/", "//"):
            op = self.take()
            value = _BINARY[op](value, self.factor())
        return value

    def factor(self) -> Number:
        if self.peek() in ("+", "-"):
            sign = self.take()
            value = self.factor()
            return +value if sign == "+" else -value
        return self.power()

    def power(self) -> Number:
        base = self.atom()
        if self.peek() == "**":
            self.take()
            return _power(base, self.factor())
        return base

    def atom(self) -> Number:
        token = self.take()
        if token.isdigit():
            return int(token)
        if token == "(":
            value = self.expr()
            if self.take() != ")":
                raise _Unscoreable("unclosed parenthesis")
            return value
        raise _Unscoreable(f"unexpected {token!r}")


def python_value(formula: list[str]) -> Number | None:
    """The value Python's ``eval`` gave ``"".join(formula)``, or None where it raised.

    Args:
        formula: The env's tokens ("1".."10", operators, and " " for a refused number).

    Returns:
        An int, float or complex exactly as ``eval`` computed it; None for a syntax error, a division by
        zero, an overflow, or a power too large to compute (see the module docstring).
    """
    try:
        parser = _Parser(_tokens("".join(formula)))
        value = parser.expr()
        if parser.peek() is not None:
            raise _Unscoreable(f"unexpected {parser.peek()!r}")
        return value
    except (_Unscoreable, ArithmeticError, ValueError, TypeError):
        # ArithmeticError: ZeroDivisionError and OverflowError, as eval raised them.
        return None
