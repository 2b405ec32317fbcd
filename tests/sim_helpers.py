"""Shared helpers of the simulator tests: paper tables, scripted users, lock-step runs of batched vs reference."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from slate_rl.envs import TopicRec, env_params, resolve_item_embeddings
from slate_rl.envs.params import EnvParams
from slate_rl.envs.policies import distinct_random_items
from slate_rl.envs.randomness import ResetDraws
from slate_rl.envs.reference import ReferenceTopicRec

REFERENCE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def paper_table_path(kind: str) -> Path:
    """Path of the paper's 'focused' / 'diffuse' table; skips the test when the shared folder is absent."""
    path = REFERENCE_DIR / f"item_embeddings_{kind}.pt"
    if not path.is_file():
        pytest.skip(f"the paper's item embeddings are not available ({path} is absent)")
    return path


def paper_table(kind: str) -> torch.Tensor:
    return torch.load(paper_table_path(kind), map_location="cpu", weights_only=True)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run with `count` intra-op threads, restoring the previous setting.

    The simulator's tensors in tests are tiny: thread hand-offs cost more than they save, and on a shared
    2-core machine spin-waiting threads slow small ops down several-fold.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture
def single_torch_thread() -> Iterator[None]:
    """Fixture form of `torch_threads(1)`: test modules opt in with `pytestmark = pytest.mark.usefixtures(...)`."""
    with torch_threads(1):
        yield


def small_env(params: EnvParams | None = None, sim_seed: int = 5, **overrides) -> TopicRec:
    """A batched simulator on the generated table its parameters name (no file needed)."""
    params = params or env_params("focused_topdown")
    if overrides:
        params = params.replace(**overrides)
    return TopicRec(params, resolve_item_embeddings(params), sim_seed=sim_seed)


def forced_uniforms(click_ranks: list[int], size: int = 10) -> torch.Tensor:
    """Uniforms (size,) that force a click at `click_ranks` (U = 0 < a * gamma) and none elsewhere (U = 1)."""
    uniforms = torch.ones(size)
    uniforms[list(click_ranks)] = 0.0
    return uniforms


def fixed_reset_draws(params: EnvParams, reset_clicks: list[int], fallback_topic: int = 0, seed: int = 0) -> ResetDraws:
    """Draws of one user whose initial-slate clicks are exactly `reset_clicks` (ranks)."""
    generator = torch.Generator().manual_seed(seed)
    return ResetDraws(
        normal=torch.randn(1, params.num_topics, params.topic_size, generator=generator),
        topic_weights=torch.rand(1, params.num_topics, generator=generator),
        click_uniforms=forced_uniforms(reset_clicks, params.slate_size).unsqueeze(0),
        fallback_topic=torch.tensor([fallback_topic]),
    )


def reference_reset(reference: ReferenceTopicRec, draws: ResetDraws, user: int = 0) -> tuple[dict, dict]:
    """Reset the reference with the draws of batched user `user`."""
    return reference.reset(
        draws.normal[user], draws.topic_weights[user], draws.click_uniforms[user], int(draws.fallback_topic[user])
    )


def assert_same_user(env: TopicRec, reference: ReferenceTopicRec, user: int, where: str) -> None:
    """The batched user `user` and the reference user are in the same state."""
    assert env.bored[user].tolist() == list(reference.bored), f"{where}: bored topics differ"
    assert env.bored_timeout[user].tolist() == list(reference.bored_timeout), f"{where}: boredom timers differ"
    assert int(env.short_term_topic[user]) == reference.short_term_topic, f"{where}: short-term topic differs"
    gap = float((env.user[user] - torch.from_numpy(reference.u)).abs().max())
    assert gap <= 2e-6, f"{where}: user states differ by {gap:.2e}"


NEAR_TIE_SCORE = 1e-6  # float32 rounding of the batched vs per-user scores is ~1e-7
NEAR_THRESHOLD_UNIFORM = 1e-4  # ... and of a_r * gamma_r at most ~1e-5 (sigmoid slope 100)


