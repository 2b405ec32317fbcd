"""Online RL agents of the GeMS benchmark and the pure training loop (no MLflow, no files).

configure_cpu()                                      # once per process: 1 thread, keep freed memory
agent = build_agent("sac_gems", env, seed, gems_decoder=decoder)
trainer = Trainer(agent, env, Protocol(), Hooks(on_metrics=..., on_validation=..., on_checkpoint=...))
trainer.fit(); test_returns = trainer.test()
next_slates = agent.recommend(slates, clicks)        # (B, T, R) histories -> (B, R)
"""

from slate_rl.agents.base import EXPLORE, GREEDY, RANDOM, Agent
from slate_rl.agents.buffer import Trajectories, TrajectoryBuffer
from slate_rl.agents.config import BeliefConfig, ReinforceConfig, SACConfig, SlateQConfig, WkNNConfig, with_overrides
from slate_rl.agents.methods import build_agent
from slate_rl.agents.rollout import evaluate_policy, play
from slate_rl.agents.runtime import configure_cpu
from slate_rl.agents.training import Hooks, Trainer
from slate_rl.protocol import Protocol

__all__ = [
    "EXPLORE",
    "GREEDY",
    "RANDOM",
    "Agent",
    "BeliefConfig",
    "Hooks",
    "Protocol",
    "ReinforceConfig",
    "SACConfig",
    "SlateQConfig",
    "Trainer",
    "Trajectories",
    "TrajectoryBuffer",
    "WkNNConfig",
    "build_agent",
    "configure_cpu",
    "evaluate_policy",
    "play",
    "with_overrides",
]
