"""EZPoints and Points24: build, one token per step, a formula over the dealt cards that hits a target."""

from __future__ import annotations

from abc import abstractmethod
from collections import Counter

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vlmppo.envs.adapter import EnvAdapter
from vlmppo.envs.base import FrameEnv
from vlmppo.envs.cards.formula import evaluate, is_solvable, numbers_in
from vlmppo.envs.cards.solver import complete
from vlmppo.envs.drawing import FELT, SUITS, WHITE, canvas, draw_card, font, rank_name, to_array, wrap_text
from vlmppo.envs.parsing import ExpertAction

NUMBER_TOKENS = [str(n) for n in range(1, 11)]


def card_value(rank: int) -> int:
    """Ace counts 1, J/Q/K count 10, the others their number."""
    return min(rank, 10)


class PointsEnv(FrameEnv):
    """Shared rules of EZPoints and Points24 (see the two subclasses for the docstring sections).

    Fixed from the original: deals are redrawn until solvable (EZPoints always, Points24 by default),
    formulas are evaluated exactly with fractions by our own parser (no ``eval``), and a number that is not
    on the table, or already used as often as it appears, is refused with -1 instead of being appended.
    """

    n_cards: int
    target: int
    operators: tuple[str, ...]
    max_tokens: int
    parens: bool

    def __init__(self, render_mode: str | None = None, solvable_only: bool = True):
        super().__init__(300, 300, render_mode)
        self.tokens = [*NUMBER_TOKENS, *self.operators, "="]
        self.action_space = spaces.Discrete(len(self.tokens))
        self.solvable_only = solvable_only
        self.cards: list[int] = []
        self.suits: list[str] = []
        self.formula: list[str] = []
        self.solved = False

    @property
    def numbers(self) -> list[int]:
        return [card_value(r) for r in self.cards]

    @property
    def ops(self) -> tuple[str, ...]:
        """Binary operators only (parentheses are not operators for the solver)."""
        return tuple(o for o in self.operators if o not in "()")

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        while True:
            self.cards = [int(r) for r in self.np_random.integers(1, 14, size=self.n_cards)]
            if not self.solvable_only or is_solvable(self.numbers, self.target, self.ops):
                break
        self.suits = [SUITS[int(s)] for s in self.np_random.integers(0, 4, size=self.n_cards)]
        self.formula = []
        self.solved = False
        return self._draw(), self._info()

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r} for {self.action_space}")
        token = self.tokens[int(action)]
        reward, terminated, truncated = 0.0, False, False
        if token == "=":
            terminated = True
            self.solved = self.is_correct(self.formula)
            reward = 10.0 if self.solved else -1.0
        elif token.isdigit() and self._used_up(int(token)):
            reward = -1.0  # not on the table, or used up: refused, the formula is unchanged
        else:
            self.formula.append(token)
            if len(self.formula) > self.max_tokens:
                truncated, reward = True, -1.0
        return self._draw(), reward, terminated, truncated, self._info()

    def _used_up(self, number: int) -> bool:
        return Counter(numbers_in(self.formula))[number] >= self.numbers.count(number)

    def is_correct(self, formula: list[str]) -> bool:
        """The formula equals the target and uses every card's number exactly once."""
        return sorted(numbers_in(formula)) == sorted(self.numbers) and evaluate(formula) == self.target

    def _info(self) -> dict:
        return {
            "cards": list(self.cards),
            "suits": list(self.suits),
            "numbers": self.numbers,
            "formula": list(self.formula),
            "target": self.target,
            "solved": self.solved,
        }

    @abstractmethod
    def _card_boxes(self) -> list[tuple[int, int, int, int]]: ...

    def _draw(self) -> np.ndarray:
        image, draw = canvas(300, 300, FELT)
        boxes = self._card_boxes()
        for box, rank, suit in zip(boxes, self.cards, self.suits, strict=True):
            draw_card(image, box, rank, suit)
        size = 24
        text = "Formula: " + (" ".join(self.formula) if self.formula else "")
        y = boxes[0][3] + 22
        for line in wrap_text(text, size, 280):
            draw.text((10, y), line, font=font(size), fill=WHITE)
            y += size + 8
        return to_array(image)


class EZPointsEnv(PointsEnv):
    """EZPoints (``gym_cards/EZPoints-v0``).

    Description:
        Two playing cards on green felt, with "Formula: ..." under them. Aces count 1, J/Q/K count 10.

    Mission:
        Build a formula with "+" and "*" that uses both cards' numbers exactly once and equals 12, then
        submit it with "=". Deals are always solvable.

    Action space:
        ``Discrete(13)``: 0-9 append the numbers 1-10, 10 "+", 11 "*", 12 "=".

    Reward:
        "=": +10 if the formula is correct, else -1. A number not on the table (or used up): -1, nothing
        appended. Anything else: 0.

    Termination:
        "=" terminates. Appending a token beyond 5 truncates with -1.
    """

    n_cards, target, operators, max_tokens, parens = 2, 12, ("+", "*"), 5, False

    def __init__(self, render_mode: str | None = None):
        super().__init__(render_mode, solvable_only=True)

    def _card_boxes(self):
        return [(50, 30, 140, 160), (160, 30, 250, 160)]


