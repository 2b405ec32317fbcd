"""Speed of the rankers' learning code: GeMS training (raw step and through Lightning's Trainer.fit), GeMS action
bounds, decoding, MF training. Prints a Markdown table.

    python benchmarks/bench_rankers.py            # synthetic logged data, default sizes
    python benchmarks/bench_rankers.py --threads 1 --logged
    python benchmarks/bench_rankers.py --device cuda --steps 100 --mf-steps 200

On a GPU (`--device cuda`) the models and data live there and the clocks are read after its queued work is done.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable

import pytorch_lightning as pl
import torch

from slate_rl.rankers.bounds import ActionBounds, gems_action_bounds
from slate_rl.rankers.data import SlateDataModule, SlateSamples, SliceBatches
from slate_rl.rankers.decoders import GeMSDecoder, KNNDecoder, TopKDecoder
from slate_rl.rankers.gems import GeMS
from slate_rl.rankers.mf import train_mf
from timing import add_device_option, synchronize


def synthetic_sessions(n_sessions: int, steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform random slates (int16) with ~10% clicks (uint8): the shapes and dtypes of logged data."""
    generator = torch.Generator().manual_seed(seed)
    slates = torch.randint(0, 1000, (n_sessions, steps, 10), generator=generator, dtype=torch.int16)
    clicks = (torch.rand(n_sessions, steps, 10, generator=generator) < 0.1).to(torch.uint8)
    return slates, clicks


