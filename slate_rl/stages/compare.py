"""Stage `compare`: the paper's results table, aggregate scores and figures, straight from finished runs; and the
offline tables (normalised scores of offline algorithms per dataset) when finished train_offline runs exist."""

from __future__ import annotations

import dataclasses
import functools
import logging
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlflow.entities import Run

from slate_rl import atomic, config
from slate_rl.errors import SlateRLError
from slate_rl.methods import ONLINE_FAMILIES, get_method, method_ids
from slate_rl.reporting import (
    RunResult,
    aggregate_scores,
    aggregates_to_markdown,
    build_contrasts,
    build_table,
    contrasts_to_csv,
    contrasts_to_markdown,
    plot_learning_curves,
    plot_offline_curves,
    plot_tradeoff,
    to_csv,
    to_latex,
    to_markdown,
    to_per_seed_csv,
    to_runs_csv,
)
from slate_rl.reporting.names import row_order
from slate_rl.reporting.runs_file import read_runs_csv
from slate_rl.stage_configs import REFERENCE_PROTOCOL, TrainOnlineConfig, agent_defaults, reference_switches
from slate_rl.stages import compare_offline, environment
from slate_rl.tracking.results import metric_curve, search_finished_runs
from slate_rl.tracking.runs import format_param, normal_param, stage_run

STAGE = "compare"
SOURCE_STAGE = "train_online"
# The GeMS setting of the paper's table (d = 32, beta = 1.0, lambda = 0.5); other settings feed the trade-off figures.
PAPER_GEMS = {"latent_dim": 32.0, "lambda_kl": 1.0, "lambda_click": 0.5}
# Params that are not part of a run's configuration identity: the cell and table it belongs to, its seed and the
# upstream run of that seed, and what happens after training (registration).
NOT_IDENTITY = ("env", "method", "preset", "seed", "gems", "register")
UMBRELLAS = ("reference_parity", "reference_bugs")  # train_online's reference umbrellas (filters, row labels)
# Row labels show these switches alone, not the fields they imply (the umbrellas, then the protocol ordering).
LABEL_SWITCHES = (*UMBRELLAS, "reference_protocol")
log = logging.getLogger("slate_rl")


@dataclasses.dataclass
class CompareConfig:
    """What to compare: environments, methods, preset ('any' pools nothing: it keeps each run's own preset); offline
    algorithms (empty: all there are) and whether to leave the online table out; the runs.csv files of earlier
    reports whose runs join the store's (`add_runs`)."""

    envs: list[str]
    methods: list[str]
    preset: str = "paper"
    reference: str = "sac_gems"
    filter: str = ""
    out: str = "reports/latest"
    allow_mixed_presets: bool = False
    bootstrap: int = 2000
    algorithms: list[str] = dataclasses.field(default_factory=list)
    offline_only: bool = False
    reference_bugs: bool | None = None  # keep only the runs with this reference_bugs value (None: all, as variants)
    reference_parity: bool | None = None  # ... and reference_parity value
    add_runs: list[str] = dataclasses.field(default_factory=list)  # runs.csv files of earlier reports to add

    @classmethod
    def resolve(cls, envs: str, methods: str, algorithms: str = "", **values: Any) -> CompareConfig:
        env_list = config.resolve_env_list(envs)
        method_list = list(method_ids(ONLINE_FAMILIES)) if methods.strip() in ("", "all") else _split(methods)
        chosen = [] if algorithms.strip() in ("", "all") else _split(algorithms)
        cfg = cls(
            envs=env_list,
            methods=method_list,
            algorithms=chosen,
            **{k: v for k, v in values.items() if v is not None},
        )
        for method in (*cfg.methods, cfg.reference):
            get_method(method, ONLINE_FAMILIES)
        if cfg.preset not in (*config.PRESETS, "any"):
            raise SlateRLError(f"unknown preset {cfg.preset!r}; choose one of: {', '.join(config.PRESETS)}, any")
        if cfg.add_runs and cfg.filter:
            raise SlateRLError(
                "--filter selects the store's runs by their MLflow params, which the runs of --add-runs files do not "
                "carry: filter without --add-runs, or remove the rows you do not want from the file"
            )
        if cfg.bootstrap < 100:
            raise SlateRLError(f"bootstrap needs at least 100 resamples (got {cfg.bootstrap})")
        return cfg


