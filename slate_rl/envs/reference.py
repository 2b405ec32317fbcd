"""A per-user TopicRec simulator written for clarity, used only to cross-check the batched one (tests, benchmark).

It follows the simulator's definition literally (click model, boredom, drift, oracle), one user at a time: Python
deques for the boredom log (reset clicks enter the topic deque but not the step deque, pops happen in lockstep), a
loop over ranks for the click cascade, one click at a time for the drift. All random numbers are passed in (clicks
are U_r < a_r * Gamma[r, j]), so that the same draws fed to the batched `TopicRec.reset_with` / `step_with` must
give the same episode.

With `params.reference_quirks` False, the reset clicks stay out of the boredom log (no Q3), the window keeps the
last `boredom_moving_window` steps (not one more, Q4) and the short-term topic follows the clicked item (not the
topic of the item whose id is the slot index, Q2).

Computations are in float32 (like the GeMS reference implementation) with NumPy; outputs are torch tensors.
"""

from __future__ import annotations

import copy
from collections import deque
from typing import Any

import numpy as np
import torch

from slate_rl.envs.params import EnvParams
from slate_rl.errors import SlateRLError

ArrayLike = torch.Tensor | np.ndarray | list
DYNAMIC_STATE = (
    "t",
    "u",
    "clicked_items",
    "clicked_step",
    "all_clicked_items",
    "bored",
    "bored_timeout",
    "short_term_topic",
)


def _as_numpy(values: ArrayLike, dtype: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)


