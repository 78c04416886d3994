"""Completing a formula prefix: which tokens turn it into a correct formula, if any.

The solver answers "which tokens complete this prefix into a formula that uses every number exactly once
and equals the target?". It parses the prefix into a stack of open parentheses ("frames"), then closes
the frames from the innermost outwards. Inside one frame, any continuation is equivalent in value to at
most one more factor for the pending product, then at most one more signed summand, where each operand is
any value buildable from a subset of the unused numbers (``a * b / c`` == ``a * (b / c)``,
``a - b + c`` == ``a - (b - c)``): so the search is exact in value without enumerating token strings.
Two limits, both documented where they bite: the canonical forms can spend a few more parentheses than
strictly needed, so a prefix that leaves almost no room under ``max_tokens`` may be judged hopeless when a
terser completion exists; and without parentheses (EZPoints) operands are single numbers, which is exact
for two numbers only. Under the RL4VLM rules (``exact=False``) a formula must also score the target in
Python's float arithmetic: the fixed solution of a deal is the shortest that does, but a prefix off that
path is completed exactly and then checked, so where float rounding rejects that completion the expert
gives up although another completion might pass (of the 715 Points24 hands, one has both kinds).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from fractions import Fraction
from functools import lru_cache
from itertools import combinations

from vlmppo.envs.cards.formula import OPS, Expr, numbers_in, solutions, values
from vlmppo.envs.cards.python_arith import python_value


@dataclass(frozen=True)
class _Frame:
    """The state of one open parenthesis level after reading a prefix.

    ``total`` is the sum of the finished summands; the current summand is ``sign * prod`` (``prod`` None
    before its first factor); ``mulop`` is a pending "*" or "/"; ``expecting`` means an operand comes next.
    """

    total: Fraction = Fraction(0)
    sign: int = 1
    prod: Fraction | None = None
    mulop: str | None = None
    expecting: bool = True

    def take(self, operand: Fraction) -> _Frame | None:
        """The frame after an operand; None on division by zero."""
        if self.mulop == "/" and operand == 0:
            return None
        if self.mulop is None:
            prod = operand
        else:
            assert self.prod is not None
            prod = self.prod * operand if self.mulop == "*" else self.prod / operand
        return replace(self, prod=prod, mulop=None, expecting=False)

    def value(self) -> Fraction:
        assert self.prod is not None and not self.expecting
        return self.total + self.sign * self.prod


def parse_prefix(tokens: list[str]) -> list[_Frame] | None:
    """The frame stack after a prefix (outermost first), or None when no completion can fix it."""
    stack = [_Frame()]
    for tok in tokens:
        top = stack[-1]
        if tok.isdigit() or tok == ")":
            if tok == ")":
                if top.expecting or len(stack) == 1:
                    return None
                operand = stack.pop().value()
                top = stack[-1]
            elif not top.expecting:
                return None
            else:
                operand = Fraction(int(tok))
            new = top.take(operand)
            if new is None:
                return None
            stack[-1] = new
        elif tok == "(":
            if not top.expecting:
                return None
            stack.append(_Frame())
        elif tok in OPS:
            if top.expecting:
                return None
            if tok in ("*", "/"):
                stack[-1] = replace(top, mulop=tok, expecting=True)
            else:
                stack[-1] = replace(
                    top, total=top.value(), sign=1 if tok == "+" else -1, prod=None, expecting=True
                )
        else:
            return None
    return stack


def _sub_multisets(numbers: tuple[int, ...]):
    """Yields (chosen, rest) for every non-empty sub-multiset, each once, chosen and rest sorted."""
    seen = set()
    for k in range(1, len(numbers) + 1):
        for idx in combinations(range(len(numbers)), k):
            chosen = tuple(numbers[i] for i in idx)
            if chosen not in seen:
                seen.add(chosen)
                yield chosen, tuple(numbers[i] for i in range(len(numbers)) if i not in idx)


def _wrap(node: Expr, context: str) -> tuple[str, ...]:
    """The operand's tokens after operator ``context``, parenthesised only where precedence needs it."""
    if node.op is None:
        return node.tokens
    needed = context == "/" or (context in ("-", "*") and node.op in ("+", "-"))
    return ("(", *node.tokens, ")") if needed else node.tokens


