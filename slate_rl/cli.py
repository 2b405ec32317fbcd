"""`slate-rl`: one subcommand per pipeline stage (each also an MLflow Project entry point, see MLproject)."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from slate_rl import config, stage_configs
from slate_rl.errors import SlateRLError
from slate_rl.methods import ONLINE_FAMILIES, method_ids
from slate_rl.progress import setup_logging

log = logging.getLogger("slate_rl")


ENV_HELP = (
    "Environment: one of the paper's six (focused_topdown, focused_mix, focused_divpen, diffuse_topdown, "
    "diffuse_mix, diffuse_divpen) or a harder variant such as diffuse_mix_bt3_dp5 (`slate-rl envs` lists "
    "them)."
)
METHODS_HELP = ", ".join(method_ids(ONLINE_FAMILIES))  # the registered methods train_online runs, in table order


def option(name: str, dest: str | None = None, **kwargs: Any) -> Callable:
    """A click option reachable as --some-name and --some_name (MLflow passes extra parameters with underscores)."""
    dashed = "--" + name.replace("_", "-")
    names = [dashed] if "_" not in name else [dashed, "--" + name]
    return click.option(*names, dest or name, **kwargs)


def common_options(func: Callable) -> Callable:
    """--env, --preset and --experiment-name, shared by the stages."""
    func = option(
        "experiment_name",
        default=None,
        help="MLflow experiment (the purpose of this batch of runs); default: $MLFLOW_EXPERIMENT_NAME "
        "or MLflow's default experiment. Ignored under `mlflow run`, which sets it.",
    )(func)
    func = option(
        "preset",
        type=click.Choice(["quick", "paper"]),
        default="paper",
        show_default=True,
        help="Parameter preset: 'paper' reproduces the paper, 'quick' is a minutes-long smoke run.",
    )(func)
    func = option("env", default="focused_topdown", show_default=True, help=ENV_HELP)(func)
    return func


def pipeline_job(func: Callable) -> Callable:
    """The hidden --parent-run of the stages `slate-rl pipeline` runs as jobs (their runs become its children)."""
    return option("parent_run", default=None, hidden=True, help="Run the stage as a child run of this run.")(func)


def device_option(func: Callable) -> Callable:
    """--device cpu|cuda|cuda:K: where the stage's run runs (checked here for its form, by the stage for its
    presence on this machine)."""

    def check(ctx: click.Context, param: click.Parameter, value: str) -> str:
        from slate_rl.devices import check_device

        try:
            return check_device(value)
        except SlateRLError as exc:
            raise click.BadParameter(str(exc)) from exc

    return option(
        "device",
        default="cpu",
        show_default=True,
        callback=check,
        help="Where the run runs: cpu, cuda (the current GPU) or cuda:K (GPU number K); recorded as the run tag "
        "'device'.",
    )(func)


def placement(experiment_name: str | None, parent_run: str | None) -> dict[str, Any]:
    """Where a stage's run goes: a child of `parent_run` (pipeline jobs), else a run in the experiment."""
    if parent_run is None:
        return {"experiment_name": experiment_name}
    from mlflow.tracking import MlflowClient

    from slate_rl.tracking.runs import StageRun

    return {"parent": StageRun(MlflowClient(), parent_run)}