class ReferenceTopicRec:
    """One simulated user of TopicRec.

    Args:
        params: simulator parameters (the same `EnvParams` as the batched simulator).
        item_embeddings: (num_items, num_topics * topic_size) item table.
    """

    def __init__(self, params: EnvParams, item_embeddings: ArrayLike) -> None:
        self.params = params
        p = params
        self.K, self.S, self.R = p.num_topics, p.topic_size, p.slate_size
        self.E = _as_numpy(item_embeddings, np.float32)
        block_norms = np.linalg.norm(self.E.reshape(len(self.E), self.K, self.S), axis=2)  # (num_items, K)
        self.item_comp = np.argmax(block_norms, axis=1).astype(np.int64)  # first topic on ties
        self.max_score = np.float32(np.linalg.norm(self.E, axis=1).max())
        self.initial_slate = self._initial_slate(block_norms)
        self.gamma = self._propensities()
        self.alpha = np.float32(1.0 if p.click_model in ("tdPBM", "mixPBM") else p.env_alpha)
        self.t = -1  # no episode yet

    # ------------------------------------------------------------------ constants
    def _block_norms(self, vector: np.ndarray) -> list[float]:
        return [float(np.linalg.norm(vector[self.S * k : self.S * (k + 1)])) for k in range(self.K)]

    def _initial_slate(self, norms: np.ndarray) -> np.ndarray:
        """The strongest item of each topic (the R // K strongest when K < R), in topic order."""
        if self.K >= self.R:
            return np.array([int(np.argmax(norms[:, k])) for k in range(self.R)], dtype=np.int64)
        per_topic = self.R // self.K
        slate: list[int] = []
        for k in range(self.K):
            slate.extend(int(i) for i in np.argsort(-norms[:, k], kind="stable")[:per_topic])
        return np.array(slate, dtype=np.int64)

    def _propensities(self) -> np.ndarray:
        """Gamma (R, R + 1); column R is 'no click yet'."""
        p, R = self.params, self.R
        if p.click_model == "tdPBM":
            gamma = np.array([[0.85**r] * (R + 1) for r in range(R)], dtype=np.float64)
        elif p.click_model == "mixPBM":
            gamma = np.array([[0.5 * 0.85**r + 0.5 * 0.85 ** (R - 1 - r)] * (R + 1) for r in range(R)])
        else:
            assert p.env_propensities is not None  # EnvParams requires them for the 'custom' model
            gamma = np.array(list(p.env_propensities), dtype=np.float64).reshape(R, R + 1)
        if p.prop_threshold is not None:
            gamma = (gamma > p.prop_threshold).astype(np.float64)
        return gamma.astype(np.float32)

    def _l21_normalise(self, user: np.ndarray) -> np.ndarray:
        return user / np.float32(sum(self._block_norms(user)))

    # ------------------------------------------------------------------ model pieces
    def _relevance(self, items: np.ndarray, user: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(normalised scores, relevances) of `items` for the (effective) user vector."""
        p = self.params
        scores = np.array([np.dot(self.E[i], user) for i in items], dtype=np.float32) / self.max_score
        if p.rel_threshold is not None:
            return scores, (scores > p.rel_threshold).astype(np.float32)
        logits = np.float32(p.env_slope) * (scores - np.float32(p.env_offset))
        return scores, (np.float32(1.0) / (np.float32(1.0) + np.exp(-logits))).astype(np.float32)

    def _click_model(self, rel: np.ndarray, topics: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        """Diversity penalty on the whole slate, then the cascade on the rank of the last click."""
        p = self.params
        attraction = self.alpha * rel
        most_shared = max(int(np.sum(topics == k)) for k in set(topics.tolist()))
        if most_shared >= p.diversity_threshold:
            attraction = attraction / np.float32(p.diversity_penalty)
        clicks = np.zeros(self.R, dtype=np.int64)
        last = self.R  # column R of Gamma: no click yet
        for r in range(self.R):
            if uniforms[r] < attraction[r] * self.gamma[r, last]:
                clicks[r] = 1
                last = r
        return clicks

    def effective_user(self) -> np.ndarray:
        """u with bored topic blocks zeroed, then the short-term topic block multiplied by the boost."""
        user = self.u.copy()
        for k in range(self.K):
            if self.bored[k]:
                user[self.S * k : self.S * (k + 1)] = 0.0
        stc = self.short_term_topic
        user[self.S * stc : self.S * (stc + 1)] *= np.float32(self.params.short_term_boost)
        return user

    def get_state(self) -> dict[str, Any]:
        """A copy of everything that changes during an episode."""
        return {name: copy.copy(getattr(self, name)) for name in DYNAMIC_STATE}

    def set_state(self, state: dict[str, Any]) -> None:
        """Go back to a state returned by `get_state`."""
        for name, value in state.items():
            setattr(self, name, copy.copy(value))

    # ------------------------------------------------------------------ episode
    def reset(
        self, normal: ArrayLike, topic_weights: ArrayLike, click_uniforms: ArrayLike, fallback_topic: int
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Start an episode from explicit draws: normal (K, S), topic_weights (K,), click_uniforms (R,), a topic."""
        p = self.params
        blocks = np.abs(np.clip(np.float32(0.4) * _as_numpy(normal, np.float32), -1.0, 1.0))  # (K, S)
        weights = _as_numpy(topic_weights, np.float32) ** 3
        weights = weights / weights.sum()
        user = (blocks * weights[:, None]).reshape(-1).astype(np.float32)
        self.u = self._l21_normalise(user)

        self.t = 0
        self.clicked_items: deque[int] = deque(maxlen=p.recent_items_maxlen)  # topics of recent clicks
        self.clicked_step: deque[int] = deque(maxlen=p.recent_items_maxlen)  # their time steps
        self.all_clicked_items: list[int] = []
        self.bored = [False] * self.K
        self.bored_timeout = [p.bored_timeout] * self.K

        slate = self.initial_slate.copy()
        topics = self.item_comp[slate]
        _, rel = self._relevance(slate, self.u)
        clicks = self._click_model(rel, topics, _as_numpy(click_uniforms, np.float32))
        for r in range(self.R):
            if clicks[r]:
                if p.reference_quirks:  # Q3: a topic entry without a step entry
                    self.clicked_items.append(int(topics[r]))
                self.all_clicked_items.append(int(slate[r]))
        clicked_ranks = [r for r in range(self.R) if clicks[r]]
        self.short_term_topic = int(topics[clicked_ranks[-1]]) if clicked_ranks else int(fallback_topic)
        obs = {"slate": torch.from_numpy(slate), "clicks": torch.from_numpy(clicks)}
        return obs, {"user_state": torch.from_numpy(self.u.copy()), "done": False}

    def step(
        self, slate: ArrayLike, click_uniforms: ArrayLike
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, bool, dict[str, Any]]:
        """Show one slate (R item ids, -1 = oracle slot) with the R click uniforms of this step.

        Returns (obs, reward, done, info) as `TopicRec.step` does: obs = {'slate' (filled), 'clicks'}, reward = number
        of clicks (0-dim int64), done = t >= episode_length, info = slate, slate_components, scores, bored,
        user_state (after drift), clicks, done.
        """
        p = self.params
        if self.t < 0:
            raise SlateRLError("call reset() before step()")
        if self.t >= p.episode_length:
            raise SlateRLError(f"the episode is over after {p.episode_length} steps; call reset()")
        slate = np.array(_as_numpy(slate, np.int64))  # a copy: oracle slots are filled in place
        if slate.shape != (self.R,) or slate.min() < -1 or slate.max() >= len(self.E):
            raise SlateRLError(f"a slate is {self.R} item ids in [0, {len(self.E) - 1}] or -1, got {slate.tolist()}")
        uniforms = _as_numpy(click_uniforms, np.float32)

        # 1. time
        self.t += 1
        t = self.t
        # 2. boredom timers
        for k in range(self.K):
            if self.bored[k]:
                self.bored_timeout[k] -= 1
                if self.bored_timeout[k] == 0:
                    self.bored[k] = False
            if not self.bored[k]:
                self.bored_timeout[k] = p.bored_timeout
        # 3. boredom trigger from the clicked topics in the log
        for k in range(self.K):
            if list(self.clicked_items).count(k) >= p.boredom_threshold:
                self.bored[k] = True
        # 4. effective user
        effective = self.effective_user()
        # 5. oracle fill, positional
        if -1 in slate.tolist():
            scores = self.E @ effective
            if p.click_only_once:
                for item in self.all_clicked_items:
                    scores[item] = 0.0
            best = torch.topk(torch.from_numpy(scores), self.R).indices.numpy()
            for r in range(self.R):
                if slate[r] == -1:
                    slate[r] = best[r]
        # 6.-8. relevance and clicks
        topics = self.item_comp[slate]
        scores_hat, rel = self._relevance(slate, effective)
        if p.click_only_once:
            for r in range(self.R):
                if int(slate[r]) in self.all_clicked_items:
                    rel[r] = 0.0
        clicks = self._click_model(rel, topics, uniforms)
        clicked_ranks = [r for r in range(self.R) if clicks[r]]
        # 9. boredom log, then expiry of old steps (both deques, in lockstep)
        for r in clicked_ranks:
            self.clicked_items.append(int(topics[r]))
            self.clicked_step.append(t)
        oldest_kept = t - p.boredom_moving_window if p.reference_quirks else t - p.boredom_moving_window + 1
        while self.clicked_step and self.clicked_step[0] < oldest_kept:
            self.clicked_step.popleft()
            self.clicked_items.popleft()
        # 10. clicked items
        self.all_clicked_items.extend(int(slate[r]) for r in clicked_ranks)
        # 11. drift, one click at a time
        omega = np.float32(p.env_omega)
        for r in clicked_ranks:
            self.u = self._l21_normalise(omega * self.u + (np.float32(1.0) - omega) * self.E[slate[r]])
        # 12. short-term topic
        if clicked_ranks and self.bored[self.short_term_topic]:
            last = clicked_ranks[-1]
            self.short_term_topic = int(self.item_comp[last] if p.reference_quirks else topics[last])  # Q2
        done = t >= p.episode_length
        info = {
            "slate": torch.from_numpy(slate.copy()),
            "slate_components": torch.from_numpy(topics),
            "scores": torch.from_numpy(scores_hat),
            "bored": torch.tensor(self.bored),
            "user_state": torch.from_numpy(self.u.copy()),
            "clicks": torch.from_numpy(clicks),
            "done": done,
        }
        obs = {"slate": torch.from_numpy(slate), "clicks": torch.from_numpy(clicks.copy())}
        return obs, torch.tensor(int(clicks.sum()), dtype=torch.int64), done, info