class Points24Env(PointsEnv):
    """Points24 (``gym_cards/Points24-v0``).

    Description:
        Four smaller playing cards on green felt, with "Formula: ..." under them. Aces count 1, J/Q/K 10.

    Mission:
        Build a formula with + - * / and parentheses that uses the four numbers exactly once and equals 24
        (division is exact: 8 / (3 - 8 / 3) is 24), then submit it with "=".

    Action space:
        ``Discrete(17)``: 0-9 append the numbers 1-10, then "+", "-", "*", "/", "(", ")", "=".

    Reward:
        As EZPoints: "=" gives +10 for a correct formula, else -1; a number not available: -1.

    Termination:
        "=" terminates. Appending a token beyond 20 truncates with -1. With ``solvable_only`` (default)
        deals are redrawn until a solution exists.
    """

    n_cards, target, operators, max_tokens, parens = 4, 24, ("+", "-", "*", "/", "(", ")"), 20, True

    def _card_boxes(self):
        return [(12 + i * 71, 24, 12 + i * 71 + 63, 24 + 92) for i in range(4)]


class PointsAdapter(EnvAdapter):
    """Prompt, parser and expert for EZPoints/Points24. Expert: an exact solver that emits the next token
    of the shortest correct formula it finds from the current formula, or "=" when it is complete."""

    def __init__(self, env_id: str, env_cls: type[PointsEnv]):
        super().__init__(env_id)
        self.cls = env_cls
        self.legal_actions = [*NUMBER_TOKENS, *env_cls.operators, "="]
        self.ops = tuple(o for o in env_cls.operators if o not in "()")

    def _complete(self, info: dict) -> list[str] | None:
        return complete(
            info["formula"], info["numbers"], self.cls.target,
            ops=self.ops, parens=self.cls.parens, max_tokens=self.cls.max_tokens,
        )  # fmt: skip

    def task_text(self, info: dict) -> str:
        n = "two" if self.cls.n_cards == 2 else "four"
        ops = " ".join(f'"{o}"' for o in self.cls.operators)
        formula = " ".join(info["formula"])
        current = f'The formula so far is "{formula}".' if formula else "The formula is still empty."
        return (
            f"You are playing a card game. The image shows {n} playing cards on a green table and, under "
            "them, the formula built so far. Aces count 1; J, Q and K count 10; other cards count their "
            f"number. Build a formula that uses the number of each card exactly once, with {ops}, and equals "
            f'{self.cls.target}. Each turn you append one number or symbol; "=" submits the formula. {current}'
        )

    def thoughts_hint(self) -> str:
        return "In your thoughts, first read out the cards in the image and the formula so far, then decide."

    def expert(self, env: gym.Env, info: dict) -> ExpertAction:
        cards = ", ".join(rank_name(r) for r in info["cards"])
        formula = " ".join(info["formula"]) or "(empty)"
        suffix = self._complete(info)
        if suffix is None:
            return ExpertAction(
                None, f"cards {cards}; formula {formula} cannot be completed to {self.cls.target}"
            )
        if not suffix:
            return ExpertAction(
                self.action_index("="), f"cards {cards}; formula {formula} equals {self.cls.target}: submit ="
            )
        solution = " ".join([*info["formula"], *suffix])
        return ExpertAction(
            self.action_index(suffix[0]),
            f"cards {cards}; solution {solution} = {self.cls.target}; formula so far {formula}: next {suffix[0]}",
        )

    def is_success(self, total_reward: float, info: dict) -> bool:
        return bool(info["solved"])

    def expert_score(self, info_before, action_index, info_after, reward):
        # Distance = tokens left in the shortest completion. Uses 10 / 8 / 2 / 1 / 0.
        token = self.legal_actions[action_index]
        if token == "=":
            if info_after["solved"]:
                return 10, "submits a correct formula"
            return 0, "submits a formula that is wrong or unfinished"
        if reward < 0:
            return 0, f"{token} is refused (number not available) or makes the formula too long"
        before, after = self._complete(info_before), self._complete(info_after)
        if before is None:
            return 1, "the formula could already not be completed"
        if after is None:
            return 0, f"{token} makes the formula impossible to complete"
        if len(after) < len(before):
            return 8, f"{token} follows a shortest correct formula"
        return 2, f"{token} keeps the formula solvable but does not shorten it"
