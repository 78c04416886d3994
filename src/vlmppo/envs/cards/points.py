"""EZPoints and Points24: build, one token per step, a formula over the dealt cards that hits a target."""

from __future__ import annotations

import json
from abc import abstractmethod
from collections import Counter

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vlmppo.envs import rl4vlm
from vlmppo.envs.adapter import EnvAdapter
from vlmppo.envs.base import FrameEnv
from vlmppo.envs.cards.formula import evaluate, is_solvable, numbers_in
from vlmppo.envs.cards.python_arith import python_value
from vlmppo.envs.cards.solver import complete, has_solution
from vlmppo.envs.drawing import FELT, SUITS, WHITE, canvas, draw_card, font, rank_name, to_array, wrap_text
from vlmppo.envs.parsing import ExpertAction

NUMBER_TOKENS = [str(n) for n in range(1, 11)]
BLANK = " "  # what the RL4VLM rules append for a refused number


def card_value(rank: int) -> int:
    """Ace counts 1, J/Q/K count 10, the others their number."""
    return min(rank, 10)


class PointsEnv(FrameEnv):
    """Shared rules of EZPoints and Points24 (see the two subclasses for the docstring sections).

    By default the rules are RL4VLM's gym-cards, so that success rates compare with the paper's; each of
    our changes is a keyword (``docs/envs.md`` has the table and the measured effect of each):

    * ``exact_arithmetic`` (default False): score with exact fractions over the tokens. Without it the
      tokens are joined into one string and valued as Python's ``eval`` did (``python_arith``): "1", "1"
      is 11, "*", "*" is a power, and 8 / (3 - 8 / 3) is 23.99999999999999, not 24.
    * ``refuse_unavailable`` (default False): a number not on the table (or already used up) costs -1 and
      leaves the formula unchanged. Without it, -1 and a blank token is appended, so the formula still
      grows toward the length cut-off, as in RL4VLM.

    Both rule sets end an episode on "=" or when a step starts with a formula longer than
    ``max_tokens`` (-1). That end is the game's rule, not a time limit, so it is flagged ``terminated``
    (RL4VLM flagged it truncated; its PPO treated every end alike, ours bootstraps truncations).
    """

    n_cards: int
    target: int
    operators: tuple[str, ...]
    max_tokens: int
    parens: bool

    def __init__(
        self,
        render_mode: str | None = None,
        *,
        exact_arithmetic: bool = False,
        refuse_unavailable: bool = False,
    ):
        super().__init__(300, 300, render_mode)
        self.tokens = [*NUMBER_TOKENS, *self.operators, "="]
        self.action_space = spaces.Discrete(len(self.tokens))
        self.exact_arithmetic = exact_arithmetic
        self.refuse_unavailable = refuse_unavailable
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

    @abstractmethod
    def _deal(self) -> list[int]:
        """The ranks (1-13) of a new deal, drawn from ``self.np_random``."""

    def _new_episode(self) -> None:
        self.cards = self._deal()
        self.suits = [SUITS[int(s)] for s in self.np_random.integers(0, 4, size=self.n_cards)]
        self.formula = []
        self.solved = False

    def _solvable(self, ranks: list[int]) -> bool:
        """Whether the expert can solve these ranks under this env's scoring."""
        numbers = [card_value(r) for r in ranks]
        if self.exact_arithmetic:
            return is_solvable(numbers, self.target, self.ops)
        return has_solution(numbers, self.target, ops=self.ops, parens=self.parens,
                            max_tokens=self.max_tokens, exact=False)  # fmt: skip

    def _transition(self, action: int) -> tuple[float, bool, bool]:
        if len(self.formula) > self.max_tokens:
            return -1.0, True, False  # too long to submit: the game ends (RL4VLM's check, before anything)
        token = self.tokens[action]
        if token == "=":
            self.solved = self.is_correct(self.formula)
            return (10.0 if self.solved else -1.0), True, False
        if token.isdigit() and self._used_up(int(token)):
            if not self.refuse_unavailable:
                self.formula.append(BLANK)
            return -1.0, False, False
        self.formula.append(token)
        return 0.0, False, False

    def _used_up(self, number: int) -> bool:
        return Counter(numbers_in(self.formula))[number] >= self.numbers.count(number)

    def is_correct(self, formula: list[str]) -> bool:
        """The formula uses every card's number exactly once and the rules value it at the target."""
        if sorted(numbers_in(formula)) != sorted(self.numbers):
            return False
        if self.exact_arithmetic:
            return evaluate(formula) == self.target
        return python_value(formula) == self.target

    def _info(self) -> dict:
        return {
            "cards": list(self.cards),
            "suits": list(self.suits),
            "numbers": self.numbers,
            "formula": list(self.formula),
            "target": self.target,
            "solved": self.solved,
            "exact_arithmetic": self.exact_arithmetic,
        }

    @abstractmethod
    def _card_boxes(self) -> list[tuple[int, int, int, int]]: ...

    def _frame_key(self):
        return tuple(self._card_boxes()), tuple(self.cards), tuple(self.suits), tuple(self.formula)

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

    Deal:
        As in RL4VLM: the first card is a 2 to K; the second makes 12 with it, by "*" (half the time, when
        the first is 2, 3, 4 or 6) or else by "+"; then the two are swapped half the time. So (2, 10) comes
        in 37.5% of deals, (5, 7) and the "*" pairs in 1/6 each, and no ace is ever dealt.
        ``uniform_deal=True``: ranks uniform over A-K, redrawn until solvable (our variant).

    Action space:
        ``Discrete(13)``: 0-9 append the numbers 1-10, 10 "+", 11 "*", 12 "=".

    Reward:
        "=": +10 if the formula is correct, else -1. A number not on the table (or used up): -1 (see
        ``PointsEnv`` for what happens to the formula). Anything else: 0.

    Termination:
        "=" terminates; so does any step that starts with a formula of more than 5 tokens (-1): always
        pressing an unavailable number ends at step 7 with return -7.
    """

    n_cards, target, operators, max_tokens, parens = 2, 12, ("+", "*"), 5, False

    def __init__(self, render_mode: str | None = None, *, uniform_deal: bool = False, **rules):
        super().__init__(render_mode, **rules)
        self.uniform_deal = uniform_deal

    def _deal(self) -> list[int]:
        rng = self.np_random
        if self.uniform_deal:
            while True:
                ranks = [int(r) for r in rng.integers(1, 14, size=2)]
                if self._solvable(ranks):
                    return ranks
        first = int(rng.integers(2, 14))
        value = card_value(first)
        second = 12 // value if value in (2, 3, 4, 6) and rng.random() < 0.5 else 12 - value
        return [first, second] if rng.random() < 0.5 else [second, first]

    def _card_boxes(self):
        return [(50, 30, 140, 160), (160, 30, 250, 160)]


class Points24Env(PointsEnv):
    """Points24 (``gym_cards/Points24-v0``).

    Description:
        Four smaller playing cards on green felt, with "Formula: ..." under them. Aces count 1, J/Q/K 10.

    Mission:
        Build a formula with + - * / and parentheses that uses the four numbers exactly once and equals 24,
        then submit it with "=".

    Deal:
        As in RL4VLM: four ranks uniform over A-K, solvable or not (73.1% of deals have a solution in exact
        arithmetic). ``solvable_only=True``: redrawn until the expert can solve them under the env's
        scoring (our variant).

    Action space:
        ``Discrete(17)``: 0-9 append the numbers 1-10, then "+", "-", "*", "/", "(", ")", "=".

    Reward:
        As EZPoints: "=" gives +10 for a correct formula, else -1; a number not available: -1.

    Termination:
        "=" terminates; so does any step that starts with a formula of more than 20 tokens (-1): always
        pressing "(" ends at step 22.
    """

    n_cards, target, operators, max_tokens, parens = 4, 24, ("+", "-", "*", "/", "(", ")"), 20, True

    def __init__(self, render_mode: str | None = None, *, solvable_only: bool = False, **rules):
        super().__init__(render_mode, **rules)
        self.solvable_only = solvable_only

    def _deal(self) -> list[int]:
        while True:
            ranks = [int(r) for r in self.np_random.integers(1, 14, size=4)]
            if not self.solvable_only or self._solvable(ranks):
                return ranks

    def _card_boxes(self):
        return [(12 + i * 71, 24, 12 + i * 71 + 63, 24 + 92) for i in range(4)]


def rl4vlm_formula(formula: list[str]) -> str:
    """The formula as RL4VLM's prompt showed it: the tokens joined without spaces (a blank token is one)."""
    return "".join(formula)


