"""TopicRec, the GeMS benchmark's simulated user, batched over N users on torch tensors.

All N users of a batch start together (`reset(n)`) and step together (`step(slates)`, slates N x R); an episode
is one reset followed by exactly `episode_length` steps. The order of operations of a step, the click models,
boredom (with the reference's stale reset-click entries and six-step window), drift and the short-term oracle
follow the reference implementation; docs/fidelity.md lists its quirks and how they are reproduced.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from slate_rl.envs import click_models
from slate_rl.envs.embeddings import initial_slate, item_topics
from slate_rl.envs.params import EnvParams
from slate_rl.envs.randomness import DEFAULT_SIM_SEED, ResetDraws, UserStream
from slate_rl.errors import SlateRLError

Observation = dict[str, torch.Tensor]
SlateInput = torch.Tensor | np.ndarray


def l21_normalise(users: torch.Tensor, num_topics: int, topic_size: int) -> torch.Tensor:
    """Divide each row by the sum of its topic-block L2 norms (so that sum_k ||u_k|| = 1)."""
    norms = users.reshape(users.shape[0], num_topics, topic_size).norm(dim=2).sum(dim=1, keepdim=True)
    return users / norms


class TopicRec:
    """Batched TopicRec simulator.

    Args:
        params: simulator parameters (see `EnvParams`; `slate_rl.envs.make` builds them from the presets).
        item_embeddings: validated (num_items, num_topics * topic_size) float32 table.
        sim_seed: seed of the simulator's own generator (users and clicks); the same for every method and seed.
        device: torch device of all state tensors.
        name: preset name, for messages and metadata.
        oracle_chunk: users per block when scoring the whole catalogue (keeps the score matrix in cache).
    """

    def __init__(
        self,
        params: EnvParams,
        item_embeddings: torch.Tensor,
        sim_seed: int = DEFAULT_SIM_SEED,
        device: str | torch.device = "cpu",
        name: str = "custom",
        oracle_chunk: int = 1024,
    ) -> None:
        self.params = params
        self.name = name
        self.device = torch.device(device)
        self.oracle_chunk = oracle_chunk
        p = params
        self.item_embeddings = item_embeddings.to(self.device, torch.float32).contiguous()
        self.item_topics = item_topics(self.item_embeddings, p.num_topics, p.topic_size)
        self.initial_slate = initial_slate(self.item_embeddings, p.num_topics, p.topic_size, p.slate_size)
        self.max_score = self.item_embeddings.norm(dim=1).max()
        self.propensities = click_models.propensity_matrix(p).to(self.device)
        self.alpha = click_models.attractiveness_scale(p)
        self._table_t = self.item_embeddings.T.contiguous()
        self.stream = UserStream(sim_seed, self.device)
        self.num_users = 0
        self.t = 0

    # ------------------------------------------------------------------ sizes
    @property
    def num_items(self) -> int:
        return self.params.num_items

    @property
    def slate_size(self) -> int:
        return self.params.slate_size

    @property
    def episode_length(self) -> int:
        return self.params.episode_length

    @property
    def embedding_dim(self) -> int:
        return self.params.embedding_dim

    def reset_random_state(self) -> None:
        """Re-seed the simulator's generator: the next `reset` meets the stream's first users again."""
        self.stream.reseed()

    # ------------------------------------------------------------------ episode
    def reset(self, num_users: int) -> tuple[Observation, dict[str, torch.Tensor]]:
        """Draw `num_users` new users and show them the fixed initial slate; returns (obs, info)."""
        if int(num_users) < 1:
            raise SlateRLError(f"reset needs at least one user (got num_users={num_users})")
        p = self.params
        draws = self.stream.reset_draws(int(num_users), p.num_topics, p.topic_size, p.slate_size)
        return self.reset_with(draws)

    def reset_with(self, draws: ResetDraws) -> tuple[Observation, dict[str, torch.Tensor]]:
        """Reset from explicit random draws (what `reset` does after drawing them)."""
        p = self.params
        n = draws.normal.shape[0]
        blocks = (0.4 * draws.normal).clamp(-1.0, 1.0).abs()
        weights = draws.topic_weights.pow(3)
        weights = weights / weights.sum(dim=1, keepdim=True)
        blocks = blocks * weights.unsqueeze(-1)
        self.user = blocks.reshape(n, -1) / blocks.norm(dim=2).sum(dim=1, keepdim=True)
        self.num_users = n
        self.t = 0
        self.bored = torch.zeros(n, p.num_topics, dtype=torch.bool, device=self.device)
        self.bored_timeout = torch.full((n, p.num_topics), p.bored_timeout, dtype=torch.long, device=self.device)

        slates = self.initial_slate.unsqueeze(0).expand(n, -1)
        slate_topics = self.item_topics[slates]
        scores = self._slate_scores(self.user, slates)
        clicks = self._clicks(self._relevance(scores), slate_topics, draws.click_uniforms)

        size = p.recent_items_maxlen
        self._log_topics = torch.zeros(n, size, dtype=torch.long, device=self.device)
        self._log_steps = torch.zeros(n, size, dtype=torch.long, device=self.device)
        self._log_len_items = torch.zeros(n, dtype=torch.long, device=self.device)
        self._log_len_steps = torch.zeros(n, dtype=torch.long, device=self.device)
        if p.reference_quirks:  # Q3: reset clicks enter the topic log, but not the step log
            self._append_clicks(slate_topics, clicks, count_in_step_log=False)

        has_click = clicks.any(dim=1)
        last_topic = self.item_topics[slates.gather(1, self._last_click_rank(clicks).unsqueeze(1)).squeeze(1)]
        self.short_term_topic = torch.where(has_click, last_topic, draws.fallback_topic.to(self.device))
        self._oracle_cache = torch.zeros(n, p.slate_size, dtype=torch.long, device=self.device)
        self._oracle_valid = torch.zeros(n, dtype=torch.bool, device=self.device)
        self._clicked_before = None
        if p.click_only_once:
            self._clicked_before = torch.zeros(n, p.num_items, dtype=torch.bool, device=self.device)
            self._mark_clicked(self._clicked_before, slates, clicks)
        obs = {"slate": slates.clone(), "clicks": clicks}
        info = {"user_state": self.user, "bored": self.bored, "scores": scores, "slate_topics": slate_topics}
        return obs, info

    def step(self, slates: SlateInput) -> tuple[Observation, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Show one slate per user (entries -1 are filled by the short-term oracle, positionally).

        Returns (obs, reward, done, info): obs = {'slate', 'clicks'} (N x R), reward = clicks per user (N, float),
        done (N, bool; True on the last step of the episode), info = privileged state (see module docs).
        """
        slates = self._check_slates(slates)
        uniforms = self.stream.step_draws(self.num_users, self.slate_size)
        return self.step_with(slates, uniforms)

    def step_with(self, slates: torch.Tensor, uniforms: torch.Tensor):
        """One step from explicit click uniforms (what `step` does after drawing them)."""
        p = self.params
        self.t += 1
        # 2. boredom timers, 3. boredom trigger from the click log
        timeout = torch.where(self.bored, self.bored_timeout - 1, self.bored_timeout)
        bored = self.bored & (timeout != 0)
        self.bored_timeout = torch.where(bored, timeout, torch.full_like(timeout, p.bored_timeout))
        bored = bored | (self._topic_counts() >= p.boredom_threshold)
        self._oracle_valid &= ~(bored != self.bored).any(dim=1)
        self.bored = bored
        # 4. effective user, 5. oracle filling
        effective = self.effective_user()
        if (slates < 0).any():
            slates = torch.where(slates < 0, self._cached_oracle_slates(effective), slates)
        # 6.-8. relevance, diversity penalty, clicks
        slate_topics = self.item_topics[slates]
        scores = self._slate_scores(effective, slates)
        relevance = self._relevance(scores)
        if self._clicked_before is not None:
            relevance = relevance.masked_fill(self._clicked_before.gather(1, slates), 0.0)
        clicks = self._clicks(relevance, slate_topics, uniforms)
        # 9.-12. click log, drift, short-term topic
        self._append_clicks(slate_topics, clicks, count_in_step_log=True)
        if self._clicked_before is not None:
            self._mark_clicked(self._clicked_before, slates, clicks)
        self._drift(slates, clicks)
        self._update_short_term_topic(slates, clicks)

        reward = clicks.sum(dim=1).to(torch.float32)
        done = torch.full((self.num_users,), self.t >= p.episode_length, dtype=torch.bool, device=self.device)
        obs = {"slate": slates, "clicks": clicks}
        info = {"user_state": self.user, "bored": self.bored, "scores": scores, "slate_topics": slate_topics}
        return obs, reward, done, info

    # ------------------------------------------------------------------ privileged views
    def effective_user(self) -> torch.Tensor:
        """u with the blocks of bored topics zeroed and the short-term topic block scaled by the boost."""
        p = self.params
        keep = (~self.bored).to(self.user.dtype)
        if p.short_term_boost != 1.0:
            boost = torch.ones_like(keep)
            boost.scatter_(1, self.short_term_topic.unsqueeze(1), p.short_term_boost)
            keep = keep * boost
        return (self.user.reshape(self.num_users, p.num_topics, p.topic_size) * keep.unsqueeze(-1)).reshape(
            self.num_users, -1
        )

    def oracle_slates(self) -> torch.Tensor:
        """The short-term oracle: for each user the R items of highest current score, best first."""
        return self._top_items(self.effective_user(), torch.arange(self.num_users, device=self.device))

    def _top_items(self, effective: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """Top-R items by raw score for the given rows of `effective` (users = their row numbers), in chunks."""
        out = torch.empty(users.shape[0], self.slate_size, dtype=torch.long, device=self.device)
        for start in range(0, users.shape[0], self.oracle_chunk):
            rows = users[start : start + self.oracle_chunk]
            scores = effective[rows] @ self._table_t
            if self._clicked_before is not None:  # click_only_once: score 0, still selectable
                scores = scores.masked_fill(self._clicked_before[rows], 0.0)
            out[start : start + self.oracle_chunk] = scores.topk(self.slate_size, dim=1).indices
        return out

    def _cached_oracle_slates(self, effective: torch.Tensor) -> torch.Tensor:
        """Oracle slates, recomputed only for users whose effective vector changed since the last computation.

        The oracle is a deterministic function of (u, bored topics, short-term topic, clicked items); u and the
        clicked items change only with a click, so most users of a step reuse their previous ranking exactly.
        """
        stale = (~self._oracle_valid).nonzero().flatten()
        if stale.numel():
            self._oracle_cache[stale] = self._top_items(effective, stale)
            self._oracle_valid[stale] = True
        return self._oracle_cache

    def item_relevances(self, user_state: torch.Tensor | None = None, reference_slicing: bool = False) -> torch.Tensor:
        """Relevance of every item (N x num_items), privileged information (SlateQ).

        With `user_state` (B x D): for those raw user vectors (no boredom, no boost). Without it: for the current
        effective users; `reference_slicing=True` reproduces the reference's get_relevances() (quirk Q1), which
        masks coordinates [S*k, (S+1)*k) of a bored topic k instead of its block [S*k, S*(k+1)).
        """
        if user_state is not None:
            user = user_state.to(self.device, torch.float32)
        elif reference_slicing:
            user = self._reference_sliced_user()
        else:
            user = self.effective_user()
        return self._relevance((user @ self.item_embeddings.T) / self.max_score)

    def _reference_sliced_user(self) -> torch.Tensor:
        """The current user with the reference's mis-sliced boredom mask and boost (quirk Q1)."""
        p = self.params
        user = self.user.clone()
        for topic in range(p.num_topics):
            lo, hi = p.topic_size * topic, min((p.topic_size + 1) * topic, p.embedding_dim)
            if lo >= hi:
                continue
            user[:, lo:hi] = torch.where(self.bored[:, topic : topic + 1], 0.0, user[:, lo:hi])
            if p.short_term_boost != 1.0:
                is_stc = (self.short_term_topic == topic).unsqueeze(1)
                user[:, lo:hi] = torch.where(is_stc, user[:, lo:hi] * p.short_term_boost, user[:, lo:hi])
        return user

    # ------------------------------------------------------------------ internals
    def _check_slates(self, slates: SlateInput) -> torch.Tensor:
        if self.num_users == 0:
            raise SlateRLError("call reset(num_users) before step()")
        if self.t >= self.episode_length:
            raise SlateRLError(
                f"the episode is over after {self.episode_length} steps; call reset() to start a new one"
            )
        if isinstance(slates, np.ndarray):
            slates = torch.from_numpy(slates)
        if not isinstance(slates, torch.Tensor):
            raise SlateRLError(f"slates must be a tensor or array of item ids, got {type(slates).__name__}")
        expected = (self.num_users, self.slate_size)
        if tuple(slates.shape) != expected:
            raise SlateRLError(
                f"slates must have shape (num_users, slate_size) = {expected}, got {tuple(slates.shape)}"
            )
        if slates.dtype.is_floating_point or slates.dtype == torch.bool or slates.dtype.is_complex:
            raise SlateRLError(f"slates must hold integer item ids, got dtype {slates.dtype}")
        slates = slates.to(self.device, torch.long)
        low, high = int(slates.min()), int(slates.max())
        if low < -1 or high >= self.num_items:
            raise SlateRLError(
                f"slate entries must be item ids in [0, {self.num_items - 1}] or -1 (oracle fill); "
                f"got values in [{low}, {high}]"
            )
        return slates

    def _slate_scores(self, users: torch.Tensor, slates: torch.Tensor) -> torch.Tensor:
        """Normalised scores s_hat (N x R) of the slate items for the given (effective) users."""
        items = self.item_embeddings[slates]  # (N, R, D)
        return torch.bmm(items, users.unsqueeze(2)).squeeze(2) / self.max_score

    def _relevance(self, scores: torch.Tensor) -> torch.Tensor:
        p = self.params
        if p.rel_threshold is not None:
            return (scores > p.rel_threshold).to(scores.dtype)
        return torch.sigmoid(p.env_slope * (scores - p.env_offset))

    def _clicks(self, relevance: torch.Tensor, slate_topics: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        """Diversity penalty (whole slate, duplicates counted) then the click model."""
        p = self.params
        attraction = self.alpha * relevance
        if p.diversity_penalty != 1.0:
            counts = torch.zeros(slate_topics.shape[0], p.num_topics, dtype=torch.long, device=self.device)
            counts.scatter_add_(1, slate_topics, torch.ones_like(slate_topics))
            penalised = counts.max(dim=1).values >= p.diversity_threshold
            attraction = torch.where(penalised.unsqueeze(1), attraction / p.diversity_penalty, attraction)
        return click_models.sample_clicks(attraction, self.propensities, uniforms)

    def _topic_counts(self) -> torch.Tensor:
        """Clicks per topic among the last L_i entries of the topic log (N x K)."""
        size = self.params.recent_items_maxlen
        columns = torch.arange(size, device=self.device)
        valid = columns.unsqueeze(0) >= (size - self._log_len_items).unsqueeze(1)
        counts = torch.zeros(self.num_users, self.params.num_topics, dtype=torch.long, device=self.device)
        counts.scatter_add_(1, self._log_topics, valid.long())
        return counts

    def _append_clicks(self, slate_topics: torch.Tensor, clicks: torch.Tensor, count_in_step_log: bool) -> None:
        """Push the clicked topics (rank order) to the log of the last `recent_items_maxlen` clicks, then expire.

        The log holds the most recent clicks right-aligned; L_i (topic entries) and L_s (step entries) are suffix
        lengths. Reset clicks get no step entry (Q3); entries from steps < t - window are popped from both (Q4).
        """
        p = self.params
        size = p.recent_items_maxlen
        n = slate_topics.shape[0]
        num_clicks = clicks.sum(dim=1)
        if bool((num_clicks > 0).any()):
            # positions of the new clicks after the old log: size + (rank among this step's clicks)
            order = clicks.cumsum(dim=1) - 1
            width = size + clicks.shape[1] + 1  # old log, up to R new clicks, one slot where non-clicks land
            target = torch.where(clicks.bool(), size + order, torch.full_like(order, width - 1))
            topics = torch.zeros(n, width, dtype=torch.long, device=self.device)
            steps = torch.zeros_like(topics)
            topics[:, :size] = self._log_topics
            steps[:, :size] = self._log_steps
            topics.scatter_(1, target, slate_topics)
            steps[:, size:] = self.t
            keep = num_clicks.unsqueeze(1) + torch.arange(size, device=self.device).unsqueeze(0)
            self._log_topics = topics.gather(1, keep)
            self._log_steps = steps.gather(1, keep)
            self._log_len_items = (self._log_len_items + num_clicks).clamp(max=size)
            if count_in_step_log:
                self._log_len_steps = (self._log_len_steps + num_clicks).clamp(max=size)
        if not count_in_step_log:
            return
        window = p.boredom_moving_window
        horizon = self.t - window if p.reference_quirks else self.t - window + 1
        columns = torch.arange(size, device=self.device).unsqueeze(0)
        in_step_log = columns >= (size - self._log_len_steps).unsqueeze(1)
        expired = (in_step_log & (self._log_steps < horizon)).sum(dim=1)
        self._log_len_items = self._log_len_items - expired
        self._log_len_steps = self._log_len_steps - expired

    @staticmethod
    def _mark_clicked(clicked_before: torch.Tensor, slates: torch.Tensor, clicks: torch.Tensor) -> None:
        """Flag (in place) every item each user clicked in `slates`."""
        counts = torch.zeros(clicked_before.shape, dtype=torch.long, device=clicked_before.device)
        counts.scatter_add_(1, slates, clicks)
        clicked_before |= counts > 0

    def _drift(self, slates: torch.Tensor, clicks: torch.Tensor) -> None:
        """Move each user towards every clicked item in rank order, renormalising after each click."""
        p = self.params
        clickers = clicks.any(dim=1).nonzero().flatten()
        if clickers.numel() == 0:
            return
        self._oracle_valid[clickers] = False
        user, items, user_clicks = self.user[clickers], slates[clickers], clicks[clickers].bool()
        for rank in range(self.slate_size):
            rows = user_clicks[:, rank].nonzero().flatten()
            if rows.numel():
                moved = p.env_omega * user[rows] + (1 - p.env_omega) * self.item_embeddings[items[rows, rank]]
                user[rows] = l21_normalise(moved, p.num_topics, p.topic_size)
        self.user = self.user.index_copy(0, clickers, user)

    def _update_short_term_topic(self, slates: torch.Tensor, clicks: torch.Tensor) -> None:
        has_click = clicks.any(dim=1)
        stc_bored = self.bored.gather(1, self.short_term_topic.unsqueeze(1)).squeeze(1)
        last_rank = self._last_click_rank(clicks)
        if self.params.reference_quirks:  # Q2: the slot index is used as an item id
            new_topic = self.item_topics[last_rank]
        else:
            new_topic = self.item_topics[slates.gather(1, last_rank.unsqueeze(1)).squeeze(1)]
        changed = has_click & stc_bored & (new_topic != self.short_term_topic)
        if self.params.short_term_boost != 1.0:
            self._oracle_valid &= ~changed
        self.short_term_topic = torch.where(changed, new_topic, self.short_term_topic)

    @staticmethod
    def _last_click_rank(clicks: torch.Tensor) -> torch.Tensor:
        """Rank of the last click of each row (0 where there is none)."""
        ranks = torch.arange(clicks.shape[1], device=clicks.device)
        return (clicks.bool() * (ranks + 1)).max(dim=1).values.clamp(min=1) - 1

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the current batch of episodes and the user stream exactly."""
        state = {"t": self.t, "num_users": self.num_users, "stream": self.stream.get_state()}
        if self.num_users:
            for key in (
                "user",
                "bored",
                "bored_timeout",
                "short_term_topic",
                "_log_topics",
                "_log_steps",
                "_log_len_items",
                "_log_len_steps",
                "_clicked_before",
                "_oracle_cache",
                "_oracle_valid",
            ):
                value = getattr(self, key)
                state[key] = None if value is None else value.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t = state["t"]
        self.num_users = state["num_users"]
        self.stream.set_state(state["stream"])
        for key, value in state.items():
            if key not in ("t", "num_users", "stream"):
                setattr(self, key, None if value is None else value.to(self.device))
