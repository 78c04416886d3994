"""Blackjack with Gymnasium's rules (infinite deck), drawn as cards, and the basic-strategy expert."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vlmppo.envs.adapter import EnvAdapter
from vlmppo.envs.base import FrameEnv
from vlmppo.envs.drawing import FELT, SUITS, WHITE, canvas, draw_card, font, rank_name, to_array
from vlmppo.envs.parsing import ExpertAction


def hand_value(ranks: list[int]) -> tuple[int, bool]:
    """(best total, whether an ace counts 11) of a hand of ranks 1-13; J/Q/K count 10."""
    total = sum(min(r, 10) for r in ranks)
    if 1 in ranks and total + 10 <= 21:
        return total + 10, True
    return total, False


def is_natural(ranks: list[int]) -> bool:
    """An ace and a ten-valued card as the whole (two-card) hand."""
    return len(ranks) == 2 and sorted(min(r, 10) for r in ranks) == [1, 10]


# Basic strategy for this game (infinite deck, dealer stands on all 17s, no peek, only hit or stand),
# checked against an exact dynamic programme over the same rules. Columns: dealer up-card 2..10, A.
_UP_COLUMNS = (2, 3, 4, 5, 6, 7, 8, 9, 10, 1)
_HARD = {12: "HHSSSHHHHH", 13: "SSSSSHHHHH", 14: "SSSSSHHHHH", 15: "SSSSSHHHHH", 16: "SSSSSHHHHH"}
_SOFT = {18: "SSSSSSSHHH"}


def basic_strategy(player_sum: int, usable_ace: bool, dealer_up: int) -> str:
    """The basic-strategy move, "hit" or "stand".

    Args:
        player_sum: The player's best total.
        usable_ace: Whether that total counts an ace as 11 (a soft hand).
        dealer_up: The dealer's up-card value (1 = ace, 10 = ten or face card).
    """
    if usable_ace:
        row = _SOFT.get(player_sum, "H" * 10 if player_sum <= 17 else "S" * 10)
    else:
        row = _HARD.get(player_sum, "H" * 10 if player_sum <= 11 else "S" * 10)
    return "hit" if row[_UP_COLUMNS.index(min(dealer_up, 10))] == "H" else "stand"


class BlackjackEnv(FrameEnv):
    """Blackjack (``gym_cards/Blackjack-v0``), Gymnasium's ``Blackjack-v1`` rules drawn as cards.

    Description:
        Green felt. "Dealer" with the up-card and a face-down hole card (turned up when the round ends,
        with any cards the dealer drew); "Player" with the player's cards, wrapping after 5.

    Mission:
        Beat the dealer: get closer to 21 than the dealer without going over.

    Action space:
        ``Discrete(2)``: 0 stand, 1 hit. Cards come from an infinite deck (each rank 1/13); aces count 1
        or 11, J/Q/K count 10.

    Reward:
        Hit: -1 on bust, else 0. Stand: the dealer draws while below 17 (standing on soft 17), then +1
        win, 0 draw, -1 loss. ``natural=True``: a winning natural (ace + ten as the first two cards) pays
        +1.5. ``sab=True`` (Sutton & Barto): a player natural beats any dealer hand except a natural.

    Termination:
        Terminated on bust or stand.
    """

    def __init__(self, natural: bool = False, sab: bool = False, render_mode: str | None = None):
        super().__init__(300, 300, render_mode)
        self.action_space = spaces.Discrete(2)
        self.natural, self.sab = natural, sab
        self.player: list[int] = []
        self.dealer: list[int] = []
        self.player_suits: list[str] = []
        self.dealer_suits: list[str] = []
        self.revealed = False

    def _draw_card(self) -> tuple[int, str]:
        rank = int(self.np_random.integers(1, 14))
        return rank, SUITS[int(self.np_random.integers(0, 4))]

    def _deal(self, hand: list[int], suits: list[str]) -> None:
        rank, suit = self._draw_card()
        hand.append(rank)
        suits.append(suit)

    def _new_episode(self) -> None:
        self.player, self.dealer, self.player_suits, self.dealer_suits = [], [], [], []
        self.revealed = False
        for _ in range(2):  # Gymnasium's order: the dealer's two cards, then the player's two.
            self._deal(self.dealer, self.dealer_suits)
        for _ in range(2):
            self._deal(self.player, self.player_suits)

    def _transition(self, action: int) -> tuple[float, bool, bool]:
        if action == 1:
            self._deal(self.player, self.player_suits)
            if hand_value(self.player)[0] > 21:
                self.revealed = True
                return -1.0, True, False
            return 0.0, False, False
        self.revealed = True
        while hand_value(self.dealer)[0] < 17:
            self._deal(self.dealer, self.dealer_suits)
        player, dealer = hand_value(self.player)[0], hand_value(self.dealer)[0]
        dealer = 0 if dealer > 21 else dealer
        reward = float(player > dealer) - float(player < dealer)
        if self.sab and is_natural(self.player) and not is_natural(self.dealer):
            reward = 1.0
        elif not self.sab and self.natural and is_natural(self.player) and reward == 1.0:
            reward = 1.5
        return reward, True, False

    def _visible_dealer(self) -> list[int]:
        return list(self.dealer) if self.revealed else self.dealer[:1]

    def _info(self) -> dict:
        player_sum, usable_ace = hand_value(self.player)
        return {
            "player_cards": list(self.player),
            "dealer_cards": self._visible_dealer(),
            "player_sum": player_sum,
            "dealer_sum": hand_value(self._visible_dealer())[0],
            "dealer_up": min(self.dealer[0], 10),
            "usable_ace": usable_ace,
        }

    def _frame_key(self):
        shown = len(self.dealer) if self.revealed else 1
        return (self.revealed, len(self.dealer), tuple(self.dealer[:shown]), tuple(self.dealer_suits),
                tuple(self.player), tuple(self.player_suits))  # fmt: skip

    def _draw(self) -> np.ndarray:
        image, draw = canvas(300, 300, FELT)
        w, h, pitch = 52, 74, 57
        draw.text((12, 4), "Dealer", font=font(22), fill=WHITE)
        n = len(self.dealer) if self.revealed else 2
        # The dealer row never wraps: rare long hands are overlapped to stay on one row.
        step = min(pitch, (288 - 12 - w) // max(1, n - 1))
        for i in range(n):
            rank = self.dealer[i] if (self.revealed or i == 0) else None
            draw_card(image, (12 + i * step, 30, 12 + i * step + w, 30 + h), rank, self.dealer_suits[i])
        draw.text((12, 110), "Player", font=font(22), fill=WHITE)
        for i, (rank, suit) in enumerate(zip(self.player, self.player_suits, strict=True)):
            row, col = divmod(i, 5)
            if row > 1:  # 11+ cards (aces and twos only) is vanishingly rare; a third row would not fit
                break
            x, y = 12 + col * pitch, 138 + row * (h + 6)
            draw_card(image, (x, y, x + w, y + h), rank, suit)
        return to_array(image)


class BlackjackAdapter(EnvAdapter):
    """Prompt, parser and expert for Blackjack. Expert: the basic-strategy table (not always a win)."""

    legal_actions = ["stand", "hit"]
    supports_rl4vlm = True

    def task_text(self, info: dict) -> str:
        return (
            "You are playing Blackjack. The image shows the dealer's cards at the top (one face up, one face "
            "down) and your cards at the bottom. Aces count 1 or 11; J, Q and K count 10. Get closer to 21 "
            'than the dealer without going over: "hit" takes another card, "stand" ends your turn and the '
            "dealer draws until 17 or more."
        )

    def thoughts_hint(self) -> str:
        return "In your thoughts, first read out your cards and total and the dealer's face-up card, then decide."

    def expert(self, env: gym.Env, info: dict) -> ExpertAction:
        action = basic_strategy(info["player_sum"], info["usable_ace"], info["dealer_up"])
        kind = "soft" if info["usable_ace"] else "hard"
        cards = " ".join(rank_name(r) for r in info["player_cards"])
        up = "A" if info["dealer_up"] == 1 else str(info["dealer_up"])
        return ExpertAction(
            self.action_index(action),
            f"my cards {cards}: {kind} {info['player_sum']}; dealer shows {up}: basic strategy says {action}",
        )

    def is_solved(self, total_reward: float, info: dict) -> bool:
        return total_reward > 0  # the round is won (a push is not)

    def rl4vlm_task(self, info: dict) -> str:
        return (
            "You are a blackjack player looking at the current state of the game in the image. You can "
            "choose between ['stand', 'hit']."
        )

    def rl4vlm_thoughts_hint(self) -> str:
        return (
            "first say your total points and the dealer's total points, then think about which action to take"
        )

    def rl4vlm_action_hint(self) -> str:
        return '"stand" or "hit"'

    def expert_score(self, info_before, action_index, info_after, reward):
        # No distance exists in a game of chance: judge the decision against basic strategy, not the card
        # that followed. Uses 10 (agrees and wins) / 8 (agrees) / 0 (disagrees).
        action = self.legal_actions[action_index]
        best = basic_strategy(info_before["player_sum"], info_before["usable_ace"], info_before["dealer_up"])
        if action != best:
            return 0, f"{action} goes against basic strategy ({best} on {info_before['player_sum']})"
        if reward > 0:
            return 10, f"{action} follows basic strategy and wins"
        return 8, f"{action} follows basic strategy"
