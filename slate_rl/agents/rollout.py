"""Play one batch of episodes with an agent: training collection, validation, test and policy evaluation."""

from __future__ import annotations

from collections.abc import Callable

import torch

from slate_rl.agents.base import GREEDY, MODES, Agent
from slate_rl.agents.buffer import Trajectories
from slate_rl.envs.topicrec import TopicRec
from slate_rl.errors import SlateRLError

StepHook = Callable[[int, dict, dict, torch.Tensor | None], None]


def play(
    env: TopicRec, agent: Agent, num_users: int, mode: str, episode: int = 0, on_step: StepHook | None = None
) -> Trajectories:
    """`num_users` full episodes at once (one reset, H steps), recorded as trajectories on the simulator's device.

    mode: 'random', 'explore' or 'greedy' (see `Agent.act`); episode: index of the first of these episodes in
    training (SlateQ's epsilon). `on_step(t, obs, info, action)` sees every step t = 1..H (obs_t and the action
    that produced it), e.g. to record test trajectories.
    """
    if mode not in MODES:
        raise SlateRLError(f"unknown acting mode {mode!r}; choose one of {', '.join(MODES)}")
    obs, _ = env.reset(num_users)
    agent.start(num_users)
    horizon, size, device = env.episode_length, env.slate_size, env.device
    slates = torch.empty(num_users, horizon + 1, size, dtype=torch.long, device=device)
    clicks = torch.empty(num_users, horizon + 1, size, dtype=torch.uint8, device=device)
    store_actions = agent.stored_action_dim > 0 and mode != GREEDY
    actions = torch.empty(num_users, horizon, agent.stored_action_dim, device=device) if store_actions else None
    privileged = torch.empty(num_users, horizon, agent.privileged_dim, device=device) if agent.privileged_dim else None
    slates[:, 0], clicks[:, 0] = obs["slate"], obs["clicks"]
    for t in range(horizon):
        slate, action = agent.act(obs, mode, episode)
        obs, _, _, info = env.step(slate)
        slates[:, t + 1], clicks[:, t + 1] = obs["slate"], obs["clicks"]
        if actions is not None:
            if action is None:
                raise SlateRLError(
                    f"{type(agent).__name__} stores {agent.stored_action_dim}-d actions, "
                    f"but acting in mode {mode!r} returned none"
                )
            actions[:, t] = action
        if privileged is not None:
            record = agent.privileged_record(env)
            if record is None:
                raise SlateRLError(
                    f"{type(agent).__name__} stores {agent.privileged_dim}-d privileged data, "
                    "but privileged_record returned none"
                )
            privileged[:, t] = record
        if on_step is not None:
            on_step(t + 1, obs, info, action)
    return Trajectories(slates, clicks, actions, privileged)


def evaluate_policy(
    env: TopicRec, agent: Agent, num_episodes: int, reseed: bool = True, on_step: StepHook | None = None
) -> torch.Tensor:
    """Returns (total clicks) of `num_episodes` deterministic episodes played as one batch.

    reseed=True restarts the simulator's user stream first (the paper's test: every policy meets the same users).
    """
    if int(num_episodes) < 1:
        raise SlateRLError(f"num_episodes must be >= 1 (got {num_episodes})")
    if reseed:
        env.reset_random_state()
    return play(env, agent, int(num_episodes), GREEDY, on_step=on_step).returns
