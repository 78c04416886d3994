"""Our implementation of the gym-cards tasks (NumberLine, Blackjack, EZPoints, Points24).

The original gym-cards package is not on PyPI; these keep its ids, rules and look (300x300 RGB frames)
and fix its known bugs (see each module).
"""
