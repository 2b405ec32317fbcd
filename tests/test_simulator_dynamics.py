"""Scripted users: boredom (stale entries, six-step window, 10-entry cap, timers), drift, short-term topic,
oracle filling, click_only_once, rel_threshold, episode end, input errors, checkpoints.

Clicks are forced with uniforms of 0 (click: U = 0 < a * gamma) and 1 (no click); every scripted step runs in
the batched simulator and the reference at once (`ScriptedUser`), and the expected timelines are derived by hand.
"""

from __future__ import annotations

import copy

import pytest
import torch

from sim_helpers import ScriptedUser, fixed_reset_draws, reference_reset, single_torch_thread, small_env
from slate_rl.envs import env_params
from slate_rl.envs.policies import EpsilonGreedyOracle
from slate_rl.envs.reference import ReferenceTopicRec
from slate_rl.errors import SlateRLError

pytestmark = pytest.mark.usefixtures(single_torch_thread.__name__)  # tiny tensors: threads only add overhead


# ---------------------------------------------------------------- boredom
def test_boredom_timeline_with_stale_reset_entries_and_the_cap() -> None:
    """Hand-derived from the reference's boredom rules (topic log `items`, step log `steps`, reset clicks R0, R1):

    reset: items [R0, R1], steps []            (Q3: reset clicks have no step entry; offset 2)
    1: clicks 0, 0  -> items [R0 R1 0 0]        steps [1 1]
    2: click 0      -> count(0) = 4 at step 3 (3 without the stale R0)
    3: click 0      -> items [R0 R1 0 0 0 0]    count(0) = 5 -> topic 0 bored at step 4 (timer 5)
    4-7: no click; end of step 7 pops the step-1 entries (1 < 7 - 5) and, in lockstep, R0 and R1:
       items [0 0 0 0], steps [2 3]; step 8: count 4, timer 1; step 9: timer 0 -> not bored
    end of 8 pops step 2, end of 9 pops step 3: items [0 0] with steps [] -- stale entries persist
    10: clicks 0, 0, 0 -> items [0 0 0 0 0] (two stale) -> topic 0 bored at step 11 (3 without them)
    11: eight clicks on topic 2 -> the 10-entry cap drops the stale entries: items [0 0 2x8], steps [10 10 11x8]
    12: topics 0 (timer 4) and 2 (count 8) bored; 0 ends after step 15
    end of 16 pops step 10 -> items [2x8]: topic 2, whose timer ran out, is re-triggered at step 17 (timer 5)
    end of 17 pops everything; topic 2 stays bored through step 21 (timer 1), free at 22.
    """
    env = small_env(env_params("focused_topdown"))
    user = ScriptedUser(env, reset_clicks=[0, 1])
    assert list(user.reference.clicked_items) == [0, 1] and not user.reference.clicked_step
    script = {1: [0, 0], 2: [0], 3: [0], 10: [0, 0, 0], 11: [2] * 8}
    expected = {t: set() for t in range(1, 26)}
    expected.update({t: {0} for t in [4, 5, 6, 7, 8, 11]})
    expected.update({t: {0, 2} for t in [12, 13, 14, 15]})
    expected.update({t: {2} for t in [16, 17, 18, 19, 20, 21]})
    timers = {}
    for t in range(1, 26):
        assert user.click_topics(script.get(t, [])) == expected[t], f"step {t}"
        timers[t] = int(env.bored_timeout[0, 2])
        if t == 9:
            assert list(user.reference.clicked_items) == [0, 0] and not user.reference.clicked_step
        if t == 11:
            assert list(user.reference.clicked_items) == [0, 0] + [2] * 8
            assert list(user.reference.clicked_step) == [10, 10] + [11] * 8
    assert [timers[t] for t in range(12, 23)] == [5, 4, 3, 2, 1, 5, 4, 3, 2, 1, 5]


def test_boredom_timeline_without_reference_quirks() -> None:
    """reference_quirks=False: no reset entries and a five-step window; the same script bores only topic 2."""
    env = small_env(env_params("focused_topdown", reference_quirks=False))
    user = ScriptedUser(env, reset_clicks=[0, 1])
    assert not user.reference.clicked_items
    script = {1: [0, 0], 2: [0], 3: [0], 10: [0, 0, 0], 11: [2] * 8}
    for t in range(1, 26):
        assert user.click_topics(script.get(t, [])) == ({2} if 12 <= t <= 16 else set()), f"step {t}"


