"""fp32 against bf16 (`precision=bf16`: bfloat16 autocast of the forward passes) at the paper's shapes.

Speed: the plain SAC update of SAC+TopK (ideal) and SAC+GeMS, one seed alone and a group of 10 seeds (B = 20
trajectories x 100 steps, hidden 256, belief 20, 1,000 items, focused_topdown); a GeMS training step (batch 256:
forward, backward, Adam) and GeMS decoding of 10,000 latent actions (acting stays fp32 in slate-rl: this row only
says whether autocast would pay there). Each measurement is the median over `--updates` calls after warm-up ones;
configurations are measured in interleaved rounds and each keeps its best median (robust to other jobs). Ratio =
fp32 time / bf16 time (> 1: bf16 is faster).

Accuracy: GeMS trained for `--gems-steps` steps (batch 256, through Lightning as pretrain-gems trains it) on
sessions logged by the simulator's epsilon-greedy oracle (what generate-dataset logs), in fp32 and in bf16, for 3
seeds: validation slot accuracy, click accuracy and loss, mean and spread over the seeds, so that a difference can be
judged against seed-to-seed noise.

    python benchmarks/bf16.py                                    # 2 threads, everything
    python benchmarks/bf16.py --updates 3 --rounds 1 --gems-steps 50 --sessions 300   # a quick check
    python benchmarks/bf16.py --threads 1 --skip-accuracy
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import warnings
from collections.abc import Callable, Iterator

import pytorch_lightning as pl
import torch

from bench_rankers import logged_sessions
from seed_group_update import filled_buffer, make_agent, median_ms
from slate_rl import envs
from slate_rl.agents.seed_group import SeedGroup
from slate_rl.precision import LIGHTNING_PRECISION, PRECISIONS, autocast
from slate_rl.rankers.bounds import ActionBounds
from slate_rl.rankers.data import SlateDataModule, SlateSamples, SliceBatches
from slate_rl.rankers.decoders import GeMSDecoder
from slate_rl.rankers.gems import GeMS
from timing import add_device_option

Runs = dict[str, dict[str, Callable[[], object]]]  # measurement -> precision -> one call


def update_runs(env: envs.TopicRec, method: str, group_size: int, episodes: int) -> Runs:
    """One seed's plain update and a group's update, per precision; every agent of one seed starts alike."""
    seeds = range(group_size)
    collectors = [make_agent(method, env, seed, fused=False) for seed in seeds]
    buffers = [filled_buffer(env, agent, episodes) for agent in collectors]
    runs: Runs = {f"{method}, 1 seed": {}, f"{method}, group of {group_size}": {}}
    for precision in PRECISIONS:
        alone = make_agent(method, env, 0, fused=False, precision=precision)
        runs[f"{method}, 1 seed"][precision] = lambda a=alone: a.update(buffers[0].sample(a.batch_size, a.generator))
        group = SeedGroup([make_agent(method, env, seed, fused=False, precision=precision) for seed in seeds])
        runs[f"{method}, group of {group_size}"][precision] = lambda g=group: g.update(g.sample(buffers))
    return runs


def endless(batches: SliceBatches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of pass after pass."""
    while True:
        yield from batches