def _listing(chosen: list[str], everything: Sequence[str]) -> str:
    """'all' when every item is chosen (the MLproject default), else the comma-separated choice."""
    return "all" if sorted(chosen) == sorted(everything) else ",".join(chosen)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def run(cfg: CompareConfig, experiment_name: str | None = None) -> str:
    """Build the report inside a `compare` run; returns the run id. The report is also written to `cfg.out`."""
    with stage_run(
        STAGE, run_name=f"{STAGE}/{cfg.preset}", experiment_name=experiment_name, tags={"preset": cfg.preset}
    ) as mlrun:
        mlrun.log_params(
            {
                "envs": _listing(cfg.envs, config.paper_env_names()),
                "methods": _listing(cfg.methods, method_ids(ONLINE_FAMILIES)),
                "preset": cfg.preset,
                "reference": cfg.reference,
                "filter": cfg.filter,
                "out": cfg.out,
                "allow_mixed_presets": cfg.allow_mixed_presets,
                "bootstrap": cfg.bootstrap,
                "algorithms": ",".join(cfg.algorithms) or "all",
                "offline_only": cfg.offline_only,
                "add_runs": ",".join(cfg.add_runs),
                **{name: _choice(getattr(cfg, name)) for name in UMBRELLAS},
            }
        )
        offline = compare_offline.gather(cfg.envs, cfg.preset, cfg.filter, cfg.algorithms)
        if cfg.offline_only and not offline.results:
            raise SlateRLError(
                f"no finished {compare_offline.SOURCE_STAGE} run matches envs={','.join(cfg.envs)} "
                f"algorithms={','.join(cfg.algorithms) or 'all'} preset={cfg.preset}"
                + (f" filter={cfg.filter!r}" if cfg.filter else "")
                + "; "
                + compare_offline.describe_store(cfg.filter)
            )
        required = not offline.results and not cfg.add_runs
        runs = [] if cfg.offline_only else select_runs(cfg, required=required)
        results = to_results(runs, with_curve=True)
        added = [] if cfg.offline_only else added_runs(cfg, {r.run_id for r in results})
        if cfg.add_runs and not results and not added and not offline.results:
            raise SlateRLError(
                f"neither the store nor {', '.join(cfg.add_runs)} holds a finished run of envs={','.join(cfg.envs)} "
                f"methods={','.join(cfg.methods)} preset={cfg.preset}"
            )
        results = align_variants(results + added) if added else results
        for number, path in enumerate(cfg.add_runs):
            mlrun.log_artifact(path, f"added_runs/{number}")
        with tempfile.TemporaryDirectory(prefix="slate-rl-report-") as tmp:
            files = write_report(results, cfg, Path(tmp), offline)
            mlrun.log_artifacts(tmp, "report")
            out = Path(cfg.out)
            out.mkdir(parents=True, exist_ok=True)
            for name in files:
                atomic.write_bytes(out / name, (Path(tmp) / name).read_bytes())
        mlrun.log_metrics(
            {
                "runs": len(results),
                "cells": len({(r.method, r.env) for r in results}),
                "offline_runs": len(offline.results),
                "added_runs": len(added),
            }
        )
        log.info(
            "%s: %d runs; report in %s (and artifact 'report' of run %s)", STAGE, len(results), cfg.out, mlrun.run_id
        )
        return mlrun.run_id


def select_runs(cfg: CompareConfig, required: bool = True) -> list[Run]:
    """Finished train_online runs of the requested cells; the latest run per (method, env, seed, preset,
    configuration identity): runs of one seed that differ in any other param are variants, all kept. None found is
    an error when `required`."""
    found = search_finished_runs(SOURCE_STAGE, cfg.filter)
    wanted = [
        r
        for r in found
        if r.data.tags.get("env") in cfg.envs
        and r.data.tags.get("method") in cfg.methods
        and (cfg.preset == "any" or r.data.tags.get("preset") == cfg.preset)
        and "test_return" in r.data.metrics
        and all(getattr(cfg, name) in (None, umbrella(r, name)) for name in UMBRELLAS)
    ]
    if not wanted and required:
        raise SlateRLError(
            f"no finished {SOURCE_STAGE} run matches envs={','.join(cfg.envs)} "
            f"methods={','.join(cfg.methods)} preset={cfg.preset}"
            + (f" filter={cfg.filter!r}" if cfg.filter else "")
            + "".join(f" {name}={_choice(getattr(cfg, name))}" for name in UMBRELLAS if getattr(cfg, name) is not None)
            + "; "
            + describe_store(search_finished_runs(SOURCE_STAGE) if cfg.filter else found)
        )
    latest: dict[tuple, Run] = {}
    for r in wanted:  # newest first: keep the first of each key
        tags = r.data.tags
        key = (tags["method"], tags["env"], tags.get("seed"), tags.get("preset"), frozenset(identity(r).items()))
        latest.setdefault(key, r)
    return list(latest.values())