def test_six_step_window() -> None:
    """One click on topic 3 at steps 1-5 and one at step 7: the trigger at step t sees steps t-6 .. t-1."""
    env = small_env(env_params("focused_topdown"))
    user = ScriptedUser(env, reset_clicks=[])
    script = {1: [3], 2: [3], 3: [3], 4: [3], 5: [3]}
    bored = {t: user.click_topics(script.get(t, [])) for t in range(1, 13)}
    # step 6 sees steps 0-5 (5 clicks): bored 6-10; the count is still 5 at step 7 (steps 1-6), but the
    # re-trigger does not refresh the timer; with a five-step window step 7 would see only 4
    assert [t for t, topics in bored.items() if 3 in topics] == [6, 7, 8, 9, 10]


def test_timers_restart_when_the_count_stays_high() -> None:
    """Clicks on topic 3 at every step 1-15: bored from step 6; at step 11 the timer runs out and the topic is
    re-triggered at once (timer 5 again); the last trigger is at step 17 (steps 11-16 hold 5 clicks)."""
    env = small_env(env_params("focused_topdown"))
    user = ScriptedUser(env, reset_clicks=[])
    timers = []
    for t in range(1, 25):
        topics = user.click_topics([3] if t <= 15 else [])
        timers.append(int(env.bored_timeout[0, 3]) if 3 in topics else 0)
    assert timers == [0] * 5 + [5, 4, 3, 2, 1, 5, 4, 3, 2, 1, 5, 4, 3, 2, 1] + [0] * 4
    assert user.reference.bored_timeout[3] == 5


def test_several_topics_can_be_bored_and_boredom_never_touches_the_base_user() -> None:
    env = small_env(env_params("focused_topdown"))
    user = ScriptedUser(env, reset_clicks=[])
    user.click_topics([1, 1, 1, 4, 4])
    user.click_topics([4, 4, 4, 1, 1])  # the log is full: five clicks on each topic
    _, info = user.step(list(range(10)), [])
    assert info["bored"][0].nonzero().flatten().tolist() == [1, 4]
    base = env.user[0].reshape(10, 2)
    assert float(base[1].norm()) > 0 and float(base[4].norm()) > 0
    effective = env.effective_user()[0].reshape(10, 2)
    assert float(effective[[1, 4]].abs().sum()) == 0.0
    torch.testing.assert_close(effective[[0, 2, 3, 5, 6, 7, 8, 9]], base[[0, 2, 3, 5, 6, 7, 8, 9]])
    # scores of the slate are computed with the effective user
    scores = (env.item_embeddings[torch.arange(10)] @ env.effective_user()[0]) / env.max_score
    torch.testing.assert_close(info["scores"][0], scores)


def test_click_log_shorter_than_the_slate() -> None:
    """recent_items_maxlen 4 with 8 clicks in one step: the log keeps the last 4 clicks, in rank order."""
    env = small_env(env_params("focused_topdown", recent_items_maxlen=4, boredom_threshold=3))
    user = ScriptedUser(env, reset_clicks=[])
    assert user.click_topics([1, 1, 1, 0, 0, 0, 0, 5]) == set()
    assert list(user.reference.clicked_items) == [0, 0, 0, 5]
    assert user.click_topics([]) == {0}  # three clicks on topic 0 in the log, the topic-1 clicks were dropped


# ---------------------------------------------------------------- user: reset and drift
def _l21(vector: torch.Tensor) -> torch.Tensor:
    return vector / vector.reshape(10, 2).norm(dim=1).sum()


def test_reset_user_and_no_drift_from_reset_clicks() -> None:
    env = small_env(env_params("focused_topdown"))
    draws = fixed_reset_draws(env.params, reset_clicks=[2, 5], seed=4)
    _, info = env.reset_with(draws)
    blocks = (0.4 * draws.normal[0].double()).clamp(-1, 1).abs()
    weights = draws.topic_weights[0].double() ** 3
    expected = _l21((blocks * (weights / weights.sum()).unsqueeze(1)).reshape(-1))  # Q5: reset clicks don't drift
    torch.testing.assert_close(info["user_state"][0].double(), expected, rtol=0, atol=1e-6)
    assert float(info["user_state"][0].reshape(10, 2).norm(dim=1).sum()) == pytest.approx(1.0, abs=1e-6)
    reference = ReferenceTopicRec(env.params, env.item_embeddings)
    _, ref_info = reference_reset(reference, draws)
    torch.testing.assert_close(ref_info["user_state"].double(), expected, rtol=0, atol=1e-6)


