"""Arithmetic over token lists for EZPoints and Points24: an exact evaluator, the value sets of every
expression over a multiset of numbers, and the expressions that hit a target.

Formulas are lists of tokens ("3", "+", "(", ...; a blank " " token, which the RL4VLM rules append for a
refused number, is skipped). The grammar is the usual one with precedence and left associativity, each
number token one operand (no joined digits), no unary minus::

    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/") factor)*
    factor := number | "(" expr ")"

Values are ``fractions.Fraction`` so that 8 / (3 - 8 / 3) is exactly 24 (no ``eval``, no floats): the
``exact_arithmetic`` rules. The RL4VLM rules score with ``python_arith.python_value`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property, lru_cache
from itertools import combinations

OPS = ("+", "-", "*", "/")
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


# --- evaluation ----------------------------------------------------------------------------------------
def evaluate(tokens: list[str]) -> Fraction | None:
    """Exact value of a complete formula, or None when it is malformed or divides by zero."""
    tokens = [t for t in tokens if t.strip()]
    pos = 0

    def expr() -> Fraction | None:
        nonlocal pos
        value = term()
        while value is not None and pos < len(tokens) and tokens[pos] in ("+", "-"):
            op = tokens[pos]
            pos += 1
            rhs = term()
            value = None if rhs is None else (value + rhs if op == "+" else value - rhs)
        return value

    def term() -> Fraction | None:
        nonlocal pos
        value = factor()
        while value is not None and pos < len(tokens) and tokens[pos] in ("*", "/"):
            op = tokens[pos]
            pos += 1
            rhs = factor()
            if rhs is None or (op == "/" and rhs == 0):
                return None
            value = value * rhs if op == "*" else value / rhs
        return value

    def factor() -> Fraction | None:
        nonlocal pos
        if pos >= len(tokens):
            return None
        tok = tokens[pos]
        pos += 1
        if tok == "(":
            value = expr()
            if pos >= len(tokens) or tokens[pos] != ")":
                return None
            pos += 1
            return value
        return Fraction(int(tok)) if tok.isdigit() else None

    value = expr()
    return value if pos == len(tokens) else None


def numbers_in(tokens: list[str]) -> list[int]:
    return [int(t) for t in tokens if t.isdigit()]


# --- expressions over a multiset of numbers --------------------------------------------------------------
@dataclass(frozen=True)
class Expr:
    """An expression tree; ``op`` is None for a leaf holding ``value``."""

    value: Fraction
    op: str | None = None
    left: Expr | None = None
    right: Expr | None = None

    @cached_property
    def tokens(self) -> tuple[str, ...]:
        """Tokens with only the parentheses precedence requires."""
        if self.op is None:
            return (str(self.value),)
        assert self.left is not None and self.right is not None
        left, right = self.left.tokens, self.right.tokens
        if self.left.op is not None and _PREC[self.left.op] < _PREC[self.op]:
            left = ("(", *left, ")")
        if self.right.op is not None and (
            _PREC[self.right.op] < _PREC[self.op]
            or (_PREC[self.right.op] == _PREC[self.op] and self.op in ("-", "/"))
        ):
            right = ("(", *right, ")")
        return (*left, self.op, *right)


def _splits(numbers: tuple[int, ...]):
    """Yields (left, right) splits of a sorted multiset into two non-empty sorted multisets, each once."""
    seen = set()
    n = len(numbers)
    for k in range(1, n):
        for idx in combinations(range(n), k):
            left = tuple(numbers[i] for i in idx)
            right = tuple(numbers[i] for i in range(n) if i not in idx)
            if (left, right) not in seen:
                seen.add((left, right))
                yield left, right


@lru_cache(maxsize=4096)
def values(numbers: tuple[int, ...], ops: tuple[str, ...] = OPS) -> dict[Fraction, Expr]:
    """Every value an expression over exactly these numbers can take, with a shortest expression each.

    Args:
        numbers: A sorted tuple (a multiset).
        ops: Allowed binary operators.
    """
    if len(numbers) == 1:
        return {Fraction(numbers[0]): Expr(Fraction(numbers[0]))}
    out: dict[Fraction, Expr] = {}
    for left, right in _splits(numbers):
        for a, na in values(left, ops).items():
            for b, nb in values(right, ops).items():
                for op in ops:
                    if op == "/" and b == 0:
                        continue
                    v = a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a / b
                    node = Expr(v, op, na, nb)
                    if v not in out or len(node.tokens) < len(out[v].tokens):
                        out[v] = node
    return out


def _apply(op: str, a: Fraction, b: Fraction) -> Fraction | None:
    if op == "/":
        return None if b == 0 else a / b
    return a + b if op == "+" else a - b if op == "-" else a * b


def _operands_for(op: str, a: Fraction, target: Fraction) -> list[Fraction]:
    """The ``b`` with ``a op b == target``, where one can exist (the targets here are not zero)."""
    if op == "+":
        return [target - a]
    if op == "-":
        return [a - target]
    if op == "*":
        return [target / a] if a != 0 else []
    return [a / target] if target != 0 else []


def is_solvable(numbers: list[int], target: int, ops: tuple[str, ...] = OPS) -> bool:
    """Whether some formula uses each number exactly once and equals ``target`` (exact arithmetic)."""
    return _solvable(tuple(sorted(numbers)), target, ops)


@lru_cache(maxsize=4096)
def _solvable(key: tuple[int, ...], target: int, ops: tuple[str, ...]) -> bool:
    # The last operation's right operand is looked up by value: this costs the left sides' values over
    # each split, not their product with the right sides'.
    if len(key) == 1:
        return key[0] == target
    goal = Fraction(target)
    for left, right in _splits(key):
        right_values = values(right, ops)
        for a in values(left, ops):
            for op in ops:
                if any(b in right_values and _apply(op, a, b) == goal for b in _operands_for(op, a, goal)):
                    return True
    return False


@lru_cache(maxsize=1024)
def _all_exprs(numbers: tuple[int, ...], ops: tuple[str, ...]) -> dict[Fraction, list[Expr]]:
    """Every expression tree over exactly these numbers, grouped by value (small sets only)."""
    if len(numbers) == 1:
        return {Fraction(numbers[0]): [Expr(Fraction(numbers[0]))]}
    out: dict[Fraction, list[Expr]] = {}
    for left, right in _splits(numbers):
        right_exprs = _all_exprs(right, ops)
        for a, left_nodes in _all_exprs(left, ops).items():
            for b, right_nodes in right_exprs.items():
                for op in ops:
                    v = _apply(op, a, b)
                    if v is not None:
                        out.setdefault(v, []).extend(
                            Expr(v, op, x, y) for x in left_nodes for y in right_nodes
                        )
    return out


def solutions(numbers: list[int], target: int, ops: tuple[str, ...] = OPS) -> list[tuple[str, ...]]:
    """The token strings of every expression tree over ``numbers`` (each used once) equal to ``target``,
    shortest first (then in token order, so the list is deterministic); empty when there is none.

    The last operation is looked up by value over each split, so four numbers take milliseconds; the
    RL4VLM-rules expert picks the first one its float scoring accepts (``8 / ( 3 - 8 / 3 )`` is not).
    """
    key = tuple(sorted(numbers))
    goal = Fraction(target)
    if len(key) == 1:
        return [(str(key[0]),)] if key[0] == target else []
    found = set()
    for left, right in _splits(key):
        right_exprs = _all_exprs(right, ops)
        for a, left_nodes in _all_exprs(left, ops).items():
            for op in ops:
                for b in _operands_for(op, a, goal):
                    if b in right_exprs and _apply(op, a, b) == goal:
                        found.update(Expr(goal, op, x, y).tokens for x in left_nodes for y in right_exprs[b])
    return sorted(found, key=lambda tokens: (len(tokens), tokens))