def gems_runs(slates: torch.Tensor, clicks: torch.Tensor, device: torch.device) -> Runs:
    """A GeMS training step (batch 256) and the decoding of 10,000 latent actions, per precision; slates and clicks
    (n, R) as logged."""
    samples = SlateSamples(slates.to(device), clicks.to(device))
    runs: Runs = {"GeMS training step, batch 256": {}, "GeMS decode, 10,000 actions": {}}
    latent = torch.randn(10_000, 32, generator=torch.Generator().manual_seed(1)).to(device)
    for precision in PRECISIONS:
        vae = GeMS(seed=0).to(device)
        optimizer = vae.configure_optimizers()
        batches = endless(SliceBatches(samples, 256, True, torch.Generator().manual_seed(1)))

        def step(vae: GeMS = vae, optimizer: torch.optim.Optimizer = optimizer, batches=batches, p=precision) -> None:
            with autocast(p, device):
                loss = vae.training_step(next(batches), 0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        decoder = GeMSDecoder.from_vae(vae, ActionBounds(torch.zeros(32, device=device), torch.ones(32, device=device)))

        def decode(decoder: GeMSDecoder = decoder, p: str = precision) -> None:
            with torch.no_grad(), autocast(p, device):
                decoder.decode(latent)

        runs["GeMS training step, batch 256"][precision] = step
        runs["GeMS decode, 10,000 actions"][precision] = decode
    return runs


def timings(runs: Runs, warmup: int, updates: int, rounds: int, device: torch.device) -> dict[str, dict[str, dict]]:
    """Best median wall and CPU ms of every measurement and precision over interleaved rounds."""
    best: dict[str, dict[str, dict[str, float]]] = {name: {} for name in runs}
    for _ in range(rounds):
        for name, by_precision in runs.items():
            for precision, run in by_precision.items():
                got = median_ms(run, warmup, updates, device)
                kept = best[name].get(precision, got)
                best[name][precision] = {key: min(value, kept[key]) for key, value in got.items()}
    return best


def gems_accuracy(
    slates: torch.Tensor, clicks: torch.Tensor, steps: int, seeds: list[int], device: torch.device
) -> dict[str, dict[str, list[float]]]:
    """Validation metrics of GeMS after `steps` training steps, per precision, one value per seed."""
    from slate_rl.stages.pretrain_gems import lightning_device

    results: dict[str, dict[str, list[float]]] = {p: {} for p in PRECISIONS}
    for precision in PRECISIONS:
        for seed in seeds:
            trainer = pl.Trainer(
                max_steps=steps,
                max_epochs=-1,
                val_check_interval=steps,
                check_val_every_n_epoch=None,
                num_sanity_val_steps=0,
                logger=False,
                enable_progress_bar=False,
                enable_checkpointing=False,
                enable_model_summary=False,
                precision=LIGHTNING_PRECISION[precision],
                **lightning_device(device),
            )
            trainer.fit(GeMS(seed=seed), datamodule=SlateDataModule(slates, clicks, batch_size=256, seed=seed))
            for name in ("val/slot_accuracy", "val/click_accuracy", "val/loss"):
                results[precision].setdefault(name, []).append(float(trainer.callback_metrics[name]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads, fixed for every measurement")
    parser.add_argument("--updates", type=int, default=10, help="timed calls per measurement (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before each measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best median kept)")
    parser.add_argument("--group", type=int, default=10, help="seeds of the grouped update")
    parser.add_argument("--episodes", type=int, default=40, help="episodes in each seed's replay buffer")
    parser.add_argument("--gems-steps", type=int, default=1000, help="GeMS training steps of the accuracy check")
    parser.add_argument("--sessions", type=int, default=1100, help="logged sessions (x 100 slates) for GeMS")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="GeMS seeds of the accuracy check")
    parser.add_argument("--skip-accuracy", action="store_true", help="time only")
    add_device_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    device = args.device
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, {os.cpu_count()} CPUs, device "
        f"{device}, load average before {os.getloadavg()[0]:.1f}"
    )
    env = envs.make("focused_topdown", device=device)
    slates, clicks = logged_sessions(args.sessions, 0)
    runs: Runs = {}
    for method in ("sac_topk_ideal", "sac_gems"):
        runs.update(update_runs(env, method, args.group, args.episodes))
    runs.update(gems_runs(slates.flatten(0, 1), clicks.flatten(0, 1), device))
    best = timings(runs, args.warmup, args.updates, args.rounds, device)
    print(f"load average after timing {os.getloadavg()[0]:.1f}\n")
    print("| measurement | fp32 ms wall / CPU | bf16 ms wall / CPU | fp32 / bf16 wall | fp32 / bf16 CPU |")
    print("|---|---|---|---|---|")
    for name, got in best.items():
        fp32, bf16 = got["fp32"], got["bf16"]
        print(
            f"| {name} | {fp32['wall_ms']:.1f} / {fp32['cpu_ms']:.1f} | {bf16['wall_ms']:.1f} / {bf16['cpu_ms']:.1f} "
            f"| {fp32['wall_ms'] / bf16['wall_ms']:.2f}x | {fp32['cpu_ms'] / bf16['cpu_ms']:.2f}x |"
        )
    if args.skip_accuracy:
        return
    results = gems_accuracy(slates, clicks, args.gems_steps, args.seeds, device)
    print(f"\nGeMS after {args.gems_steps} steps (batch 256), validation, seeds {args.seeds}: mean ± std over seeds")
    print("| metric | fp32 | bf16 | bf16 - fp32 |\n|---|---|---|---|")
    for name in results["fp32"]:
        fp32, bf16 = results["fp32"][name], results["bf16"][name]
        spread = statistics.stdev(fp32) if len(fp32) > 1 else float("nan")
        print(
            f"| {name} | {statistics.mean(fp32):.4f} ± {spread:.4f} | {statistics.mean(bf16):.4f} ± "
            f"{statistics.stdev(bf16) if len(bf16) > 1 else float('nan'):.4f} | "
            f"{statistics.mean(bf16) - statistics.mean(fp32):+.4f} |"
        )


if __name__ == "__main__":
    main()