def test_drift_one_click_at_a_time() -> None:
    env = small_env(env_params("focused_topdown"))
    user = ScriptedUser(env, reset_clicks=[])
    start = env.user[0].double().clone()
    slate = [11, 22, 33, 44, 55, 66, 77, 88, 99, 110]
    _, info = user.step(slate, [0, 3])
    e = env.item_embeddings.double()
    sequential = _l21(0.9 * _l21(0.9 * start + 0.1 * e[11]) + 0.1 * e[44])
    averaged = _l21(0.9 * start + 0.1 * (e[11] + e[44]) / 2)
    torch.testing.assert_close(info["user_state"][0].double(), sequential, rtol=0, atol=1e-6)
    assert float((sequential - averaged).abs().max()) > 1e-3  # the order of renormalisation matters


# ---------------------------------------------------------------- short-term topic and boost
def test_short_term_topic_at_reset() -> None:
    env = small_env(env_params("focused_topdown"))
    ScriptedUser(env, reset_clicks=[2, 5], fallback_topic=9)
    assert int(env.short_term_topic[0]) == 5  # topic of the last clicked initial item (initial slate = topics 0..9)
    ScriptedUser(env, reset_clicks=[], fallback_topic=9)
    assert int(env.short_term_topic[0]) == 9


@pytest.mark.parametrize("quirks", [True, False])
def test_short_term_boost_and_slot_index_quirk(quirks: bool) -> None:
    """Boost 3 scales the stc block; once stc is bored a click moves it to item_comp[slot] (Q2) or the item's topic."""
    env = small_env(env_params("focused_topdown", short_term_boost=3.0, reference_quirks=quirks))
    user = ScriptedUser(env, reset_clicks=[5])
    assert int(env.short_term_topic[0]) == 5
    effective = env.effective_user()[0].reshape(10, 2)
    torch.testing.assert_close(effective[5], 3 * env.user[0].reshape(10, 2)[5])
    torch.testing.assert_close(effective[:5], env.user[0].reshape(10, 2)[:5])
    # five clicks on topic 5 bore it; with Q3 the stale reset entry is one of them
    for _ in range(4 if quirks else 5):
        assert 5 not in user.click_topics([5])
        assert int(env.short_term_topic[0]) == 5  # stc moves only while it is bored
    slot_topic = int(env.item_topics[2])  # Q2 reads the topic of item id 2, the slot index
    clicked_topic = next(k for k in range(10) if k not in (5, slot_topic))
    slate = [user.topic_items[clicked_topic][0]] * 3 + list(range(100, 107))
    _, info = user.step(slate, [2])
    assert bool(info["bored"][0, 5])
    assert int(env.short_term_topic[0]) == (slot_topic if quirks else clicked_topic)
    assert user.reference.short_term_topic == int(env.short_term_topic[0])
    effective = env.effective_user()[0].reshape(10, 2)
    new = int(env.short_term_topic[0])
    torch.testing.assert_close(effective[new], 3 * env.user[0].reshape(10, 2)[new])


# ---------------------------------------------------------------- oracle, click_only_once, rel_threshold
def test_oracle_fill_is_positional_and_allows_duplicates() -> None:
    env = small_env(env_params("focused_topdown"))
    user = ScriptedUser(env, reset_clicks=[])
    ranking = (env.item_embeddings.double() @ env.user[0].double()).argsort(descending=True)[:10].tolist()
    slate = [-1, 500, -1, -1, ranking[0], 501, -1, -1, -1, -1]
    obs, _ = user.step(slate, [])
    expected = [ranking[r] if slate[r] == -1 else slate[r] for r in range(10)]  # slot r = r-th best
    assert obs["slate"][0].tolist() == expected
    assert expected.count(ranking[0]) == 2
    assert torch.equal(env.oracle_slates()[0], torch.tensor(ranking))


def test_click_only_once() -> None:
    env = small_env(env_params("focused_topdown", click_only_once=True))
    user = ScriptedUser(env, reset_clicks=[0])
    first = int(env.initial_slate[0])
    obs, info = user.step([first, 300, *range(301, 309)], [0, 1])
    assert float(info["scores"][0, 0]) > 0.0  # the score is reported, the relevance is zeroed ...
    assert obs["clicks"][0].tolist() == [0, 1] + [0] * 8  # ... so a forced click on a clicked item fails
    obs, _ = user.step([-1] * 10, [0])
    best = int(obs["slate"][0, 0])
    for _ in range(3):
        obs, _ = user.step([-1] * 10, [0])
        assert best not in obs["slate"][0].tolist() and first not in obs["slate"][0].tolist()
        assert obs["clicks"][0, 0] == 1


def test_rel_threshold_gives_binary_relevance() -> None:
    env = small_env(env_params("focused_topdown", rel_threshold=0.3))
    env.reset(300)
    gamma = torch.tensor([0.85**r for r in range(10)])
    generator = torch.Generator().manual_seed(9)
    outcomes = torch.zeros(2, dtype=torch.long)
    for _ in range(5):
        uniforms = torch.rand(300, 10, generator=generator)
        obs, _, _, info = env.step_with(torch.full((300, 10), -1), uniforms)
        relevant = info["scores"] > 0.3
        assert torch.equal(obs["clicks"].bool(), relevant & (uniforms < gamma))
        outcomes += torch.bincount(relevant.flatten().long(), minlength=2)
    assert bool((outcomes > 100).all())  # both relevance values occur