def added_runs(cfg: CompareConfig, known: set[str]) -> list[RunResult]:
    """The runs of the `add_runs` files in the requested cells (environments, methods, preset, reference umbrellas),
    leaving out the runs already found (by run id: the store's own, or an earlier file's)."""
    added = []
    for path in cfg.add_runs:
        for result in read_runs_csv(Path(path), cfg.preset):
            switches = {name.rpartition(".")[2]: value for name, value in (*result.settings, *result.variant)}
            if (
                result.run_id not in known
                and result.env in cfg.envs
                and result.method in cfg.methods
                and cfg.preset in ("any", result.preset)
                and all(getattr(cfg, name) in (None, switches.get(name) == "true") for name in UMBRELLAS)
            ):
                known.add(result.run_id)
                added.append(result)
    return added


def align_variants(results: list[RunResult]) -> list[RunResult]:
    """Runs from the store and from runs files as one set of rows: a param that sets a variant row of a method apart
    in either source (by its last name part) is part of the row of each of its runs, also where a source held it as
    a setting every one of its runs shares (a store with only reference_bugs=true runs of a method)."""
    short = lambda name: name.rpartition(".")[2]  # noqa: E731
    # a runs file names params as labels do ('gamma'); the store by their full name ('agent.gamma'): use the latter
    full = {short(name): name for r in results for name, _ in (*r.variant, *r.settings) if "." in name}
    named = lambda pairs: tuple((full.get(name, name), value) for name, value in pairs)  # noqa: E731
    fields: dict[str, set[str]] = {}
    for result in results:
        fields.setdefault(result.method, set()).update(short(name) for name, _ in result.variant)
    aligned = []
    for result in results:
        moved = tuple(pair for pair in result.settings if short(pair[0]) in fields[result.method])
        variant = tuple(sorted(named((*result.variant, *moved)), key=lambda pair: short(pair[0])))
        kept = named(pair for pair in result.settings if pair not in moved)
        aligned.append(dataclasses.replace(result, variant=variant, settings=kept))
    return aligned


def umbrella(r: Run, name: str) -> bool:
    """The run's value of a reference umbrella (`reference_bugs`, `reference_parity`); False for runs made before
    they existed."""
    return normal_param(r.data.params.get(name)) == "true"


def _choice(value: bool | None) -> str:
    """An umbrella filter as the command line spells it: any, true or false."""
    return "any" if value is None else format_param(value)


def identity(r: Run) -> dict[str, str]:
    """The run's configuration apart from its seed: its params that differ from the defaults of its method,
    environment and preset (a param a run did not log counts as that default), values normalised."""
    tags = r.data.tags
    return {
        name: normal_param(value)
        for name, value in r.data.params.items()
        if name not in NOT_IDENTITY
        and normal_param(value) != _default(tags["method"], tags["env"], tags.get("preset", ""), name)
    }


@functools.cache
def _defaults(method: str, env: str, preset: str) -> dict[str, str]:
    """The params a train_online run of (method, env, preset) logs when nothing else is asked ({} if unknown)."""
    try:
        cfg = TrainOnlineConfig.resolve(env, preset, method=method)
    except SlateRLError:
        return {}
    logged = {**cfg.as_params(), **environment.spec_of(cfg).as_params()}  # older runs did not log the spec
    return {name: format_param(value) for name, value in logged.items()}


@functools.cache
def _default(method: str, env: str, preset: str, name: str) -> str | None:
    """The normalised default of param `name` (agent hyper-parameters: the method's own); None when unknown."""
    if name.startswith("agent."):
        value = agent_defaults(method).get(name[len("agent.") :])
        return None if value is None else normal_param(format_param(value))
    return normal_param(_defaults(method, env, preset).get(name))