class PointsAdapter(EnvAdapter):
    """Prompt, parser and expert for EZPoints/Points24. Expert: an exact solver that emits the next token
    of the shortest correct formula it finds from the current formula, or "=" when it is complete; under
    the RL4VLM rules (``info["exact_arithmetic"]`` False) only formulas that Python's float arithmetic also
    values at the target count, so it reports the one such Points24 hand, 3 3 8 8, as unsolvable."""

    supports_rl4vlm = True
    rl4vlm_tens_first = True

    def __init__(self, env_id: str, env_cls: type[PointsEnv], prompt: str = "cot"):
        super().__init__(env_id, prompt)
        self.cls = env_cls
        self.legal_actions = [*NUMBER_TOKENS, *env_cls.operators, "="]
        self.ops = tuple(o for o in env_cls.operators if o not in "()")

    def _complete(self, info: dict) -> list[str] | None:
        # Episodes collected before the RL4VLM rules existed have no "exact_arithmetic": they were exact.
        return complete(
            info["formula"], info["numbers"], self.cls.target,
            ops=self.ops, parens=self.cls.parens, max_tokens=self.cls.max_tokens,
            exact=info.get("exact_arithmetic", True),
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

    def is_solved(self, total_reward: float, info: dict) -> bool:
        return bool(info["solved"])

    def rl4vlm_task(self, info: dict) -> str:
        n = "two" if self.cls.n_cards == 2 else "four"
        player = "an expert card game player" if self.cls.n_cards == 2 else "an expert 24 points player"
        actions = ", ".join(f"'{a}'" for a in self.legal_actions)
        formula = rl4vlm_formula(info["formula"])
        current = f"The current formula is: {formula}." if formula else "The current formula is empty."
        return (
            f"You are {player}, looking at {n} cards in the image. {current} "
            f"You can choose between [{actions}]: the number or operator "
            "you choose is appended to the current formula. 'J', 'Q' and 'K' count as '10'. Your goal is to "
            f"write a formula that evaluates to {self.cls.target}, using each number only once."
        )

    def rl4vlm_fields(self, info: dict) -> list[rl4vlm.Field]:
        cards = "[x, y]" if self.cls.n_cards == 2 else "[x, y, z, w]"
        formula = rl4vlm_formula(info["formula"])
        return [
            rl4vlm.Field("cards", cards, list(info["numbers"])),
            rl4vlm.Field("current formula", json.dumps(formula), formula),
        ]

    def rl4vlm_thoughts_hint(self) -> str:
        target = self.cls.target
        return (
            f"first check whether the current formula equals {target}; if it does, choose '='. Otherwise "
            f"think about which number or operator to append to make it equal {target}"
        )

    def rl4vlm_action_hint(self) -> str:
        return '"{number}" or "{operator}"'

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
