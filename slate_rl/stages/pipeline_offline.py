"""The pipeline's offline grid (`slate-rl pipeline --offline-algorithms ...`): after the online training and the
choice of the collection policies, per environment a `collect` job per dataset quality (a registry alias, or a
named mix of them), a GeMS pretrained on each dataset when a run acts through one (ranker gems_offline, the grid's
default), then a `train_offline` job per dataset, algorithm, seed and variant (each combination of the
`--offline-set` values an algorithm takes); the offline tables then join the pipeline's report.

Its jobs are found by lineage keys like the other jobs of the pipeline: a collect job's key holds the registered
versions its aliases point at (known once the policies are chosen), an offline GeMS's and an offline run's key hold
their dataset run (known once it is collected).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from typing import TYPE_CHECKING, Any

from slate_rl.errors import SlateRLError
from slate_rl.methods import Need, get_method, method_ids
from slate_rl.seeds import describe, parse_seeds
from slate_rl.stage_configs import CollectConfig, PretrainGemsConfig, TrainOfflineConfig, agent_defaults
from slate_rl.stages import collect, compare_offline, on_dataset, pipeline, pretrain_gems, train_offline
from slate_rl.tracking import models
from slate_rl.tracking.runs import format_param

if TYPE_CHECKING:
    from slate_rl.stages.pipeline import Job, PipelineConfig

PHASES = ("collection", "offline GeMS", "offline training")
OPTIONS = (  # the pipeline's options of the offline grid (CLI names with underscores), logged as given
    "offline_algorithms",
    "qualities",
    "offline_seeds",
    "offline_steps",
    "offline_set",
    "collect_set",
    "offline_mix",
)
QUALITIES = "expert,medium,random"
MIXES = {"mix": "expert:0.1,expert:0.4:0.3,medium:0.3:0.3,random:0.2"}  # the workflow's mixed benchmark
RANKER = "gems_offline"  # the grid's default ranker: it acts on every dataset, random ones included
SET_BY_GRID = ("algorithm", "seed", "dataset", "quality", "agent", "steps", "item_embeddings", "env_params")
COLLECT_SET_BY_GRID = ("quality", "policy", "mix", "name", "item_embeddings", "env_params")
NOT_SETTABLE = ("register", "allow_env_mismatch")  # the grid registers its policies and plays them on their simulator
_ASSIGNMENT = re.compile(r",(?=\s*[A-Za-z_]\w*\s*=)")  # splits 'K1=V1,K2=V2' (a value may hold commas)


@dataclasses.dataclass
class OfflineGrid:
    """What the offline grid runs: datasets (each environment x `qualities`), `algorithms` x `seeds` x the variants
    of `overrides` (train_offline options and hyper-parameters, each a list of values), `steps` gradient steps (0:
    the preset's); `collect` sets the collect options, `mixes` names mixed datasets (name -> mix recipe)."""

    algorithms: list[str]
    qualities: list[str]
    seeds: list[int]
    steps: int = 0
    overrides: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
    collect: dict[str, Any] = dataclasses.field(default_factory=dict)
    mixes: dict[str, str] = dataclasses.field(default_factory=dict)
    given: dict[str, str] = dataclasses.field(default_factory=dict)  # the options as given (logged as params)

    @classmethod
    def resolve(
        cls,
        cfg: PipelineConfig,
        offline_algorithms: str = "",
        qualities: str = QUALITIES,
        offline_seeds: str = "",
        offline_steps: int = 0,
        offline_set: tuple[str, ...] = (),
        collect_set: tuple[str, ...] = (),
        offline_mix: tuple[str, ...] = (),
    ) -> OfflineGrid | None:
        """The grid of these options, checked against the pipeline's `cfg`; None without `offline_algorithms`."""
        offline_set, collect_set, offline_mix = (
            tuple(item for item in items if item.strip()) for items in (offline_set, collect_set, offline_mix)
        )
        if not offline_algorithms.strip():
            extra = [
                f"--{name.replace('_', '-')}"
                for name, value, default in (
                    ("qualities", qualities, QUALITIES),
                    ("offline_seeds", offline_seeds, ""),
                    ("offline_steps", offline_steps, 0),
                    ("offline_set", offline_set, ()),
                    ("collect_set", collect_set, ()),
                    ("offline_mix", offline_mix, ()),
                )
                if value != default
            ]
            if extra:
                raise SlateRLError(
                    f"{', '.join(extra)}: options of the offline grid, which --offline-algorithms turns on "
                    f"(e.g. --offline-algorithms bc,iql)"
                )
            return None
        grid = cls(
            _algorithms(offline_algorithms),
            _names(qualities, "--qualities"),
            parse_seeds(offline_seeds) if offline_seeds.strip() else list(cfg.seeds),
            int(offline_steps),
            pipeline.parse_sweep(offline_set, "--offline-set"),
            {name: values[0] for name, values in _single(collect_set, "--collect-set").items()},
            {**MIXES, **_mixes(offline_mix)},
            {
                "offline_algorithms": offline_algorithms,
                "qualities": qualities,
                "offline_seeds": offline_seeds,
                "offline_steps": str(offline_steps),
                "offline_set": ",".join(offline_set),
                "collect_set": ",".join(collect_set),
                "offline_mix": ",".join(offline_mix),
            },
        )
        grid.check(cfg)
        return grid

    @classmethod
    def from_params(cls, cfg: PipelineConfig, params: dict[str, str]) -> OfflineGrid | None:
        """The grid a pipeline run logged (None when it ran none)."""
        if not params.get("offline_algorithms"):
            return None
        return cls.resolve(
            cfg,
            params["offline_algorithms"],
            params.get("qualities", QUALITIES),
            params.get("offline_seeds", ""),
            int(params.get("offline_steps") or 0),
            *((params[name],) if params.get(name) else () for name in ("offline_set", "collect_set", "offline_mix")),
        )

    def params(self) -> dict[str, str]:
        return {**self.given, "offline_seeds_resolved": describe(self.seeds)}

    # ------------------------------------------------------------------------------------------------ checks
    def check(self, cfg: PipelineConfig) -> None:
        """Everything the grid's jobs will be given, checked before any of them runs."""
        if self.steps < 0:
            raise SlateRLError(f"--offline-steps must be a positive number of gradient steps (got {self.steps})")
        if any(len(values) > 1 for values in cfg.env_params.values()):
            raise SlateRLError(
                "the offline grid collects on one simulator per environment (that of the chosen policies): give "
                "each --env-param one value with --offline-algorithms"
            )
        for quality in self.qualities:
            if quality not in models.ALIASES and quality not in self.mixes:
                raise SlateRLError(
                    f"--qualities {quality}: not a quality; choose among {', '.join(models.ALIASES)} (registry "
                    f"aliases) and the mixes {', '.join(self.mixes)} (name more with --offline-mix NAME=RECIPE)"
                )
        self._check_collect(cfg)
        self._check_overrides(cfg)

    def _check_collect(self, cfg: PipelineConfig) -> None:
        fields = {f.name for f in dataclasses.fields(CollectConfig)} - {"env", "preset"}
        for name in self.collect:
            if name in COLLECT_SET_BY_GRID or name in NOT_SETTABLE:
                raise SlateRLError(
                    f"--collect-set {name}=...: the grid sets {name} itself (the datasets come from --qualities "
                    "and --offline-mix)"
                )
            if name not in fields:
                valid = sorted(fields - set(COLLECT_SET_BY_GRID) - set(NOT_SETTABLE))
                raise SlateRLError(f"--collect-set {name}: not a collect option; valid: {', '.join(valid)}")
        for quality in dict.fromkeys([*self.qualities, *self.mixes]):  # every mix named, even unused
            parts = self.collect_config(cfg, cfg.envs[0], quality).parts()
            unknown = [part.policy for part in parts if part.policy not in models.ALIASES]
            if unknown:
                raise SlateRLError(
                    f"--offline-mix {quality}: its parts name {', '.join(unknown)}; a mix of the grid plays the "
                    f"policies of the aliases {', '.join(models.ALIASES)}"
                )

    def _check_overrides(self, cfg: PipelineConfig) -> None:
        options = _option_fields()
        hyper = {name for algorithm in self.algorithms for name in agent_defaults(algorithm)}
        for name in self.overrides:
            if name == "steps":
                raise SlateRLError("--offline-set steps=...: give the gradient steps with --offline-steps")
            if name in SET_BY_GRID or name in NOT_SETTABLE:
                raise SlateRLError(f"--offline-set {name}=... is not allowed: the grid sets {name} itself")
            if name not in options | hyper:
                raise SlateRLError(
                    f"--offline-set {name}: not a train_offline option nor a hyper-parameter of "
                    f"{', '.join(self.algorithms)}; valid: {', '.join(sorted(options | hyper))}"
                )
        rankers = self.overrides.get("ranker", [RANKER])
        if "gems" in rankers:
            self._check_gems_ranker(cfg)
        steps = {"steps": self.steps} if self.steps else {}
        for algorithm in self.algorithms:  # every value in range (the algorithm's own checks)
            chosen, agent = self.split(algorithm)
            for values, hyper_values in itertools.product(
                pipeline._combinations(chosen), pipeline._combinations(agent)
            ):
                TrainOfflineConfig.resolve(
                    cfg.envs[0], cfg.preset, algorithm=algorithm, agent=hyper_values or None, **steps, **values
                )

    def _check_gems_ranker(self, cfg: PipelineConfig) -> None:
        """ranker=gems acts through the GeMS of the dataset's policies: the chosen policies must act through one,
        and a dataset must hold a learned policy's episodes."""
        method = cfg.select_method
        if method and Need.GEMS not in get_method(method).needs:
            raise SlateRLError(
                f"--offline-set ranker=gems acts through the GeMS of the collecting policies, but they come from "
                f"{method}, which acts through none: select from sac_gems, or use ranker=gems_offline or topk_ideal"
            )
        for quality in self.qualities:
            parts = self.collect_config(cfg, cfg.envs[0], quality).parts()
            if all(part.policy == "random" for part in parts):
                raise SlateRLError(
                    f"--offline-set ranker=gems: the {quality} dataset holds only the random policy's episodes, "
                    "which act through no GeMS; use ranker=gems_offline or topk_ideal"
                )

    # ------------------------------------------------------------------------------------------------ the jobs
    def split(self, algorithm: str) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
        """The values of `algorithm`'s runs: (train_offline options with the grid's ranker, its hyper-parameters)."""
        hyper = agent_defaults(algorithm)
        options = {"ranker": [RANKER], **{k: v for k, v in self.overrides.items() if k in _option_fields()}}
        return options, {k: v for k, v in self.overrides.items() if k in hyper and k not in options}

    def collect_config(self, cfg: PipelineConfig, env: str, quality: str) -> CollectConfig:
        what = {"quality": quality} if quality in models.ALIASES else {"mix": self.mixes[quality], "name": quality}
        config = CollectConfig.resolve(
            env, cfg.preset, **what, **self.collect, **pipeline._env_values(cfg, CollectConfig, _env_params(cfg))
        )
        assert isinstance(config, CollectConfig)
        return config

    def aliases(self, cfg: PipelineConfig) -> set[str]:
        """The registry aliases the grid's datasets play."""
        return {part.policy for q in self.qualities for part in self.collect_config(cfg, cfg.envs[0], q).parts()}


def _option_fields() -> set[str]:
    return (
        {f.name for f in dataclasses.fields(TrainOfflineConfig)} - {"env", "preset"} - set(SET_BY_GRID + NOT_SETTABLE)
    )


def _algorithms(text: str) -> list[str]:
    known = list(method_ids("offline"))
    if text.strip() == "all":
        return known
    chosen = _names(text, "--offline-algorithms")
    for algorithm in chosen:
        if algorithm not in known:
            raise SlateRLError(f"--offline-algorithms {algorithm}: unknown algorithm; choose among {', '.join(known)}")
    return chosen


def _names(text: str, what: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise SlateRLError(f"{what} is empty; give a comma-separated list")
    if len(set(names)) != len(names):
        raise SlateRLError(f"{what} {text!r} names one twice")
    return names


def _single(items: tuple[str, ...], what: str) -> dict[str, list[Any]]:
    values = pipeline.parse_sweep(items, what)
    for name, chosen in values.items():
        if len(chosen) != 1:
            raise SlateRLError(f"{what} {name}: takes one value (the grid sweeps only --offline-set values)")
    return values


def _mixes(items: tuple[str, ...]) -> dict[str, str]:
    """'NAME=RECIPE' items (a recipe as collect's --mix takes it) -> {NAME: RECIPE}."""
    mixes: dict[str, str] = {}
    for part in (p for item in items for p in _ASSIGNMENT.split(item) if p.strip()):
        name, sep, recipe = (s.strip() for s in part.partition("="))
        if not sep or not re.fullmatch(r"[A-Za-z_]\w*", name) or not recipe:
            raise SlateRLError(
                f"--offline-mix {part!r} must look like NAME=RECIPE, e.g. b3=expert:0.5,random:0.5:0.0 (the recipe "
                "as collect's --mix takes it)"
            )
        if name in models.ALIASES or name in mixes:
            raise SlateRLError(f"--offline-mix {name}: the name of an alias or of another mix; choose another")
        mixes[name] = recipe
    return mixes


def _env_params(cfg: PipelineConfig) -> dict[str, Any]:
    """The simulator overrides of the grid's one simulator per environment."""
    return {name: values[0] for name, values in cfg.env_params.items()}


def check_aliases(cfg: PipelineConfig) -> None:
    """Without --select-policies, the datasets play the aliases the registry holds: each must be set."""
    if cfg.offline is None or cfg.select_policies:
        return
    wanted = cfg.offline.aliases(cfg)
    for env in cfg.envs:
        missing = sorted(wanted - set(models.aliases(env)))
        if missing:
            raise SlateRLError(
                f"the offline grid collects from the aliases {', '.join(sorted(wanted))}, but {env} has no "
                f"{', '.join(missing)}: pass --select-policies FRACTION to choose them after training, or set them "
                f"with `slate-rl registry select` / `registry promote`"
            )


def plan(cfg: PipelineConfig, store: Any) -> list[tuple[str, list[Job]]]:
    """The offline grid's jobs in their phases (collection; offline GeMS; offline training), each with its state."""
    grid = cfg.offline
    assert grid is not None
    phases: list[dict[str, Job]] = [{}, {}, {}]
    env_params = _env_params(cfg)
    steps = {"steps": grid.steps} if grid.steps else {}

    def add(phase: int, job: Job) -> None:
        phases[phase].setdefault(job.name, store.locate(job))

    for env in cfg.envs:
        registered = models.aliases(env)
        env_args = pipeline._env_args(cfg, TrainOfflineConfig, env_params)
        for quality in grid.qualities:
            data_cfg = grid.collect_config(cfg, env, quality)
            versions = [registered.get(part.policy, "") for part in data_cfg.parts()]
            data_keys = (collect.key(data_cfg, versions),) if all(versions) else ()
            what = ["--quality", quality] if quality in models.ALIASES else ["--mix", grid.mixes[quality]]
            add(
                0,
                pipeline.Job(
                    collect.STAGE,
                    f"collect/{env}/{quality}",
                    [
                        "collect",
                        "--env",
                        env,
                        "--preset",
                        cfg.preset,
                        *what,
                        *(["--name", quality] if quality not in models.ALIASES else []),
                        *pipeline._option_args(grid.collect),
                        *pipeline._env_args(cfg, CollectConfig, env_params),
                    ],
                    data_keys,
                    note="" if data_keys else "after policy selection",
                ),
            )
            data = store.finished(collect.STAGE, data_keys) if data_keys else None
            data_run = data.info.run_id if data is not None else ""
            _add_gems_job(cfg, env, quality, data_run, env_params, lambda job: add(1, job))
            for algorithm in grid.algorithms:
                options, hyper = grid.split(algorithm)
                swept = {k for k, v in {**options, **hyper}.items() if len(v) > 1}
                for seed in grid.seeds:
                    for chosen, agent in itertools.product(
                        pipeline._combinations(options), pipeline._combinations(hyper)
                    ):
                        run_cfg = TrainOfflineConfig.resolve(
                            env,
                            cfg.preset,
                            algorithm=algorithm,
                            seed=seed,
                            dataset=data_run,
                            agent=agent or None,
                            **steps,
                            **chosen,
                            **pipeline._env_values(cfg, TrainOfflineConfig, env_params),
                        )
                        assert isinstance(run_cfg, TrainOfflineConfig)
                        values = {**chosen, **agent}
                        label = ", ".join(f"{k}={format_param(values[k])}" for k in values if k in swept)
                        add(
                            2,
                            pipeline.Job(
                                train_offline.STAGE,
                                f"{algorithm}/{env}/{quality}/seed{seed}" + (f" [{label}]" if label else ""),
                                [
                                    "train-offline",
                                    "--env",
                                    env,
                                    "--preset",
                                    cfg.preset,
                                    "--algorithm",
                                    algorithm,
                                    "--seed",
                                    str(seed),
                                    "--dataset",
                                    data_run,
                                    *pipeline._option_args({**steps, **chosen}),
                                    *[a for k, v in agent.items() for a in ("--set", f"{k}={json.dumps(v)}")],
                                    *env_args,
                                    "--threads",  # one per job: the pool runs jobs side by side
                                    "1",
                                ],
                                train_offline.lookup_keys(run_cfg) if data_run else (),
                            ),
                        )
    return list(zip(PHASES, [list(jobs.values()) for jobs in phases], strict=True))


def _add_gems_job(
    cfg: PipelineConfig, env: str, quality: str, data_run: str, env_params: dict[str, Any], add: Any
) -> None:
    """The GeMS pretrained on a dataset, for the runs that act through one (ranker gems_offline): the one the
    train_offline runs find by lineage."""
    assert cfg.offline is not None
    if RANKER not in cfg.offline.overrides.get("ranker", [RANKER]):
        return
    gems_cfg = PretrainGemsConfig.resolve(env, cfg.preset, **pipeline._env_values(cfg, PretrainGemsConfig, env_params))
    add(
        pipeline.Job(
            pretrain_gems.STAGE,
            f"gems/{env}/{quality}",
            [
                "pretrain-gems",
                "--env",
                env,
                "--preset",
                cfg.preset,
                "--dataset",
                f"runs:/{data_run}/{collect.ARTIFACT}",
                *pipeline._env_args(cfg, PretrainGemsConfig, env_params),
            ],
            on_dataset.lookup_keys(pretrain_gems.STAGE, gems_cfg, data_run) if data_run else (),
        )
    )


def report_inputs(cfg: PipelineConfig) -> compare_offline.OfflineInputs | None:
    """The offline tables' inputs for the pipeline's report: the finished train_offline runs of its environments
    and algorithms (None without an offline grid)."""
    if cfg.offline is None:
        return None
    return compare_offline.gather(cfg.envs, cfg.preset, algorithms=cfg.offline.algorithms)