def logged_sessions(n_sessions: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sessions logged on focused_topdown by the epsilon = 0.5 greedy oracle."""
    from slate_rl.envs import make
    from slate_rl.envs.evaluate import play
    from slate_rl.envs.policies import EpsilonGreedyOracle

    env = make("focused_topdown")
    slates, clicks = [], []

    def record(t, obs, reward, info):
        if t > 0:
            slates.append(obs["slate"].to(torch.int16))
            clicks.append(obs["clicks"].to(torch.uint8))

    with torch.no_grad():
        play(env, EpsilonGreedyOracle(env.num_items, env.slate_size, 0.5, seed), n_sessions, record)
    return torch.stack(slates, dim=1), torch.stack(clicks, dim=1)


def best_of(repeats: int, run: Callable[[], None], device: torch.device) -> tuple[float, float]:
    """(best, median) wall time in seconds of `repeats` runs after one warm-up run (each ends when `device` is
    done)."""
    run()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


class Interleaved(pl.Callback):
    """Times every training epoch of a Trainer.fit and, right after each, the same number of raw steps (forward,
    backward, Adam step in a plain loop on a second model), so that both see the same machine load."""

    def __init__(self, samples: SlateSamples, steps: int, device: torch.device) -> None:
        self.steps, self.fit_times, self.raw_times, self.device = steps, [], [], device
        self.vae = GeMS(seed=0).to(device)
        self.optimizer = self.vae.configure_optimizers()
        on_device = SlateSamples(samples.slates.to(device), samples.clicks.to(device))
        self.batches = SliceBatches(on_device, 256, True, torch.Generator().manual_seed(1))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize(self.device)
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize(self.device)
        self.fit_times.append(time.perf_counter() - self._start)
        start = time.perf_counter()
        for index, batch in enumerate(self.batches):
            if index == self.steps:
                break
            loss = self.vae.training_step(batch, index)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        synchronize(self.device)
        self.raw_times.append(time.perf_counter() - start)


def gems_training(
    module: SlateDataModule, steps: int, repeats: int, device: torch.device
) -> tuple[list[float], list[float], float]:
    """Per-epoch wall times of Trainer.fit and of raw loops (`steps` batches each; the first epoch, a warm-up, is
    dropped) and the whole fit's wall time (setup included)."""
    timer = Interleaved(module.train_samples, steps, device)
    trainer = pl.Trainer(
        accelerator=device.type,
        devices=[device.index or 0] if device.type == "cuda" else 1,
        max_epochs=repeats + 1,
        limit_train_batches=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    start = time.perf_counter()
    trainer.fit(GeMS(seed=0), datamodule=module)
    total = time.perf_counter() - start - sum(timer.raw_times)
    return timer.fit_times[1:], timer.raw_times[1:], total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=200, help="GeMS training steps (batch 256) per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (best and median)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave torch's default)")
    parser.add_argument(
        "--logged",
        action="store_true",
        help="GeMS data logged by the simulator (epsilon = 0.5 oracle) instead of synthetic",
    )
    parser.add_argument("--mf-users", type=int, default=100_000, help="sessions (= MF users) of the MF benchmark")
    parser.add_argument("--mf-steps", type=int, default=500, help="MF training steps timed")
    add_device_option(parser)
    args = parser.parse_args()
    device = args.device
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    load_before = os.getloadavg()[0]

    sessions = 1100  # 1000 for the bounds, and enough training slates for several epochs of `steps` batches
    slates, clicks = logged_sessions(sessions, 0) if args.logged else synthetic_sessions(sessions, 100, 0)
    module = SlateDataModule(slates, clicks, batch_size=256, seed=0)
    rows: list[tuple[str, str, str]] = []

    fit_times, raw_times, total = gems_training(module, args.steps, args.repeats, device)
    for name, times in (("raw step", raw_times), ("Trainer.fit", fit_times)):
        best, median = min(times), statistics.median(times)
        rows.append(
            (
                f"GeMS training, {name} (batch 256)",
                f"{256 * args.steps / best:,.0f} slates/s",
                f"{1e3 * best / args.steps:.1f} ms/step best epoch, {1e3 * median / args.steps:.1f} median",
            )
        )
    overhead = [(fit - raw) / args.steps for fit, raw in zip(fit_times, raw_times, strict=True)]
    rows.append(
        (
            "Lightning overhead per step",
            f"{1e3 * statistics.median(overhead):.2f} ms",
            f"median over epochs of (fit - raw); whole fit incl. setup "
            f"{256 * args.steps * (args.repeats + 1) / total:,.0f} slates/s",
        )
    )

    vae = GeMS(seed=0).to(device)
    best, median = best_of(args.repeats, lambda: gems_action_bounds(vae, slates, clicks, num_sessions=1000), device)
    rows.append(("GeMS action bounds, 100,000 slates", f"{best:.3f} s", f"median {median:.3f} s"))

    latent = torch.randn(10_000, 32, generator=torch.Generator().manual_seed(1)).to(device)
    box = ActionBounds(torch.zeros(32, device=device), torch.ones(32, device=device))
    decoder = GeMSDecoder.from_vae(vae, box)
    best, median = best_of(args.repeats, lambda: decoder.decode(latent), device)
    rows.append(("GeMS decode, 10,000 latent actions", f"{1e3 * best:.1f} ms", f"median {1e3 * median:.1f} ms"))
    sampler = GeMSDecoder.from_vae(vae, box, sample=True)
    best, median = best_of(args.repeats, lambda: sampler.decode(latent), device)
    rows.append(("GeMS decode with sampling, 10,000", f"{1e3 * best:.1f} ms", f"median {1e3 * median:.1f} ms"))
    table = vae.item_embeddings.weight.detach()
    topk = TopKDecoder(table)
    best, median = best_of(args.repeats, lambda: topk.decode(latent[:, :20]), device)
    rows.append(("TopK decode, 10,000 actions", f"{1e3 * best:.1f} ms", f"median {1e3 * median:.1f} ms"))
    knn = KNNDecoder(table, k=10)
    proto = torch.randn(10_000, 200, generator=torch.Generator().manual_seed(2)).to(device)
    best, median = best_of(args.repeats, lambda: knn.candidates(proto), device)
    rows.append(("kNN candidates (k = 10), 10,000 actions", f"{1e3 * best:.1f} ms", f"median {1e3 * median:.1f} ms"))

    mf_slates, mf_clicks = synthetic_sessions(args.mf_users, 10, 3)
    timings = {}
    for steps in (50, 50 + args.mf_steps):
        start = time.perf_counter()
        train_mf(mf_slates, mf_clicks, lr=1e-4, max_steps=steps, eval_every=10**9, seed=0, device=device)
        synchronize(device)
        timings[steps] = time.perf_counter() - start
    per_step = (timings[50 + args.mf_steps] - timings[50]) / args.mf_steps
    rows.append(
        (
            f"MF (BPR) training, {args.mf_users:,} users, batch 256",
            f"{256 / per_step:,.0f} pairs/s",
            f"{1e3 * per_step:.2f} ms/step (dense Adam over the user table)",
        )
    )

    print(
        f"torch {torch.__version__}, pytorch-lightning {pl.__version__}, {torch.get_num_threads()} intra-op "
        f"threads, {os.cpu_count()} CPUs, device {device}, load average {load_before:.1f} before / "
        f"{os.getloadavg()[0]:.1f} after, "
        f"{'logged' if args.logged else 'synthetic'} GeMS data, {args.steps} steps x {args.repeats} runs\n"
    )
    print("| measurement | result | details |\n|---|---|---|")
    for name, value, details in rows:
        print(f"| {name} | {value} | {details} |")


if __name__ == "__main__":
    main()