def _reference_step(
    reference: ReferenceTopicRec,
    slate: torch.Tensor,
    uniforms: torch.Tensor,
    batched_slate: torch.Tensor,
    batched_clicks: torch.Tensor,
) -> tuple[tuple, bool]:
    """Step the reference. If its slate or clicks differ from the batched ones, accept the difference only as a
    float near-tie and replay the step from the saved state along the batched path; returns (outputs, replayed).

    Near-ties: an oracle slot whose item differs but has the same score to NEAR_TIE_SCORE (two items swapped by
    rounding), and clicks that flip when the uniform moves by NEAR_THRESHOLD_UNIFORM towards the batched outcome.
    """
    state = reference.get_state()
    outputs = reference.step(slate, uniforms)
    if torch.equal(outputs[0]["slate"], batched_slate) and torch.equal(outputs[0]["clicks"], batched_clicks):
        return outputs, False
    own_slate, own_scores = outputs[0]["slate"], outputs[3]["scores"]
    reference.set_state(state)
    outputs = reference.step(batched_slate, uniforms)
    differ = own_slate != batched_slate
    assert bool((slate[differ] == -1).all()), "a given (non-oracle) item was changed"
    gap = (own_scores[differ] - outputs[3]["scores"][differ]).abs().max() if differ.any() else torch.tensor(0.0)
    assert float(gap) <= NEAR_TIE_SCORE, f"oracle slots differ beyond a float near-tie (score gap {float(gap):.2e})"
    flipped = outputs[0]["clicks"] != batched_clicks
    if flipped.any():
        reference.set_state(state)
        towards = 1.0 - 2.0 * batched_clicks.float()  # lower U where the batched user clicked, raise it elsewhere
        nudged = uniforms + NEAR_THRESHOLD_UNIFORM * flipped.float() * towards
        outputs = reference.step(batched_slate, nudged)
    return outputs, True


def run_lockstep(env: TopicRec, policy, num_users: int) -> dict[str, int]:
    """Play one episode of `num_users` users in the batched simulator and, user by user, in the reference with
    the same draws and slates; assert identical slates, clicks, rewards, bored flags and states at every step
    (float near-ties excepted, see `_reference_step`; they must stay rare).

    Returns counts that show what the episode exercised (clicks, oracle slots, bored steps, stc changes, ...).
    """
    params = env.params
    references = [ReferenceTopicRec(params, env.item_embeddings) for _ in range(num_users)]
    draws = env.stream.reset_draws(num_users, params.num_topics, params.topic_size, params.slate_size)
    obs, info = env.reset_with(draws)
    policy.start(num_users)
    for user, reference in enumerate(references):
        ref_obs, ref_info = reference_reset(reference, draws, user)
        assert torch.equal(ref_obs["slate"], obs["slate"][user])
        assert torch.equal(ref_obs["clicks"], obs["clicks"][user]), f"reset clicks differ for user {user}"
        assert_same_user(env, reference, user, f"reset, user {user}")
    seen = dict.fromkeys(("clicks", "oracle_slots", "bored_user_steps", "stc_changes", "duplicates", "near_ties"), 0)
    for t in range(1, params.episode_length + 1):
        slates = policy.act(obs, info)
        uniforms = env.stream.step_draws(num_users, params.slate_size)
        before = env.short_term_topic.clone()
        obs, reward, done, info = env.step_with(slates, uniforms)
        seen["oracle_slots"] += int((slates < 0).sum())
        seen["clicks"] += int(reward.sum())
        seen["bored_user_steps"] += int(info["bored"].any(dim=1).sum())
        seen["stc_changes"] += int((env.short_term_topic != before).sum())
        for user, reference in enumerate(references):
            where = f"step {t}, user {user}"
            (ref_obs, ref_reward, ref_done, ref_info), replayed = _reference_step(
                reference, slates[user], uniforms[user], obs["slate"][user], obs["clicks"][user]
            )
            seen["near_ties"] += int(replayed)
            assert torch.equal(ref_obs["slate"], obs["slate"][user]), f"{where}: slates differ"
            assert torch.equal(ref_obs["clicks"], obs["clicks"][user]), f"{where}: clicks differ"
            assert int(ref_reward) == int(reward[user]) and ref_done == bool(done[user]), where
            assert torch.equal(ref_info["bored"], info["bored"][user]), f"{where}: bored flags differ"
            assert torch.equal(ref_info["slate_components"], info["slate_topics"][user]), where
            assert float((ref_info["scores"] - info["scores"][user]).abs().max()) <= 1e-5, f"{where}: scores differ"
            assert_same_user(env, reference, user, where)
            seen["duplicates"] += int(len(set(ref_obs["slate"].tolist())) < params.slate_size)
    # a tie persists while the user does not click, so one tie can count on several steps
    assert seen["near_ties"] <= 10 + num_users * params.episode_length // 50, f"too many near-ties: {seen}"
    return seen