class _Search:
    """Completion search for one (target, ops, parens) setting, memoised over frame states."""

    def __init__(self, target: Fraction, ops: tuple[str, ...], parens: bool):
        self.target, self.ops, self.parens = target, ops, parens
        self.memo: dict = {}

    def operands(self, rest: tuple[int, ...]):
        """(expression, remaining) for one operand drawn from ``rest``; single numbers only without
        parentheses (exact for two numbers, which is all EZPoints needs)."""
        for chosen, remaining in _sub_multisets(rest):
            if len(chosen) == 1 or self.parens:
                for node in values(chosen, self.ops).values():
                    yield node, remaining

    def summands(self, frame: _Frame, rest: tuple[int, ...]):
        """(frame, tokens, remaining) with the current summand finished: its operand if one is due, then
        at most one more factor (a longer product is the same value as one parenthesised factor)."""
        if frame.expecting:
            context = frame.mulop or ("-" if frame.sign < 0 else "+")
            for node, remaining in self.operands(rest):
                new = frame.take(node.value)
                if new is None:
                    continue
                yield new, _wrap(node, context), remaining
                if not self.parens:  # a product of single numbers needs its chain spelled out
                    for more, toks, rem2 in self._factor(new, remaining):
                        yield more, (*_wrap(node, context), *toks), rem2
            return
        yield frame, (), rest
        yield from self._factor(frame, rest)

    def _factor(self, frame: _Frame, rest: tuple[int, ...]):
        for op in ("*", "/"):
            if op in self.ops:
                for node, remaining in self.operands(rest):
                    new = replace(frame, mulop=op).take(node.value)
                    if new is not None:
                        yield new, (op, *_wrap(node, op)), remaining

    def closings(self, frame: _Frame, rest: tuple[int, ...]):
        """(value, tokens, remaining) for every canonical way to finish an inner frame: the summand, then
        at most one more signed summand (``a - b + c`` is ``a - (b - c)``)."""
        for fin, toks, remaining in self.summands(frame, rest):
            yield fin.value(), toks, remaining
            for op in ("+", "-"):
                if op in self.ops:
                    for node, rem2 in self.operands(remaining):
                        value = fin.value() + (node.value if op == "+" else -node.value)
                        yield value, (*toks, op, *_wrap(node, op)), rem2

    def finishes(self, frame: _Frame, rest: tuple[int, ...]):
        """Token tuples that finish the outermost frame exactly on the target with every number used; the
        last summand is looked up by value instead of enumerated."""
        for fin, toks, remaining in self.summands(frame, rest):
            if not remaining:
                if fin.value() == self.target:
                    yield toks
                continue
            if len(remaining) > 1 and not self.parens:
                continue
            gap = self.target - fin.value()
            for op, needed in (("+", gap), ("-", -gap)):
                node = values(remaining, self.ops).get(needed) if op in self.ops else None
                if node is not None:
                    yield (*toks, op, *_wrap(node, op))

    def complete(
        self, stack: tuple[_Frame, ...], rest: tuple[int, ...], budget: int
    ) -> tuple[str, ...] | None:
        """Shortest suffix found that closes every frame on the target, within ``budget`` tokens."""
        key = (stack, rest, budget)
        if key in self.memo:
            return self.memo[key]
        best: tuple[str, ...] | None = None
        if len(stack) == 1:
            best = min((t for t in self.finishes(stack[0], rest) if len(t) <= budget), key=len, default=None)
        else:
            for value, toks, remaining in self.closings(stack[-1], rest):
                if len(toks) + 1 > budget or (best is not None and len(toks) + 1 >= len(best)):
                    continue
                outer = stack[-2].take(value)
                if outer is None:
                    continue
                tail = self.complete((*stack[:-2], outer), remaining, budget - len(toks) - 1)
                if tail is not None and (best is None or len(toks) + 1 + len(tail) < len(best)):
                    best = (*toks, ")", *tail)
        self.memo[key] = best
        return best


@lru_cache(maxsize=4096)
def _solution(
    numbers: tuple[int, ...], target: int, ops: tuple[str, ...], parens: bool, max_tokens: int, exact: bool
) -> tuple[str, ...] | None:
    """The expert's one fixed solution of a deal: the shortest expression that the rules score as the
    target (with ``exact=False``, Python's float arithmetic must also give exactly the target)."""
    for tokens in solutions(list(numbers), target, tuple(o for o in ops if o in OPS)):
        if len(tokens) > max_tokens:
            break
        if not parens and "(" in tokens:
            continue
        if exact or python_value(list(tokens)) == target:
            return tokens
    return None


def has_solution(
    numbers: list[int], target: int, *, ops: tuple[str, ...], parens: bool, max_tokens: int, exact: bool
) -> bool:
    """Whether the expert has a solution of this deal under these rules (see ``complete``)."""
    return _solution(tuple(sorted(numbers)), target, ops, parens, max_tokens, exact) is not None


def _complete(prefix, numbers, target, ops, parens, max_tokens) -> tuple[str, ...] | None:
    used = Counter(numbers_in(list(prefix)))
    if used - Counter(numbers):
        return None  # the prefix already uses a number that is not on the table
    stack = parse_prefix(list(prefix))
    if stack is None:
        return None
    rest = tuple(sorted((Counter(numbers) - used).elements()))
    return _Search(Fraction(target), ops, parens).complete(tuple(stack), rest, max_tokens - len(prefix))


def complete(
    prefix: list[str],
    numbers: list[int],
    target: int,
    *,
    ops: tuple[str, ...] = OPS,
    parens: bool = True,
    max_tokens: int = 20,
    exact: bool = True,
) -> list[str] | None:
    """Tokens that complete ``prefix`` into a correct formula, or None when none exists.

    Args:
        prefix: The formula so far; blank " " tokens (refused numbers under the RL4VLM rules) take room
            under ``max_tokens`` but are otherwise spaces.
        numbers: The values of the cards; each must be used exactly once in the whole formula.
        target: The value to reach.
        ops: Allowed operators.
        parens: Whether "(" and ")" may be used.
        max_tokens: The longest formula that may still be submitted.
        exact: Score with exact fractions; False scores as the original did (Python floats, see
            ``python_arith``), where e.g. 8 / (3 - 8 / 3) is not 24.

    Returns:
        The suffix (empty when the prefix already is a solution), or None.
    """
    key = tuple(sorted(numbers))
    full = _solution(key, target, ops, parens, max_tokens, exact)
    if full is None:
        return None  # no formula of these cards scores the target at all
    written = [t for t in prefix if t.strip()]
    budget = max_tokens - (len(prefix) - len(written))
    # The expert follows one fixed solution per deal, so its own prefixes are answered from the cache.
    if list(full[: len(written)]) == written and len(full) <= budget:
        return list(full[len(written) :])
    suffix = _complete(tuple(written), key, target, ops, parens, budget)
    if suffix is None or (not exact and python_value([*prefix, *suffix]) != target):
        return None
    return list(suffix)
