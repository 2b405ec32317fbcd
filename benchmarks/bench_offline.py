"""Speed of the offline algorithms' updates and of their evaluation; projects a default-length `train_offline` run.

Per algorithm: process CPU milliseconds per gradient step (B whole episodes of 100 steps, the paper's shapes: a GeMS
decoder with d = 32, 1,000 items, slates of 10), CPU seconds of one validation (200 users played as one batch), and
the projected CPU minutes of a run of `--steps` steps with a validation every `--eval-every` steps and the two final
test plays (500 users each, counted as 2.5 validations each). The dataset is synthetic (random slates and clicks,
labels in the box): an update's cost does not depend on the dataset's content or size. CPU time (not wall time) is
reported: on a shared machine the wall clock also counts time spent waiting for a core. With `--device cuda` the
steps are timed on the wall clock after the GPU's queued work (the host's CPU time says little there).

    python benchmarks/bench_offline.py                          # every algorithm, one thread
    python benchmarks/bench_offline.py --device cuda --repeats 50  # on a GPU
    python benchmarks/bench_offline.py --algorithms cql --profile  # where CQL's step goes (torch.profiler table)
    python benchmarks/bench_offline.py --algorithms cql --components  # GRU and CQL's critics: plain vs as run
"""

from __future__ import annotations

import argparse
import ast
import statistics
import time

import numpy as np
import torch

from slate_rl import envs
from slate_rl.agents.methods import build_agent
from slate_rl.agents.rollout import evaluate_policy
from slate_rl.agents.runtime import configure_cpu
from slate_rl.offline.common import OfflineAgent
from slate_rl.offline.training import OfflineData
from slate_rl.rankers.decoders import GeMSDecoder
from slate_rl.rankers.gems import GeMS
from timing import add_device_option, timed

ALGORITHMS = ("bc", "td3_bc", "iql", "cql")


def synthetic_data(env: envs.TopicRec, episodes: int, action_dim: int, seed: int) -> OfflineData:
    rng = np.random.default_rng(seed)
    shape = (episodes, env.episode_length + 1, env.slate_size)
    slates = rng.integers(0, env.num_items, size=shape).astype(np.int16)
    clicks = (rng.random(shape) < 0.1).astype(np.uint8)
    labels = torch.from_numpy(rng.uniform(-1, 1, size=(episodes, env.episode_length, action_dim))).float()
    return OfflineData(slates, clicks, labels, device=env.device)


def ms_per_step(agent: OfflineAgent, data: OfflineData, repeats: int, device: torch.device) -> float:
    """Median milliseconds of a gradient step after 3 untimed ones: CPU time on the CPU, wall time on a GPU."""

    def one() -> None:
        agent.update(data.sample(agent.config.batch_episodes, agent.generator))

    timed(one, 3, device)
    wall, cpu = timed(one, repeats, device)
    return 1e3 * statistics.median(cpu if device.type == "cpu" else wall)


def profile(agent: OfflineAgent, data: OfflineData, repeats: int) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    for _ in range(3):
        agent.update(data.sample(agent.config.batch_episodes, agent.generator))
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            agent.update(data.sample(agent.config.batch_episodes, agent.generator))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def components(agent: OfflineAgent, data: OfflineData, repeats: int) -> None:
    """CPU ms of the parts that dominate an update, the plain form against the one the updates run, interleaved:
    encoding both belief streams over o_0..o_T (forward and backward), and CQL's critics at 11 actions per state."""
    batch = data.sample(agent.config.batch_episodes, agent.generator)
    beliefs = agent.beliefs
    slates, clicks = batch.slates, batch.clicks
    names = agent.streams
    states = torch.randn(*batch.actions.shape[:-1], agent.config.belief.hidden_dim, requires_grad=True)
    actions = torch.rand(11, *batch.actions.shape) * 2 - 1
    critic = getattr(agent, "critic", None)

    def concatenated() -> torch.Tensor:
        assert critic is not None
        rows = torch.cat([states.expand(11, *states.shape), actions], -1).flatten(0, -2)
        return torch.cat([critic.q1(rows), critic.q2(rows)], 1)

    parts = {
        "GRU plain": lambda: beliefs.encode(slates, clicks, names).sum().backward(),
        "GRU fused": lambda: beliefs.encode_fused(slates, clicks, names).sum().backward(),
    }
    if critic is not None:
        parts["11 actions, concatenated"] = lambda: concatenated().logsumexp(0).sum().backward()
        parts["11 actions, shared projection"] = lambda: critic(states, actions).logsumexp(0).sum().backward()
    times: dict[str, list[float]] = {name: [] for name in parts}
    for _ in range(repeats):
        for name, part in parts.items():
            start = time.process_time()
            part()
            times[name].append(time.process_time() - start)
    print(", ".join(f"{name} {1e3 * statistics.median(t):.1f}" for name, t in times.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    parser.add_argument("--env", default="focused_mix")
    parser.add_argument("--episodes", type=int, default=10_000, help="dataset size (episodes)")
    parser.add_argument("--repeats", type=int, default=20, help="timed updates per algorithm")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20_000, help="steps of the projected run")
    parser.add_argument("--eval-every", type=int, default=1_000, help="validation period of the projected run")
    parser.add_argument("--set", nargs="*", default=[], help="hyper-parameter overrides KEY=VALUE")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table per algorithm")
    parser.add_argument("--components", action="store_true", help="time the GRU and CQL's critics, plain vs fast")
    add_device_option(parser)
    args = parser.parse_args()
    configure_cpu(args.threads)
    env = envs.make(args.env, device=args.device)
    vae = GeMS(num_items=env.num_items, slate_size=env.slate_size, latent_dim=32, seed=0)
    decoder = GeMSDecoder(vae.decoder, vae.slate_head, vae.item_embeddings.weight, torch.zeros(32), torch.ones(32))
    decoder = decoder.to(env.device)
    data = synthetic_data(env, args.episodes, decoder.action_dim, seed=0)
    overrides = {k: ast.literal_eval(v) for k, v in (item.split("=", 1) for item in args.set)}
    clock = "CPU" if args.device.type == "cpu" else "wall"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {args.device}")
    print(f"{'algorithm':10} {clock + ' ms/step':>12} {'val ' + clock + ' s':>10} {'run ' + clock + ' min':>12}")
    for method in args.algorithms:
        agent = build_agent(method, env, 0, gems_decoder=decoder, overrides=dict(overrides) or None)
        assert isinstance(agent, OfflineAgent)
        if args.profile:
            profile(agent, data, 5)
        if args.components:
            components(agent, data, args.repeats)
        step_ms = ms_per_step(agent, data, args.repeats, args.device)
        wall, cpu = timed(lambda: evaluate_policy(env, agent, 200), 1, args.device)  # noqa: B023 (called here)
        val_s = (cpu if args.device.type == "cpu" else wall)[0]
        validations = args.steps // args.eval_every + (args.steps % args.eval_every > 0)
        run_s = args.steps * step_ms / 1e3 + validations * val_s + 2 * 2.5 * val_s
        print(f"{method:10} {step_ms:12.1f} {val_s:10.2f} {run_s / 60:12.1f}")


if __name__ == "__main__":
    main()
