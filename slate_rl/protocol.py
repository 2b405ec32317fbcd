"""The online training protocol: how many episodes are trained on, validated and tested, and how they are collected.

Light to import (no torch): `TrainOnlineConfig` embeds these fields as its own parameters, and the training loop
(`slate_rl.agents.Trainer`) runs them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from slate_rl.errors import SlateRLError


@dataclass(kw_only=True)
class Protocol:
    """The training / validation / test protocol (counts in episodes = users; defaults are the paper's).

    warmup_episodes: the first episodes play random actions (learning starts after them, except REINFORCE's).
    val_every, val_episodes: a validation (greedy policy, one batch of users) every this many episodes.
    test_episodes: the final test, after re-seeding the simulator, with the best-validation weights.
    parallel_episodes (K): episodes collected together as one batch of users, followed by K gradient steps
    (K = 1, without overlap and with `reference_protocol`, is the reference implementation's ordering). K also shapes
    the simulator's user stream, so common random numbers across methods hold between runs with the same protocol.
    overlap_collection: collect the next block in a second thread while the updates of the current one run, with
    the weights as they were when those updates started (the policy then lags the learner by up to 2K updates
    instead of K); the stream schedule is unchanged. Blocks that follow a validation are collected after it.
    save_every: a periodic (resumable) checkpoint at the first block end at or after each multiple.
    reference_protocol: the reference implementation's ordering (needs K = 1 and no overlap): each update's replay
    batch is drawn before the episode is played, so it never holds that episode, and an on-policy agent (REINFORCE)
    trains on the previous episode. False: the batch is drawn after the block is stored (it may hold it), and
    REINFORCE trains on each episode just played.
    """

    episodes: int = 100_000
    warmup_episodes: int = 2_000
    val_every: int = 1_000
    val_episodes: int = 200
    test_episodes: int = 500
    parallel_episodes: int = 10
    overlap_collection: bool = True
    save_every: int = 10_000
    reference_protocol: bool = False

    def validate(self) -> None:
        """Raise SlateRLError naming the first count out of range."""
        for name in ("episodes", "val_every", "val_episodes", "test_episodes", "parallel_episodes", "save_every"):
            if int(getattr(self, name)) < 1:
                raise SlateRLError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if not 0 <= int(self.warmup_episodes) <= int(self.episodes):
            raise SlateRLError(f"warmup_episodes must lie in [0, episodes] (got {self.warmup_episodes})")
        if self.reference_protocol:
            conflicts = [
                f"{name} = {value}"
                for name, value, needed in (
                    ("parallel_episodes", self.parallel_episodes, 1),
                    ("overlap_collection", self.overlap_collection, False),
                )
                if value != needed
            ]
            if conflicts:
                raise SlateRLError(
                    f"reference_protocol plays one episode at a time without overlap, but {' and '.join(conflicts)}; "
                    "set parallel_episodes = 1 and overlap_collection = false, or drop reference_protocol"
                )

    def protocol(self) -> Protocol:
        """The protocol fields alone (of a configuration that embeds them), as a plain `Protocol`."""
        return Protocol(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Protocol)})