def user_errors(func: Callable) -> Callable:
    """Turn SlateRLError into a one-line 'Error: ...' and exit status 1 (the run is already marked FAILED); first
    refuse a tracking store that cannot work (a server that does not answer, a database driver not installed), and
    create a new SQLite store once even when several processes start on it together."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            import mlflow

            from slate_rl.tracking import sqlite_store
            from slate_rl.tracking.server import check_tracking_store

            check_tracking_store(os.environ.get("MLFLOW_TRACKING_URI", ""))
            sqlite_store.create_once(mlflow.get_tracking_uri())
            return func(*args, **kwargs)
        except SlateRLError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
def main(log_level: str) -> None:
    """slate-rl: reinforcement learning for slate recommendation on the GeMS benchmark.

    Every stage runs inside an MLflow run (params, metrics, artifacts, console log) in the tracking store
    named by $MLFLOW_TRACKING_URI (default: sqlite:///mlflow.db in the current folder). Stages find their
    inputs by lineage: given only --env, a stage reuses the matching finished upstream run or runs it first.
    Presets come with the package; $SLATE_RL_PRESETS names a folder whose YAML files replace those of the same name.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    setup_logging(getattr(logging, log_level.upper()))
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM (kill, timeout, a batch scheduler) ends a stage as Ctrl-C does: its run is marked KILLED, not left
    RUNNING."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def config_options(config_class: type, helps: dict[str, str]) -> Callable:
    """One option per field of a stage config (defaults None: the preset or the config default applies)."""

    def decorate(func: Callable) -> Callable:
        for field in reversed(dataclasses.fields(config_class)):
            if field.name in ("env", "preset") or field.name not in helps:
                continue
            default = field.default if field.default is not dataclasses.MISSING else None
            kind = {bool: click.BOOL, int: int, float: float}.get(type(default), str)
            shown = _shown_default(config_class.stage, field.name, default)
            func = option(field.name, type=kind, default=None, help=helps[field.name] + shown)(func)
        return func

    return decorate


def _shown_default(stage: str, name: str, default: Any) -> str:
    """' [quick: 2000, paper: 100000]' for a parameter a preset file sets, else ' [default]' ('' when none)."""
    presets = {preset: config.stage_preset(preset, stage) for preset in config.PRESETS}
    if any(name in values for values in presets.values()):
        return " [" + ", ".join(f"{preset}: {values.get(name, default)}" for preset, values in presets.items()) + "]"
    return "" if default in (None, "") else f" [{default}]"


def env_param_option(func: Callable) -> Callable:
    """--env-param KEY=VALUE (repeatable; also KEY=VALUE,KEY=VALUE, as `mlflow run -P env_param=...` passes it),
    given to the command as `env_params`: the overrides parsed, or None without any."""
    return option(
        "env_param",
        "env_params",
        multiple=True,
        callback=_parsed_env_params,
        metavar="KEY=VALUE",
        help="Override a simulator parameter, e.g. --env-param boredom_threshold=3 (repeatable, or "
        "several in one: KEY=VALUE,KEY=VALUE; `slate-rl envs` lists the parameters). Part of the "
        "run's environment spec.",
    )(func)


def _parsed_env_params(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any] | None:
    """The --env-param values as overrides (None without any); a malformed one is a usage error naming it."""
    try:
        return config.parse_env_params(values) or None
    except SlateRLError as error:
        raise click.BadParameter(str(error)) from None


ALLOW_MISMATCH_HELP = (
    "Use a given upstream run (or policy) made on another simulator anyway; the differences are "
    "recorded as a tag env_mismatch.<upstream>. Refused otherwise."
)
DATASET_HELP = {
    "dataset": "A generate_dataset run to train on (runs:/<id>/dataset), or a collect run (its offline dataset); "
    "default: the preset's dataset for --env, reused if it exists, else generated first as a child run. Checked to "
    "come from the same simulator.",
    "item_embeddings": "Item table of the environment (to find or generate the dataset): a .pt / .npy file, or "
    "focused / diffuse; default: the preset's.",
    "allow_env_mismatch": ALLOW_MISMATCH_HELP,
}


@main.command("generate-dataset")
@common_options
@pipeline_job
@config_options(
    stage_configs.GenerateDatasetConfig,
    {
        "n_sessions": "Sessions (users) to log.",
        "epsilon": "Probability that a slot shows a random item instead of the oracle's.",
        "seed": "Seed of the logging policy's generator.",
        "sim_seed": "Seed of the simulator's generator (users, clicks).",
        "item_embeddings": "A .pt / .npy item table (num_items x 20) to use instead of the preset's generated one, "
        "e.g. the paper's item_embeddings_focused.pt.",
        "chunk_size": "Users simulated at once (memory vs speed).",
    },
)
@env_param_option
@user_errors
def generate_dataset_command(
    env: str,
    preset: str,
    experiment_name: str | None,
    parent_run: str | None,
    env_params: dict[str, Any] | None,
    **overrides: Any,
) -> None:
    """Log sessions of the ε-greedy oracle (the data GeMS and MF learn from) as an artifact 'dataset'."""
    from slate_rl.stages import generate_dataset

    cfg = stage_configs.GenerateDatasetConfig.resolve(env, preset, env_params=env_params, **overrides)
    run_id = generate_dataset.run(cfg, **placement(experiment_name, parent_run))
    click.echo(f"dataset: runs:/{run_id}/{generate_dataset.ARTIFACT}")


@main.command("pretrain-gems")
@common_options
@pipeline_job
@config_options(
    stage_configs.PretrainGemsConfig,
    {
        **DATASET_HELP,
        "seed": "Seed of the weights, the shuffling and the VAE noise (the paper has one GeMS per agent seed).",
        "latent_dim": "Latent dimension d (the SAC+GeMS action size).",
        "lambda_kl": "Weight beta of the KL term (reference convention: mean over latent dimensions).",
        "lambda_click": "Weight lambda of the click reconstruction loss.",
        "lambda_prior": "Weight of the prior regulariser (no effect with the fixed prior).",
        "epochs": "Training epochs.",
        "batch_size": "Slates per batch.",
        "lr": "Adam learning rate.",
        "loss_convention": "'reference' (std = exp(logvar), KL averaged over dimensions) or 'standard' VAE.",
        "shuffle": "Shuffle training slates every epoch (the reference does not).",
        "bound_sessions": "Logged sessions whose encodings define the action bounds.",
        "precision": "fp32, or bf16: the forward passes and losses of training under bfloat16 autocast (parameters "
        "and optimiser state stay fp32).",
    },
)
@env_param_option
@option(
    "seeds",
    default="",
    help="Seeds, replacing --seed: a count in [1, 10] (the paper's first N seeds), one seed above 10, or a "
    "comma-separated list. Their GeMS train together, stacked (one pass over the data per epoch for all seeds); a "
    "parent run records them and each seed has its child run, as its single-seed run would be (not resumable).",
)
@option(
    "resume",
    default=None,
    metavar="RUN_ID",
    help="Continue a killed or failed pretrain_gems run from its last finished epoch, in the same MLflow run "
    "(its saved configuration applies; the other options but --device are ignored).",
)
@device_option
@user_errors
def pretrain_gems_command(
    env: str,
    preset: str,
    experiment_name: str | None,
    parent_run: str | None,
    env_params: dict[str, Any] | None,
    seeds: str,
    resume: str | None,
    device: str,
    **overrides: Any,
) -> None:
    """Pretrain the GeMS slate VAE; logs the best-validation model with its action bounds (artifact 'gems')."""
    from slate_rl.seeds import parse_seeds
    from slate_rl.stages import pretrain_gems

    seed_list = parse_seeds(seeds) if seeds.strip() not in ("", "''", '""') else []
    if resume and seed_list:
        raise SlateRLError(
            "--resume continues one pretrain_gems run and a --seeds group is not resumable: drop --seeds to resume "
            "a single-seed run, or run the --seeds group again"
        )
    if seed_list:
        cfg = stage_configs.PretrainGemsConfig.resolve(
            env,
            preset,
            env_params=env_params,
            **{**overrides, "seed": seed_list[0]},
        )
        result = pretrain_gems.run_seeds(cfg, seed_list, **placement(experiment_name, parent_run), device=device)
        click.echo(f"parent run: runs:/{result.group_run}")
        for seed, run_id in result.runs.items():
            click.echo(f"seed {seed}: gems: runs:/{run_id}/{pretrain_gems.ARTIFACT}")
        return
    if resume:
        run_id = pretrain_gems.run(pretrain_gems.resumable(resume), resume_run=resume, device=device)
    else:
        cfg = stage_configs.PretrainGemsConfig.resolve(env, preset, env_params=env_params, **overrides)
        run_id = pretrain_gems.run(cfg, **placement(experiment_name, parent_run), device=device)
    click.echo(f"gems: runs:/{run_id}/{pretrain_gems.ARTIFACT}")


@main.command("train-mf")
@common_options
@pipeline_job
@config_options(
    stage_configs.TrainMFConfig,
    {
        **DATASET_HELP,
        "seed": "Seed of the initialisation, negatives and batch order.",
        "dim": "Embedding dimension.",
        "lr": "Adam learning rate.",
        "batch_size": "Positive pairs per batch.",
        "eval_every": "Evaluate the held-out loss every this many batches.",
        "patience": "Stop after this many evaluations without improvement.",
        "max_steps": "Cap on training steps (0: none).",
        "max_seconds": "Cap on training time in seconds (0: none).",
        "reference_validation": "The reference's validation (docs/fidelity.md): validation sessions share the user "
        "rows of training sessions, the loss pairs every user of a batch with every click of it, and each validation "
        "batch is also a training step. Default: a held-out half of the validation sessions' clicks, no training.",
        "save_every": "Save the resume state every this many training steps (0: never).",
    },
)
@env_param_option
@option(
    "resume",
    default=None,
    metavar="RUN_ID",
    help="Continue a killed or failed train_mf run from its last resume state, in the same MLflow run, to the table "
    "it would have reached unstopped (its saved configuration applies; the other options but --device, which must "
    "be of the kind it trained on, are ignored).",
)
@device_option
@user_errors
def train_mf_command(
    env: str,
    preset: str,
    experiment_name: str | None,
    parent_run: str | None,
    env_params: dict[str, Any] | None,
    resume: str | None,
    device: str,
    **overrides: Any,
) -> None:
    """Train BPR matrix-factorisation item embeddings on logged sessions (artifact 'mf')."""
    from slate_rl.stages import train_mf

    if resume:
        run_id = train_mf.run(train_mf.resumable(resume), resume_run=resume, device=device)
    else:
        cfg = stage_configs.TrainMFConfig.resolve(env, preset, env_params=env_params, **overrides)
        run_id = train_mf.run(cfg, **placement(experiment_name, parent_run), device=device)
    click.echo(f"mf: runs:/{run_id}/{train_mf.ARTIFACT}")


@main.command("train-online")
@common_options
@pipeline_job
@config_options(
    stage_configs.TrainOnlineConfig,
    {
        "method": f"Method: {METHODS_HELP}.",
        "seed": "Seed of the agent (weights, exploration, warm-up, replay sampling) and of its GeMS.",
        "episodes": "Training episodes (one per step).",
        "warmup_episodes": "Episodes of random actions before learning.",
        "val_every": "Validate every this many episodes.",
        "val_episodes": "Episodes per validation (played as one batch).",
        "test_episodes": "Episodes of the final test, after re-seeding the simulator (one batch).",
        "parallel_episodes": "K: episodes collected together, then K gradient steps.",
        "overlap_collection": "Collect the next K episodes while the updates run (both cores busy; the policy lags the "
        "learner by up to 2K updates).",
        "save_every": "A checkpoint (episode_NNNNNN, and the resume state) every this many episodes.",
        "reference_protocol": "The reference code's ordering: one episode at a time without overlap, each update's "
        "replay batch drawn before the episode is played (REINFORCE then trains on the previous episode).",
        "reference_bugs": "Turn on every reference-behaviour switch of the method's agent (its bugs and quirks, "
        "e.g. reference_pairing); slate-rl's protocol is kept. A --set of one of them to false is refused.",
        "reference_parity": "reference_bugs plus reference_protocol (parallel_episodes 1, no overlap): the "
        "reference code's behaviour as closely as slate-rl can run it.",
        "item_embeddings": "A .pt / .npy item table of the environment instead of the preset's generated one.",
        "allow_env_mismatch": ALLOW_MISMATCH_HELP,
        "dataset": "generate_dataset run for GeMS / MF (runs:/<id>); default: by lineage.",
        "gems": "pretrain_gems run to act through (runs:/<id>); default: the GeMS of this seed and setting, by "
        "lineage.",
        "mf": "train_mf run (runs:/<id>); default: by lineage.",
        "mf_reference_validation": "Take the MF item table (SAC+TopK (MF), SAC+WkNN) from an MF trained with the "
        "reference's validation (train-mf --reference-validation; docs/fidelity.md), found or trained by lineage.",
        "latent_dim": "GeMS latent dimension (SAC+GeMS).",
        "lambda_kl": "GeMS KL weight beta (SAC+GeMS).",
        "lambda_click": "GeMS click weight lambda (SAC+GeMS).",
        "register": "Register the best policy in the environment's registered model.",
    },
)
@option(
    "set",
    dest="assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a hyper-parameter of the method, e.g. --set gamma=0.9 --set pi_lr=0.001 (repeatable).",
)
@option(
    "seeds",
    default="",
    help="Seeds, replacing --seed: a count in [1, 10] (the paper's first N seeds), one seed above 10, or a "
    "comma-separated list. A parent run records them, each seed has its child run; SAC+TopK and SAC+GeMS train "
    "them together as one seed group, other methods one seed after another.",
)
@option(
    "resume",
    default=None,
    metavar="RUN_ID",
    help="Continue a killed or failed train_online run from its last checkpoint, in the same MLflow run; a seed "
    "group's parent run continues its unfinished seeds as one group (finished and diverged seeds stay as they are).",
)
@env_param_option
@device_option
@user_errors
def train_online_command(
    env: str,
    preset: str,
    experiment_name: str | None,
    parent_run: str | None,
    assignments: tuple[str, ...],
    seeds: str,
    resume: str | None,
    env_params: dict[str, Any] | None,
    device: str,
    **overrides: Any,
) -> None:
    """Train one of the paper's methods with validation and test; register its best policy."""
    from slate_rl.agents import configure_cpu
    from slate_rl.seeds import parse_seeds
    from slate_rl.stages import train_online

    configure_cpu()  # one intra-op thread per loop thread: the fast setting for many small kernels
    seed_list = parse_seeds(seeds) if seeds.strip() not in ("", "''", '""') else []
    if resume and train_online.is_group(resume):
        result = train_online.resume_group(resume, seed_list or None, device=device)
        _report_seeds(result)
        return
    if resume and seed_list:
        raise SlateRLError(
            f"--resume {resume} continues one seed's run; --seeds goes with --resume only for a seed group's parent "
            "run: drop --seeds"
        )
    if seed_list:
        cfg = stage_configs.TrainOnlineConfig.resolve(
            env,
            preset,
            agent=config.parse_assignments(assignments, "--set") or None,
            env_params=env_params,
            **{**overrides, "seed": seed_list[0]},
        )
        result = train_online.run_seeds(cfg, seed_list, **placement(experiment_name, parent_run), device=device)
        _report_seeds(result)
        return
    if resume:
        cfg = train_online.resumable(resume)
        run_id = train_online.run(cfg, resume_run=resume, device=device)
    else:
        cfg = stage_configs.TrainOnlineConfig.resolve(
            env,
            preset,
            agent=config.parse_assignments(assignments, "--set") or None,
            env_params=env_params,
            **overrides,
        )
        run_id = train_online.run(cfg, **placement(experiment_name, parent_run), device=device)
    _report_trained("policy", run_id, cfg, train_online.result_line)


def _report_trained(kind: str, run_id: str, cfg: Any, result_line: Callable[[dict[str, float], int], str]) -> None:
    """The end lines of a train-online / train-offline run: its run and test result, and its registered version."""
    from mlflow.tracking import MlflowClient

    run = MlflowClient().get_run(run_id)
    click.echo(f"{kind} run: runs:/{run_id}; {result_line(run.data.metrics, cfg.test_episodes)}")
    version = run.data.tags.get("registered_version")
    if version:
        click.echo(
            f"registered as version {version} of slate-rl.{cfg.env} (`slate-rl registry list --env {cfg.env}` "
            "lists the versions)"
        )


def _report_seeds(result: Any) -> None:
    """The end lines of a several-seed train-online: each seed's run and result; exit status 1 if one failed."""
    from mlflow.tracking import MlflowClient

    from slate_rl.stages import train_online

    if result.group_run:
        click.echo(f"parent run: runs:/{result.group_run}")
    for seed, run_id in result.runs.items():
        if seed in result.failed:
            click.echo(f"seed {seed}: runs:/{run_id} FAILED: {result.failed[seed]}")
            continue
        metrics = MlflowClient().get_run(run_id).data.metrics
        click.echo(f"seed {seed}: runs:/{run_id}; {train_online.result_line(metrics, result.config.test_episodes)}")
    if result.failed:
        raise click.ClickException(f"{len(result.failed)} of {len(result.runs)} seeds failed (see above)")


@main.command("train-offline")
@common_options
@pipeline_job
@config_options(
    stage_configs.TrainOfflineConfig,
    {
        "algorithm": f"Offline algorithm: {', '.join(method_ids('offline'))}.",
        "dataset": "A collect run to learn from (id or runs:/<id>); default: the newest finished collect run of "
        "--quality on --env, made on the same simulator.",
        "quality": "What that dataset collected: an alias (expert, medium, random), a mix name (mix, or the --name "
        "given to collect) or 'policy'.",
        "ranker": "What the actions mean: gems (the GeMS the dataset's policies acted through), gems_offline (a GeMS "
        "pretrained on the dataset, found or pretrained first) or topk_ideal (TopK over the true item embeddings).",
        "label_clicks": "Clicks the GeMS encoder sees when it relabels the dataset's actions: real or zero.",
        "seed": "Seed of the agent (weights, batch sampling, target noise).",
        "steps": "Gradient steps (each on --set batch_episodes whole episodes).",
        "eval_every": "Validate on the validation users (and log the diagnostics) every this many steps.",
        "save_every": "Save the resume state every this many steps.",
        "val_episodes": "Validation users (the same users at every validation).",
        "test_episodes": "Test users (after re-seeding the simulator: those of the online test).",
        "item_embeddings": "A .pt / .npy item table of the environment instead of the preset's generated one.",
        "allow_env_mismatch": ALLOW_MISMATCH_HELP,
        "register": "Register the best policy in the environment's registered model.",
    },
)
@option(
    "set",
    dest="assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a hyper-parameter of the algorithm, e.g. --set gamma=0.9 --set expectile=0.8 (repeatable, or "
    "several in one: KEY=VALUE,KEY=VALUE; see docs/offline.md).",
)
@option(
    "resume",
    default=None,
    metavar="RUN_ID",
    help="Continue a killed or failed train_offline run from its last checkpoint, in the same MLflow run.",
)
@option(
    "threads",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="CPU threads of the run's tensor operations (tag `threads`). 0: every core this process may use, the "
    "fast setting for a run alone on the machine (its updates batch whole episodes); 1 where other jobs share the "
    "cores (the pipeline's jobs). --resume keeps the killed run's count unless given, so that the resumed run "
    "repeats an uninterrupted one exactly.",
)
@env_param_option
@device_option
@user_errors
def train_offline_command(
    env: str,
    preset: str,
    experiment_name: str | None,
    parent_run: str | None,
    assignments: tuple[str, ...],
    resume: str | None,
    env_params: dict[str, Any] | None,
    device: str,
    threads: int,
    **overrides: Any,
) -> None:
    """Train an offline algorithm on a collected dataset; validate, test and score it in the simulator; register it."""
    from slate_rl.agents import configure_cpu
    from slate_rl.agents.runtime import usable_cores
    from slate_rl.stages import train_offline

    if resume and not threads:
        threads = train_offline.recorded_threads(resume)  # the killed run's count: the resume is bit for bit
    configure_cpu(threads or usable_cores())
    if resume:
        cfg = train_offline.resumable(resume)
        run_id = train_offline.run(cfg, resume_run=resume, device=device)
    else:
        cfg = stage_configs.TrainOfflineConfig.resolve(
            env,
            preset,
            agent=config.parse_env_params(assignments, "--set") or None,
            env_params=env_params,
            **overrides,
        )
        run_id = train_offline.run(cfg, **placement(experiment_name, parent_run), device=device)
    _report_trained("offline", run_id, cfg, train_offline.result_line)


@main.group("registry")
def registry_group() -> None:
    """Choose collection policies: list, register, promote and demote versions of the per-environment
    registered models (slate-rl.<env>). The aliases expert / medium / random are what `collect` uses; the same
    aliases set in the MLflow UI work identically."""


@registry_group.command("list")
@option("env", default=None, help="Environment (default: all of them).")
@user_errors
def registry_list(env: str | None) -> None:
    """Versions with method, seed, episode, validation / test return, aliases and source run."""
    from slate_rl.stages import registry

    for name in [config.check_env_name(env)] if env else config.env_names():
        rows = registry.list_versions(name)
        if not rows:
            continue
        click.echo(f"slate-rl.{name}")
        click.echo(
            f"  {'version':>7}  {'method':18} {'seed':>10} {'episode':>8} {'val':>8} {'test':>8}  {'aliases':16} run"
        )
        for r in rows:
            click.echo(
                f"  {r.version:>7}  {r.method:18} {r.seed:>10} {r.episode:>8} {r.val_return:>8} "
                f"{r.test_return:>8}  {r.aliases:16} {r.run_id}"
            )


@registry_group.command("register")
@option("run", dest="run_ref", required=True, help="A finished train_online run (id or runs:/<id>).")
@option(
    "checkpoint",
    default="best",
    show_default=True,
    help="'best', or a periodic checkpoint such as episode_050000 (e.g. a medium policy).",
)
@user_errors
def registry_register(run_ref: str, checkpoint: str) -> None:
    """Make a checkpoint of a finished run a new version of its environment's registered model."""
    from slate_rl.stages import registry

    click.echo(f"registered version {registry.register_checkpoint(run_ref, checkpoint)}")


@registry_group.command("select")
@option("run", dest="run_ref", required=True, help="A finished train_online run (id or runs:/<id>).")
@option(
    "medium",
    type=float,
    default=0.5,
    show_default=True,
    help="The medium policy: the periodic checkpoint whose validation return is closest to this share of the best.",
)
@user_errors
def registry_select(run_ref: str, medium: float) -> None:
    """Choose collection policies by rule: the run's best checkpoint becomes `expert`, the periodic checkpoint whose
    validation return is closest to MEDIUM x the best becomes `medium` (checkpoints taken before the first update
    left out), and the built-in random policy `random` when that alias is unset. Prints the choice and the validation
    returns behind it."""
    from slate_rl.stages import registry

    click.echo(registry.select_policies(run_ref, medium).describe())


@registry_group.command("register-random")
@option("env", required=True, help=ENV_HELP)
@option("seed", type=int, default=0, show_default=True, help="Seed of the random policy's generator.")
@user_errors
def registry_register_random(env: str, seed: int) -> None:
    """Register the built-in uniform-random policy, so that 'random' goes through the registry like the others."""
    from slate_rl.stages import registry

    click.echo(f"registered version {registry.register_random(config.check_env_name(env), seed)}")


@registry_group.command("promote")
@click.argument("env")
@click.argument("version")
@click.option(
    "--as",
    "alias",
    required=True,
    type=click.Choice(["expert", "medium", "random"]),
    help="The alias to set (moved if another version held it).",
)
@user_errors
def registry_promote(env: str, version: str, alias: str) -> None:
    """Point alias expert / medium / random of ENV's registered model (e.g. focused_mix) at VERSION (a version
    number, or an alias whose version it takes: `promote focused_mix medium --as expert`)."""
    from slate_rl.tracking import models

    target = models.set_alias(config.check_env_name(env), version, alias)
    click.echo(
        f"slate-rl.{env}@{alias} -> version {target.version} ({target.tags.get('method', '?')}, "
        f"seed {target.tags.get('seed', '?')}, episode {target.tags.get('episode', '?')})"
    )


@registry_group.command("demote")
@click.argument("env")
@click.option("--alias", required=True, type=click.Choice(["expert", "medium", "random"]), help="The alias to remove.")
@user_errors
def registry_demote(env: str, alias: str) -> None:
    """Remove an alias from ENV's registered model (e.g. focused_mix); its version stays registered."""
    from slate_rl.tracking import models

    models.remove_alias(config.check_env_name(env), alias)
    click.echo(f"removed alias {alias} of slate-rl.{env}")


@main.command("collect")
@common_options
@pipeline_job
@config_options(
    stage_configs.CollectConfig,
    {
        "quality": "Alias of the environment's registered model to play: expert, medium or random (default: expert, "
        "unless --policy or --mix is given).",
        "policy": "Or any registered version: models:/slate-rl.<env>@<alias> or models:/slate-rl.<env>/<version>.",
        "episodes": "Episodes to collect (with --mix: the total).",
        "epsilon_noise": "Probability that a step's latent action gets Gaussian noise (SAC+GeMS / TopK policies).",
        "noise_scale": "Std of that noise, as a fraction of the action box's half-range.",
        "mix": "Or a mix of sources, 'policy:share[:noise],...' with episode counts or fractions, e.g. "
        "expert:1000,expert:4000:0.3,medium:3000:0.3,random:2000.",
        "seed": "Seed of the users (simulator stream) and of the noise.",
        "format": "minari, npz or both.",
        "oracle": "Also store each step's user state and bored topics (sidecar).",
        "relevances": "Also store every item's relevance at each step (large: 2 GB per 10,000 episodes).",
        "batch_size": "Users simulated at once.",
        "name": "Dataset name (default: the alias, 'policy' or 'mix').",
        "reference_episodes": "Episodes of the random policy that give the dataset's random reference score.",
        "item_embeddings": "Item table of the simulator to collect on (a .pt / .npy file, or focused / diffuse); "
        "default: the preset's. The policies must have been trained on the same simulator.",
        "allow_env_mismatch": ALLOW_MISMATCH_HELP,
    },
)
@env_param_option
@device_option
@user_errors
def collect_command(
    env: str,
    preset: str,
    experiment_name: str | None,
    parent_run: str | None,
    env_params: dict[str, Any] | None,
    device: str,
    **overrides: Any,
) -> None:
    """Collect an offline dataset from registered policies chosen by alias, with a quality report."""
    from slate_rl.stages import collect

    cfg = stage_configs.CollectConfig.resolve(env, preset, env_params=env_params, **overrides)
    run_id = collect.run(cfg, **placement(experiment_name, parent_run), device=device)
    click.echo(f"dataset: runs:/{run_id}/{collect.ARTIFACT}  (load with slate_rl.data.load_offline('{run_id}'))")


@main.command("compare")
@option("envs", default="all", show_default=True, help="Comma-separated environments, or 'all'.")
@option("methods", default="all", show_default=True, help=f"Comma-separated method ids ({METHODS_HELP}), or 'all'.")
@option("preset", default="paper", show_default=True, help="Compare runs of this preset (quick, paper, or any).")
@option("reference", default="sac_gems", show_default=True, help="Method the Welch t-tests compare against.")
@option(
    "filter", dest="filter_string", default="", help="Extra MLflow filter on the runs, e.g. \"params.gamma = '0.8'\"."
)
@option("out", default="reports/latest", show_default=True, help="Folder the report is written to (also logged).")
@option("allow_mixed_presets", is_flag=True, help="Pool runs of different presets in one cell (refused otherwise).")
@option("bootstrap", type=int, default=2000, show_default=True, help="Bootstrap resamples of the aggregate scores.")
@option(
    "algorithms",
    default="all",
    show_default=True,
    help="Comma-separated offline algorithms of the offline tables (train_offline runs), or 'all'.",
)
@option("offline_only", is_flag=True, help="Only the offline tables: leave the train_online runs out.")
@option(
    "reference_bugs",
    type=click.Choice(["any", "true", "false"]),
    default="any",
    show_default=True,
    help="Only the train_online runs with this reference_bugs value (runs made before it existed: false); with "
    "'any', runs that differ in it are separate rows.",
)
@option(
    "reference_parity",
    type=click.Choice(["any", "true", "false"]),
    default="any",
    show_default=True,
    help="Only the train_online runs with this reference_parity value (as --reference-bugs).",
)
@option(
    "add_runs",
    multiple=True,
    metavar="RUNS_CSV",
    help="The runs.csv of an earlier compare report (e.g. of a tracking store since lost): its runs in the requested "
    "cells join the table, contrasts and runs.csv as rows of the same label; a run the store also holds counts once. "
    "Repeatable, or comma-separated.",
)
@option("experiment_name", default=None, help="MLflow experiment of the compare run itself.")
@user_errors
def compare_command(
    envs: str,
    methods: str,
    experiment_name: str | None,
    filter_string: str,
    reference_bugs: str,
    reference_parity: str,
    add_runs: tuple[str, ...],
    **values: Any,
) -> None:
    """The paper's results table (Markdown, CSV, LaTeX), aggregate scores and figures from finished runs; the
    offline tables (normalised scores per dataset, best and last weights) when finished train_offline runs exist.
    The filter applies to the runs of both."""
    from mlflow.tracking import MlflowClient

    from slate_rl.stages import compare, compare_offline

    umbrellas = {"reference_bugs": reference_bugs, "reference_parity": reference_parity}
    cfg = compare.CompareConfig.resolve(
        envs,
        methods,
        filter=filter_string,
        add_runs=[path.strip() for text in add_runs for path in text.split(",") if path.strip()],
        **{name: None if value == "any" else value == "true" for name, value in umbrellas.items()},
        **values,
    )
    run_id = compare.run(cfg, experiment_name=experiment_name)
    counts = MlflowClient().get_run(run_id).data.metrics
    for name, count in (("results.md", "runs"), (compare_offline.FILES[0], "offline_runs")):
        if counts.get(count):
            click.echo((Path(cfg.out) / name).read_text())
    click.echo(f"report: {cfg.out}/report.md (run {run_id})")


@main.group("pipeline", invoke_without_command=True)
@option("envs", default="all", show_default=True, help="Comma-separated environments, or 'all'.")
@option("methods", default="all", show_default=True, help=f"Comma-separated method ids ({METHODS_HELP}), or 'all'.")
@option(
    "seeds",
    default="10",
    show_default=True,
    help="A count in [1, 10] (the paper's first N seeds), one seed above 10, or a comma-separated list of seeds "
    "('7,' is the single seed 7).",
)
@option(
    "preset",
    default="paper",
    show_default=True,
    type=click.Choice(["quick", "paper"]),
    help="Parameter preset of every job: 'paper' reproduces the paper, 'quick' is a minutes-long smoke grid.",
)
@option("workers", type=int, default=1, show_default=True, help="Jobs run at once (each its own process).")
@option(
    "devices",
    default="",
    help="GPUs to spread jobs over, e.g. 0,1,2,3: each train-online, pretrain-gems and train-mf job gets "
    "--device cuda:K, K the listed GPU running the fewest jobs (default: every job on the CPU).",
)
@option(
    "backend",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Where jobs run: a process pool on this machine (--workers, --devices), or tasks of a Ray cluster "
    "(pip install 'slate-rl[ray]'; --address, --cpus-per-job, --gpus-per-job).",
)
@option("address", default="", help="Ray: the cluster's HOST:PORT, or 'auto' (the cluster this machine is part of).")
@option("cpus_per_job", type=float, default=1.0, show_default=True, help="Ray: CPUs of each job.")
@option(
    "gpus_per_job",
    type=float,
    default=0.0,
    show_default=True,
    help="Ray: GPUs of each job (Ray picks them; a fraction shares one GPU between jobs).",
)
@option(
    "env_param",
    multiple=True,
    metavar="KEY=VALUE[,VALUE...]",
    help="Override a simulator parameter in every job, e.g. --env-param boredom_threshold=3; several values "
    "sweep it (one variant of the grid per value). Repeatable; one value may hold several, K1=V1,K2=V2.",
)
@option("item_embeddings", default="", help="A .pt / .npy item table for every job instead of the preset's.")
@option(
    "set",
    dest="assignments",
    multiple=True,
    metavar="KEY=VALUE[,VALUE...]",
    help="Set a parameter of the training runs: a train-online option (episodes=300, lambda_kl=0.5: GeMS settings "
    "also reach the GeMS jobs) or a hyper-parameter of the methods that have it (gamma=0.9). Several values "
    "sweep it: --set gamma=0.8,0.9 runs every job twice. Repeatable; one value may hold several, K1=V1,K2=V2.",
)
@option(
    "dry_run",
    type=click.BOOL,
    is_flag=False,
    flag_value=True,
    default=False,
    help="Print the plan (every job, finished, to run, to resume or running) and run nothing.",
)
@option(
    "group_seeds",
    type=click.BOOL,
    is_flag=False,
    flag_value=True,
    default=True,
    show_default=True,
    help="One job per SAC method (SAC+TopK, SAC+GeMS), environment and variant trains all its seeds as one seed "
    "group (train-online --seeds); false: one job per seed. Either way a seed's finished run is not trained again.",
)
@option(
    "select_policies",
    type=float,
    default=0.0,
    show_default=True,
    metavar="FRACTION",
    help="After training, per environment, choose the collection policies (aliases expert, medium, random) as "
    "`registry select --medium FRACTION` does, from the --select-method run with the best test return. 0: off.",
)
@option("select_method", default="", help="The method --select-policies chooses from (default: the first online one).")
@option(
    "offline_algorithms",
    default="",
    metavar="ALGORITHMS",
    help=f"Turn on the offline grid: comma-separated offline algorithms ({', '.join(method_ids('offline'))}) or "
    "'all'. After the policies are chosen (--select-policies, or the aliases the registry holds), per environment "
    "one dataset per --qualities is collected and every algorithm trains on each (then the offline tables).",
)
@option(
    "qualities",
    default="expert,medium,random",
    show_default=True,
    help="Offline grid: the datasets per environment, registry aliases (expert, medium, random) or mix names "
    "(built in: mix = expert:0.1,expert:0.4:0.3,medium:0.3:0.3,random:0.2; more with --offline-mix).",
)
@option(
    "offline_seeds",
    default="",
    help="Offline grid: the seeds of each offline run, as --seeds takes them (default: the pipeline's --seeds).",
)
@option(
    "offline_steps",
    type=int,
    default=0,
    help="Offline grid: gradient steps of each offline run (default: the preset's).",
)
@option(
    "offline_set",
    multiple=True,
    metavar="KEY=VALUE[,VALUE...]",
    help="Offline grid: a train-offline option (ranker, default gems_offline here; eval_every, val_episodes, ...) or "
    "a hyper-parameter of the algorithms that have it (expectile=0.7,0.8,0.9: one variant per value, kept apart "
    "in the offline tables). Repeatable; one value may hold several, K1=V1,K2=V2.",
)
@option(
    "collect_set",
    multiple=True,
    metavar="KEY=VALUE",
    help="Offline grid: a collect option of every dataset, e.g. episodes=2000 or epsilon_noise=0.1 (one value).",
)
@option(
    "offline_mix",
    multiple=True,
    metavar="NAME=RECIPE",
    help="Offline grid: name a mixed dataset for --qualities, with a recipe as collect's --mix takes it, e.g. "
    "half=expert:0.5,random:0.5. Repeatable.",
)
@option("out", default="reports/pipeline", show_default=True, help="Folder of the final compare report.")
@option("experiment_name", default=None, help="MLflow experiment of the parent run and its jobs.")
@click.pass_context
@user_errors
def pipeline_command(
    ctx: click.Context,
    envs: str,
    methods: str,
    seeds: str,
    devices: str,
    dry_run: bool,
    out: str,
    experiment_name: str | None,
    **values: Any,
) -> None:
    """Run the whole grid (datasets, MF, GeMS, every training run; with --offline-algorithms, then collected datasets
    and offline runs) as child runs of one run, then compare.

    Finished jobs are skipped and killed ones resume from their last checkpoint: interrupt it and run it again to
    finish only what is missing. `slate-rl pipeline status` shows a running or past pipeline's jobs;
    `slate-rl pipeline pause` and `pipeline continue` stop a running one and let it go on."""
    if ctx.invoked_subcommand is not None:
        return
    from slate_rl.stages import pipeline, pipeline_offline

    offline = {name: values.pop(name) for name in pipeline_offline.OPTIONS}
    cfg = pipeline.PipelineConfig.resolve(
        envs, methods, seeds, devices=compare_split(devices), offline=offline, **values
    )
    if dry_run:
        click.echo(pipeline.describe_plan(cfg))
        return
    run_id = pipeline.run(cfg, experiment_name=experiment_name, out=out)
    click.echo(f"pipeline run {run_id}; report in {out}/report.md")


@pipeline_command.command("status")
@option("run", "run_id", default=None, help="The pipeline run (default: the newest in the tracking store).")
@user_errors
def pipeline_status_command(run_id: str | None) -> None:
    """A running or past pipeline's jobs, as the store holds them now: state, newest run, duration, and how far a
    training run got (episodes or epochs, with the time left at its pace)."""
    from slate_rl.stages import pipeline_status

    click.echo(pipeline_status.status(run_id))


@pipeline_command.command("pause")
@option("run", "run_id", default=None, help="The pipeline run (default: the newest running one).")
@user_errors
def pipeline_pause_command(run_id: str | None) -> None:
    """Stop a running pipeline and its jobs where they are (SIGSTOP), e.g. while you time something else on the
    machine; `slate-rl pipeline continue` lets them go on. Paused runs are not taken for lost ones meanwhile. From the
    machine the pipeline runs on; local backend only."""
    from slate_rl.stages import pipeline_pause

    click.echo(pipeline_pause.pause(run_id))


@pipeline_command.command("continue")
@option("run", "run_id", default=None, help="The pipeline run (default: the newest running one).")
@user_errors
def pipeline_continue_command(run_id: str | None) -> None:
    """Let a pipeline stopped by `slate-rl pipeline pause` and its jobs go on."""
    from slate_rl.stages import pipeline_pause

    click.echo(pipeline_pause.carry_on(run_id))


def compare_split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@main.command("envs")
def envs_command() -> None:
    """List the preset environments (the paper's six, then the variants) and the simulator parameters."""
    paper = config.paper_env_names()
    for name in config.env_names():
        preset = config.env_preset(name)
        click.echo(
            f"{name:24s} embeddings={preset['item_embeddings']:8s} click_model={preset['click_model']:7s} "
            f"diversity_penalty={preset['diversity_penalty']} boredom_threshold={preset['boredom_threshold']}"
            + ("  (paper)" if name in paper else "")
        )
    common = {k: v for k, v in config.env_preset(paper[0]).items() if k != "item_embeddings"}
    click.echo("\nSimulator parameters (--env-param KEY=VALUE; values of " + paper[0] + "):")
    click.echo("  " + ", ".join(f"{k}={v}" for k, v in sorted(common.items())))


@main.command("ui", context_settings={"ignore_unknown_options": True})
@click.option("--port", default=5000, show_default=True, help="Port of the UI on 127.0.0.1.")
@click.argument("mlflow_args", nargs=-1, type=click.UNPROCESSED)
def ui_command(port: int, mlflow_args: tuple[str, ...]) -> None:
    """Open the MLflow UI on the project's tracking store (extra arguments go to `mlflow ui`)."""
    import mlflow

    from slate_rl.tracking.runs import latest_runs_page

    uri = mlflow.get_tracking_uri()
    address = f"http://127.0.0.1:{port}"
    click.echo(f"MLflow UI for {uri} at {address}")
    page = latest_runs_page(address)
    if page:
        click.echo(f"runs of the experiment written last: {page}")
    os.execvp(
        sys.executable,
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--port", str(port), *mlflow_args],
    )


DATABASE_HELP = (
    "The server's database: postgresql://USER[:PASSWORD]@HOST[:PORT]/DBNAME (created when missing; needs "
    "slate-rl[server]). Default: $SLATE_RL_DATABASE."
)


@main.command("server", context_settings={"ignore_unknown_options": True})
@click.option("--database", envvar="SLATE_RL_DATABASE", required=True, help=DATABASE_HELP)
@click.option(
    "--artifacts",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("mlflow-artifacts"),
    show_default=True,
    help="Folder the server keeps artifacts in; clients up- and download them through the server.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: every one).")
@click.option("--port", type=int, default=5000, show_default=True, help="Port the server listens on.")
@click.option("--workers", type=int, default=4, show_default=True, help="Server processes answering requests.")
@click.option(
    "--auth",
    is_flag=True,
    help="MLflow's basic authentication: the admin password comes from $MLFLOW_AUTH_ADMIN_PASSWORD; users and "
    "their permissions live in the same database (README, Scaling out).",
)
@click.argument("mlflow_args", nargs=-1, type=click.UNPROCESSED)
def server_command(
    database: str, artifacts: Path, host: str, port: int, workers: int, auth: bool, mlflow_args: tuple[str, ...]
) -> None:
    """Run a shared MLflow tracking server on PostgreSQL with proxied artifacts, for many processes and machines
    (extra arguments go to `mlflow server`, e.g. --allowed-hosts). Clients set MLFLOW_TRACKING_URI=http://HOST:PORT."""
    from slate_rl.tracking import server

    try:
        status = server.serve(database, artifacts, host, port, workers, auth, mlflow_args, on_ready=click.echo)
    except SlateRLError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(status)


@main.command("migrate")
@click.option(
    "--source",
    default="sqlite:///mlflow.db",
    show_default=True,
    help="The local SQLite store to move (its artifacts are read from the folders its runs name).",
)
@click.option("--server", "server_uri", required=True, help="The tracking server, e.g. http://127.0.0.1:5000.")
@click.option("--database", envvar="SLATE_RL_DATABASE", required=True, help="The database the server runs on.")
def migrate_command(source: str, server_uri: str, database: str) -> None:
    """Copy a local store (runs, metrics, params, tags, artifacts, registered models, versions, aliases) onto a
    tracking server, keeping run ids and version numbers so that lineage still finds every run. Runs the server
    holds already are skipped: run it again after an interruption. The source store is left as it was."""
    from slate_rl.tracking.migrate import migrate

    if source.startswith("sqlite:///") and not source.startswith("sqlite:////"):
        source = f"sqlite:///{Path(source[len('sqlite:///') :]).resolve()}"
    try:
        report = migrate(source, database, server_uri)
    except SlateRLError as exc:
        raise click.ClickException(str(exc)) from exc
    for line in report.lines():
        click.echo(line)


if __name__ == "__main__":
    main()
