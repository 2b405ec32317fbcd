"""`slate-rl`: one subcommand per pipeline stage (each also an MLflow Project entry point, see MLproject)."""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

from slate_rl.errors import SlateRLError
from slate_rl.progress import setup_logging

log = logging.getLogger("slate_rl")

ENV_HELP = ("Environment: focused_topdown, focused_mix, focused_divpen, diffuse_topdown, diffuse_mix, "
            "diffuse_divpen.")


def option(name: str, dest: str | None = None, **kwargs: Any) -> Callable:
    """A click option reachable as --some-name and --some_name (MLflow passes extra parameters with underscores)."""
    dashed = "--" + name.replace("_", "-")
    names = [dashed] if "_" not in name else [dashed, "--" + name]
    return click.option(*names, dest or name, **kwargs)


def common_options(func: Callable) -> Callable:
    """--env, --preset and --experiment-name, shared by the stages."""
    func = option("experiment_name", default=None,
                  help="MLflow experiment (the purpose of this batch of runs); default: $MLFLOW_EXPERIMENT_NAME "
                       "or MLflow's default experiment. Ignored under `mlflow run`, which sets it.")(func)
    func = option("preset", type=click.Choice(["quick", "paper"]), default="paper", show_default=True,
                  help="Parameter preset: 'paper' reproduces the paper, 'quick' is a minutes-long smoke run.")(func)
    func = option("env", default="focused_topdown", show_default=True, help=ENV_HELP)(func)
    return func


def user_errors(func: Callable) -> Callable:
    """Turn SlateRLError into a one-line 'Error: ...' and exit status 1 (the run is already marked FAILED)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SlateRLError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def main(log_level: str) -> None:
    """slate-rl: reinforcement learning for slate recommendation on the GeMS benchmark.

    Every stage runs inside an MLflow run (params, metrics, artifacts, console log) in the tracking store
    named by $MLFLOW_TRACKING_URI (default: sqlite:///mlflow.db in the current folder). Stages find their
    inputs by lineage: given only --env, a stage reuses the matching finished upstream run or runs it first.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    setup_logging(getattr(logging, log_level.upper()))


@main.command("generate-dataset")
@common_options
@option("n_sessions", type=int, default=None, help="Sessions (users) to log. [paper: 100000, quick: 2000]")
@option("epsilon", type=float, default=None, help="Probability that a slot shows a random item instead of the "
                                                  "oracle's. [0.5]")
@option("seed", type=int, default=None, help="Seed of the logging policy's generator. [2754851]")
@option("sim_seed", type=int, default=None, help="Seed of the simulator's generator (users, clicks). [24321357327]")
@option("item_embeddings", default=None,
        help="A .pt / .npy item table (num_items x 20) to use instead of the preset's generated one, e.g. the "
             "paper's item_embeddings_focused.pt.")
@option("chunk_size", type=int, default=None, help="Users simulated at once (memory vs speed). [10000]")
@option("env_param", multiple=True, metavar="KEY=VALUE",
        help="Override a simulator parameter, e.g. --env-param boredom_threshold=3 (repeatable).")
@user_errors
def generate_dataset_command(env: str, preset: str, experiment_name: str | None, env_param: tuple[str, ...],
                             **overrides: Any) -> None:
    """Log sessions of the ε-greedy oracle (the data GeMS and MF learn from) as an artifact 'dataset'."""
    from slate_rl.config import parse_assignments
    from slate_rl.stages import generate_dataset

    config = generate_dataset.GenerateDatasetConfig.resolve(
        env, preset, env_overrides=parse_assignments(env_param, "--env-param") or None, **overrides)
    run_id = generate_dataset.run(config, experiment_name=experiment_name)
    click.echo(f"dataset: runs:/{run_id}/{generate_dataset.ARTIFACT}")


@main.command("compare")
@option("envs", default="all", show_default=True, help="Comma-separated environments, or 'all'.")
@option("methods", default="all", show_default=True,
        help="Comma-separated method ids (sac_gems, sac_topk_ideal, sac_topk_mf, sac_wknn, slateq, reinforce_softmax, "
             "random, short_term_oracle), or 'all'.")
@option("preset", default="paper", show_default=True, help="Compare runs of this preset (quick, paper, or any).")
@option("reference", default="sac_gems", show_default=True, help="Method the Welch t-tests compare against.")
@option("filter", dest="filter_string", default="", help="Extra MLflow filter on the runs, e.g. \"params.gamma = '0.8'\".")
@option("out", default="reports/latest", show_default=True, help="Folder the report is written to (also logged).")
@option("allow_mixed_presets", is_flag=True, help="Pool runs of different presets in one cell (refused otherwise).")
@option("bootstrap", type=int, default=2000, show_default=True, help="Bootstrap resamples of the aggregate scores.")
@option("experiment_name", default=None, help="MLflow experiment of the compare run itself.")
@user_errors
def compare_command(envs: str, methods: str, experiment_name: str | None, filter_string: str, **values: Any) -> None:
    """The paper's results table (Markdown, CSV, LaTeX), aggregate scores and figures from finished runs."""
    from slate_rl.stages import compare

    cfg = compare.CompareConfig.resolve(envs, methods, filter=filter_string, **values)
    run_id = compare.run(cfg, experiment_name=experiment_name)
    click.echo((Path(cfg.out) / "results.md").read_text())
    click.echo(f"report: {cfg.out}/report.md (run {run_id})")


@main.command("envs")
def envs_command() -> None:
    """List the preset environments and their distinguishing parameters."""
    from slate_rl import config

    for name in config.env_names():
        preset = config.env_preset(name)
        click.echo(f"{name:16s} embeddings={preset['item_embeddings']:8s} click_model={preset['click_model']:7s} "
                   f"diversity_penalty={preset['diversity_penalty']}")


@main.command("ui", context_settings={"ignore_unknown_options": True})
@click.option("--port", default=5000, show_default=True)
@click.argument("mlflow_args", nargs=-1, type=click.UNPROCESSED)
def ui_command(port: int, mlflow_args: tuple[str, ...]) -> None:
    """Open the MLflow UI on the project's tracking store (extra arguments go to `mlflow ui`)."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    click.echo(f"MLflow UI for {uri} at http://127.0.0.1:{port}")
    os.execvp(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                               "--port", str(port), *mlflow_args])


if __name__ == "__main__":
    main()