def test_item_relevances() -> None:
    env = small_env(env_params("focused_topdown"))
    env.reset(4)
    scores = env.user.double() @ env.item_embeddings.double().T / float(env.max_score)
    expected = torch.sigmoid(100.0 * (scores - 0.28))
    torch.testing.assert_close(env.item_relevances(env.user).double(), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(env.item_relevances(), env.item_relevances(env.effective_user()))


# ---------------------------------------------------------------- episode end and bad input
def test_done_at_the_last_step_and_error_after() -> None:
    env = small_env(env_params("focused_topdown"))
    env.reset(3)
    reference = ReferenceTopicRec(env.params, env.item_embeddings)
    reference_reset(reference, fixed_reset_draws(env.params, []))
    slates = torch.arange(30).reshape(3, 10)
    for t in range(1, 101):
        _, reward, done, _ = env.step(slates)
        _, ref_reward, ref_done, _ = reference.step(slates[0], torch.rand(10))
        assert done.tolist() == [t == 100] * 3 and ref_done == (t == 100)
        assert reward.dtype == torch.float32 and ref_reward.dtype == torch.int64 and ref_reward.dim() == 0
    with pytest.raises(SlateRLError, match="episode is over"):
        env.step(slates)
    with pytest.raises(SlateRLError, match="episode is over"):
        reference.step(slates[0], torch.rand(10))
    env.reset(3)
    env.step(slates)  # a new episode starts at t = 0
    assert env.t == 1


@pytest.mark.parametrize(
    "slates, message",
    [
        (torch.zeros(2, 10, dtype=torch.long), r"shape \(num_users, slate_size\) = \(3, 10\)"),
        (torch.zeros(3, 9, dtype=torch.long), r"shape"),
        (torch.zeros(3, 10), "integer item ids"),
        (torch.zeros(3, 10, dtype=torch.bool), "integer item ids"),
        (torch.full((3, 10), 1000), r"\[0, 999\] or -1"),
        (torch.full((3, 10), -2), r"\[0, 999\] or -1"),
        ([[0] * 10] * 3, "tensor or array"),
    ],
)
def test_bad_slates(slates, message: str) -> None:
    env = small_env(env_params("focused_topdown"))
    env.reset(3)
    with pytest.raises(SlateRLError, match=message):
        env.step(slates)


def test_step_before_reset() -> None:
    env = small_env(env_params("focused_topdown"))
    with pytest.raises(SlateRLError, match="reset"):
        env.step(torch.zeros(1, 10, dtype=torch.long))
    with pytest.raises(SlateRLError, match="at least one user"):
        env.reset(0)
    with pytest.raises(SlateRLError, match="reset"):
        ReferenceTopicRec(env.params, env.item_embeddings).step([0] * 10, torch.rand(10))


def test_numpy_slates_are_accepted() -> None:
    env = small_env(env_params("focused_topdown"))
    env.reset(2)
    obs, _, _, _ = env.step(torch.arange(20).reshape(2, 10).numpy())
    assert obs["slate"].tolist() == torch.arange(20).reshape(2, 10).tolist()


# ---------------------------------------------------------------- checkpoints
def test_state_dict_round_trip_continues_identically() -> None:
    env = small_env(env_params("focused_divpen", short_term_boost=2.0, click_only_once=True))
    policy = EpsilonGreedyOracle(1000, 10, 0.5, seed=1)
    obs, info = env.reset(64)
    for _ in range(40):
        obs, _, _, info = env.step(policy.act(obs, info))
    state = copy.deepcopy(env.state_dict())
    policy_state = policy.generator.get_state()
    first = _play_on(env, policy, obs, info, 30)

    restored = small_env(env_params("focused_divpen", short_term_boost=2.0, click_only_once=True), sim_seed=999)
    restored.load_state_dict(state)
    policy.generator.set_state(policy_state)
    second = _play_on(restored, policy, obs, info, 30)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    assert sum(int(c.sum()) for c in first[1::2]) > 0


def _play_on(env, policy, obs, info, steps: int) -> list[torch.Tensor]:
    """Slates, clicks and user states of `steps` further steps."""
    out = []
    for _ in range(steps):
        obs, _, _, info = env.step(policy.act(obs, info))
        out += [obs["slate"].clone(), obs["clicks"].clone(), info["user_state"].clone()]
    return out