def welch_z(mean_a: float, se_a: float, mean_b: float, se_b: float) -> float:
    """|difference of two means| in units of its standard error."""
    return abs(mean_a - mean_b) / math.sqrt(se_a**2 + se_b**2)


class PerUserEpsilon:
    """Epsilon-greedy oracle slates with one epsilon per user (e.g. 0 / 0.5 / 1: oracle, logging, random users in
    one batch). Random items of a slate are distinct; -1 slots are filled by the simulator's oracle."""

    def __init__(self, epsilons: list[float], num_items: int, slate_size: int, seed: int) -> None:
        self.epsilons = torch.tensor(epsilons, dtype=torch.float32)
        self.num_items, self.slate_size = num_items, slate_size
        self.generator = torch.Generator().manual_seed(seed)

    def start(self, num_users: int) -> None:
        assert num_users == len(self.epsilons)

    def act(self, obs: dict, info: dict) -> torch.Tensor:
        n = len(self.epsilons)
        random_slot = torch.rand(n, self.slate_size, generator=self.generator) < self.epsilons.unsqueeze(1)
        items = distinct_random_items(n, self.num_items, self.slate_size, self.generator)
        return torch.where(random_slot, items, torch.full_like(items, -1))


def items_by_topic(table: torch.Tensor, num_topics: int = 10, topic_size: int = 2) -> dict[int, list[int]]:
    """Item ids of each topic (block of largest norm), computed here in float64."""
    norms = table.double().reshape(table.shape[0], num_topics, topic_size).norm(dim=2)
    topics = norms.argmax(dim=1)
    return {k: (topics == k).nonzero().flatten().tolist() for k in range(num_topics)}


class ScriptedUser:
    """One user played in both simulators at once, with clicks forced by uniforms of 0 (click) and 1 (none)."""

    def __init__(self, env: TopicRec, reset_clicks: list[int], fallback_topic: int = 0, seed: int = 0) -> None:
        self.env = env
        self.reference = ReferenceTopicRec(env.params, env.item_embeddings)
        draws = fixed_reset_draws(env.params, reset_clicks, fallback_topic, seed)
        obs, _ = env.reset_with(draws)
        ref_obs, _ = reference_reset(self.reference, draws)
        assert obs["clicks"][0].nonzero().flatten().tolist() == sorted(reset_clicks)
        assert torch.equal(ref_obs["clicks"], obs["clicks"][0])
        self.topic_items = items_by_topic(env.item_embeddings, env.params.num_topics, env.params.topic_size)

    def step(self, slate: list[int], click_ranks: list[int]) -> tuple[dict, dict]:
        """Show `slate` with clicks forced at `click_ranks`; check both simulators agree; return the batched
        (obs, info)."""
        uniforms = forced_uniforms(click_ranks, self.env.slate_size)
        obs, _, _, info = self.env.step_with(torch.tensor([slate]), uniforms.unsqueeze(0))
        ref_obs, _, _, ref_info = self.reference.step(slate, uniforms)
        assert torch.equal(ref_obs["slate"], obs["slate"][0])
        assert torch.equal(ref_obs["clicks"], obs["clicks"][0])
        assert torch.equal(ref_info["bored"], info["bored"][0]), "the two simulators disagree on boredom"
        assert_same_user(self.env, self.reference, 0, f"scripted step {self.env.t}")
        return obs, info

    def click_topics(self, topics: list[int]) -> set[int]:
        """One step whose clicks (ranks 0, 1, ...) are on items of `topics`; returns the topics bored in it."""
        used: dict[int, int] = {}
        slate = []
        for topic in topics:
            slate.append(self.topic_items[topic][used.get(topic, 0)])
            used[topic] = used.get(topic, 0) + 1
        fillers = [i for i in range(self.env.num_items) if i not in slate]
        slate += fillers[: self.env.slate_size - len(slate)]
        obs, info = self.step(slate, list(range(len(topics))))
        assert obs["clicks"][0].tolist() == [1] * len(topics) + [0] * (len(slate) - len(topics)), "not forced"
        return set(info["bored"][0].nonzero().flatten().tolist())