def to_results(runs: Sequence[Run], with_curve: bool) -> list[RunResult]:
    """The runs as results, each with its variant: the params on which the configurations of its method differ,
    empty for the runs that keep those params at their defaults (the plain row, which the contrasts compare against);
    and the method's settings: the params all its runs set to one value other than the preset's. The GeMS setting is
    left to the trade-off figures."""
    identities = {r.info.run_id: {k: v for k, v in identity(r).items() if k not in PAPER_GEMS} for r in runs}
    fields: dict[str, list[str]] = {}
    settings: dict[str, tuple[tuple[str, str], ...]] = {}
    for method in {r.data.tags["method"] for r in runs}:
        mine = [(r, identities[r.info.run_id]) for r in runs if r.data.tags["method"] == method]
        names = sorted({name for _, ident in mine for name in ident})
        varying = [name for name in names if len({_shown(r, ident, name) for r, ident in mine}) > 1]
        fields[method] = [name for name in varying if not _set_by_umbrellas(name, method, mine)]
        shared = sorted(set.intersection(*(set(ident.items()) for _, ident in mine)))
        settings[method] = tuple((name, _shown(*mine[0], name)) for name, _ in shared)
    results = []
    for r in runs:
        method, ident = r.data.tags["method"], identities[r.info.run_id]
        variant = tuple((name, _shown(r, ident, name)) for name in fields[method])
        plain = not any(name in ident for name in fields[method])
        results.append(
            dataclasses.replace(to_result(r, with_curve, () if plain else variant), settings=settings[method])
        )
    return results


def _set_by_umbrellas(name: str, method: str, runs: list[tuple[Run, dict[str, str]]]) -> bool:
    """Whether param `name` is one the reference switches set (the protocol's fields, the method's reference
    switches, reference_bugs under reference_parity) and, among `runs`, follows from the switches' values: a row
    label then shows the switch alone ('reference_protocol=true', not every field it sets)."""
    implied = {"reference_bugs", *REFERENCE_PROTOCOL, *(f"agent.{s}" for s in reference_switches(method))}
    if name not in implied:
        return False
    seen: dict[tuple[str, ...], str] = {}
    for r, ident in runs:
        key = tuple(_shown(r, ident, other) for other in LABEL_SWITCHES if other != name)
        if seen.setdefault(key, _shown(r, ident, name)) != _shown(r, ident, name):
            return False
    return True


def _shown(r: Run, ident: dict[str, str], name: str) -> str:
    """The value of param `name` in run `r` as a row label shows it (its default when the run kept that)."""
    if name in ident:
        return r.data.params[name]
    tags = r.data.tags
    default = (
        agent_defaults(tags["method"]).get(name[len("agent.") :])
        if name.startswith("agent.")
        else _defaults(tags["method"], tags["env"], tags.get("preset", "")).get(name)
    )
    return "default" if default is None else format_param(default)


def describe_store(runs: Sequence[Run]) -> str:
    """What exists, e.g. 'the store has: sac_gems/focused_mix/quick (3 seeds), ...'."""
    if not runs:
        return f"the store has no finished {SOURCE_STAGE} run at all"
    counts = Counter((r.data.tags.get("method"), r.data.tags.get("env"), r.data.tags.get("preset")) for r in runs)
    items = [f"{m}/{e}/{p} ({n} run{'s' if n > 1 else ''})" for (m, e, p), n in sorted(counts.items(), key=str)]
    return "the store has: " + ", ".join(items[:30]) + (" ..." if len(items) > 30 else "")


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def to_result(r: Run, with_curve: bool, variant: tuple[tuple[str, str], ...] = ()) -> RunResult:
    tags, params = r.data.tags, r.data.params
    gems = {
        "latent_dim": params.get("latent_dim"),
        "beta": params.get("lambda_kl"),
        "lambda_click": params.get("lambda_click"),
    }
    # time/elapsed_s is the time of each logging window: their sum leaves out the time the run was stopped
    windows = metric_curve(r.info.run_id, "time/elapsed_s") if with_curve else []
    return RunResult(
        method=tags["method"],
        env=tags["env"],
        seed=int(tags["seed"]),
        test_return=r.data.metrics["test_return"],
        preset=tags.get("preset", "unknown"),
        val_curve=(metric_curve(r.info.run_id, "val_return") or None) if with_curve else None,
        params={k: v for k, v in gems.items() if v is not None},
        variant=variant,
        run_id=r.info.run_id,
        test_stderr=r.data.metrics.get("test_return_stderr"),
        train_seconds=sum(seconds for _, seconds in windows) if windows else None,
        commit=tags.get("git_commit", ""),
    )


def is_paper_setting(result: RunResult) -> bool:
    """False only for SAC+GeMS runs of a non-paper (d, beta, lambda) setting."""
    if result.method != "sac_gems" or not result.params:
        return True
    values = {
        "latent_dim": result.params.get("latent_dim"),
        "lambda_kl": result.params.get("beta"),
        "lambda_click": result.params.get("lambda_click"),
    }
    return all(_number(values[k]) in (None, v) for k, v in PAPER_GEMS.items())


def write_report(
    results: list[RunResult], cfg: CompareConfig, folder: Path, offline: compare_offline.OfflineInputs | None = None
) -> list[str]:
    """The online table (md, csv, tex), aggregate scores and figures when `results` holds runs, the offline tables
    when `offline` holds results, and a combined report.md; returns the file names."""
    sections = ["# Results\n"]
    figures: list[Path] = []
    if results:
        online, figures = _online_report(results, cfg, folder)
        sections += online
    if offline is not None and offline.results:
        tables = compare_offline.write_tables(offline, folder, cfg.allow_mixed_presets)
        sections += ["\n## Offline RL: normalised scores per dataset\n", tables]
        curves = plot_offline_curves(offline.results, offline.behaviour, folder / "offline_curves.png")
        figures += [curves] if curves is not None else []
    if figures:
        sections += ["\n## Figures\n"] + [f"![{p.stem}]({p.name})\n" for p in figures]
    atomic.write_text(folder / "report.md", "\n".join(sections))
    return sorted(p.name for p in folder.iterdir() if p.is_file())


def _online_report(results: list[RunResult], cfg: CompareConfig, folder: Path) -> tuple[list[str], list[Path]]:
    """The online table and aggregate scores (files and report sections) and the figures (files)."""
    mixed = {"allow_mixed_presets": cfg.allow_mixed_presets}
    table_runs = [r for r in results if is_paper_setting(r)]
    rows = [
        row for method in cfg.methods for row in row_order(r.row for r in table_runs if r.method == method) or (method,)
    ]
    table = build_table(table_runs, methods=rows, envs=cfg.envs, reference=cfg.reference, **mixed)
    markdown = to_markdown(table)
    atomic.write_text(folder / "results.md", markdown)
    atomic.write_text(folder / "results.csv", to_csv(table))
    atomic.write_text(folder / "results.tex", to_latex(table, label="tab:slate-rl-results"))
    for env in table.envs:
        atomic.write_text(folder / f"per_seed_{env}.csv", to_per_seed_csv(table, env))
    atomic.write_text(folder / "runs.csv", to_runs_csv(table_runs))
    sections = [markdown]
    contrasts = build_contrasts(table)
    if contrasts:
        atomic.write_text(folder / "contrasts.md", contrasts_to_markdown(contrasts, table.confidence))
        atomic.write_text(folder / "contrasts.csv", contrasts_to_csv(contrasts))
        sections += [
            "\n## Contrasts\n",
            "Each variant against its method's plain row, each row against the reference method: the difference of "
            "mean test returns with its interval on Welch's dof, Welch's test, and the smallest difference these seeds "
            "could have detected; 'not resolved' where the test does not reject.\n",
            contrasts_to_markdown(contrasts, table.confidence),
        ]
    if _complete_for_aggregates(table_runs):
        aggregates = aggregates_to_markdown(_aggregate(table_runs, cfg))
        atomic.write_text(folder / "aggregates.md", aggregates)
        sections += ["\n## Aggregate scores across environments\n", aggregates]
    figures = [plot_learning_curves(table_runs, folder / "learning_curves.png", **mixed)]
    for env in sorted({r.env for r in results if r.method == "sac_gems"}):
        for vary in ("beta", "lambda_click"):
            figures.append(plot_tradeoff(results, folder / f"tradeoff_{vary}_{env}.png", env=env, vary=vary, **mixed))
    return sections, [p for p in figures if p is not None]


def _aggregate(results: list[RunResult], cfg: CompareConfig) -> list:
    """Scores normalised by random and short-term-oracle returns when both exist and can normalise, else raw."""
    options = {"n_resamples": cfg.bootstrap, "allow_mixed_presets": cfg.allow_mixed_presets}
    if {"random", "short_term_oracle"} <= {r.method for r in results}:
        try:
            return aggregate_scores(results, normalisation="random_oracle", **options)
        except SlateRLError as exc:
            log.warning("%s: aggregate scores on raw returns (%s)", STAGE, exc)
    return aggregate_scores(results, normalisation="raw", **options)


def _complete_for_aggregates(results: list[RunResult]) -> bool:
    """Aggregates compare methods across the same environments: every method present must cover every env."""
    envs = {r.env for r in results}
    return bool(results) and all({r.env for r in results if r.row == row} == envs for row in {r.row for r in results})
