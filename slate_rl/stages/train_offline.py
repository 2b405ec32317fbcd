"""Stage `train_offline`: an offline algorithm (BC, TD3+BC, IQL, CQL) trained on a collected dataset, validated and
tested in the simulator with the online protocol's users, scored against the dataset's reference returns, and its
best policy registered; resumable into the same run after a kill.

What it acts on: the collect run given as `dataset`, or the newest finished collect run of `quality` on `env` made on
the same simulator; the ranker `gems` (the GeMS the dataset's policies acted through, found by lineage),
`gems_offline` (a GeMS pretrained on the dataset itself, found or pretrained as a child run) or `topk_ideal`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from slate_rl import atomic
from slate_rl.agents.export import policy_payload
from slate_rl.agents.methods import build_agent
from slate_rl.data.loading import load_offline
from slate_rl.data.offline import OfflineEpisodes
from slate_rl.devices import DEVICE_TAG, resolve_device
from slate_rl.envs.evaluate import evaluate
from slate_rl.envs.policies import RandomPolicy
from slate_rl.envs.randomness import DEFAULT_SIM_SEED
from slate_rl.envs.spec import EnvSpec
from slate_rl.envs.topicrec import TopicRec
from slate_rl.errors import SlateRLError
from slate_rl.methods import get_method, method_ids
from slate_rl.offline.actions import embedding_labels, encoder_labels, normalise
from slate_rl.offline.common import OfflineAgent
from slate_rl.offline.evaluation import behaviour, normalised_score
from slate_rl.offline.training import Evaluation, OfflineData, OfflineTrainer, Schedule
from slate_rl.progress import Progress
from slate_rl.rankers.base import SlateDecoder
from slate_rl.rankers.decoders import GeMSDecoder, TopKDecoder
from slate_rl.reporting.figures import plot_run_curve
from slate_rl.stage_configs import PretrainGemsConfig, TrainOfflineConfig
from slate_rl.stages import environment, pretrain_gems
from slate_rl.tracking import models
from slate_rl.tracking.lineage import (
    LINEAGE_TAG,
    artifact_dir,
    get_finished_run,
    get_unfinished_run,
    lineage_key,
    parse_run_uri,
)
from slate_rl.tracking.runs import RESUME_FILE, RESUME_PATH, StageRun, active_experiment_ids, stage_run

STAGE = "train_offline"
COLLECT = "collect"
CONFIG_FILE = "config.json"
VALIDATION_SIM_SEED = DEFAULT_SIM_SEED + 1  # the validation users: a stream of their own, the same at every evaluation
NOT_IDENTITY_FIELDS = ("register", "allow_env_mismatch", "item_embeddings", "env_params", "quality", "dataset")
log = logging.getLogger("slate_rl")


@dataclass
class Actions:
    """The ranker the agent acts through, the dataset's normalised action labels (E, T, A), where they come from,
    and the GeMS run of the ranker ('' for TopK)."""

    decoder: SlateDecoder
    labels: torch.Tensor
    source: str
    gems_run: str = ""


def run(
    cfg: TrainOfflineConfig,
    parent: StageRun | None = None,
    experiment_name: str | None = None,
    resume_run: str | None = None,
    device: str = "cpu",
) -> str:
    """Train, validate, test and register inside an MLflow run; returns the run id.

    resume_run: continue that (killed or failed) run from its last checkpoint; `cfg` must be `resumable(resume_run)`.
    device: where the dataset's tensors, the agent and the simulators live ('cpu', 'cuda' or 'cuda:K'; tag `device`).
    """
    on = resolve_device(device)
    with stage_run(
        STAGE,
        run_name=f"{cfg.algorithm}/{cfg.env}/seed{cfg.seed}",
        parent=parent,
        experiment_name=experiment_name,
        run_id=resume_run,
        tags={
            "env": cfg.env,
            "method": cfg.algorithm,
            "algorithm": cfg.algorithm,
            "seed": cfg.seed,
            "preset": cfg.preset,
            "family": "offline",
            "ranker": cfg.ranker,
            DEVICE_TAG: str(on),
            "threads": torch.get_num_threads(),
        },
    ) as mlrun:
        spec = environment.spec_of(cfg)
        if resume_run is None:
            # The params are the inputs as given (as `mlflow run` logs them too); the tags dataset_run and
            # dataset_quality name the dataset they resolved to and what it collected.
            mlrun.log_params(cfg.as_params())
            environment.log_spec(mlrun, spec)
        dataset_run = resolve_dataset(cfg, spec, mlrun)
        quality = MlflowClient().get_run(dataset_run).data.tags.get("quality", "")
        cfg = dataclasses.replace(cfg, dataset=dataset_run)
        mlrun.set_tags(
            {
                "dataset_run": dataset_run,
                "dataset_quality": quality,
                "upstream.dataset": f"runs:/{dataset_run}/dataset",
                LINEAGE_TAG: lineage_key(STAGE, identity(cfg, spec)),
            }
        )
        if resume_run is None:
            _log_json(mlrun, {"config": dataclasses.asdict(cfg)}, CONFIG_FILE)
        episodes = load_offline(dataset_run)
        assert isinstance(episodes, OfflineEpisodes)
        env = environment.make_env(cfg, device=on)
        actions = resolve_actions(cfg, dataset_run, episodes, env, mlrun)
        gems = actions.decoder if isinstance(actions.decoder, GeMSDecoder) else None
        agent = build_agent(cfg.algorithm, env, cfg.seed, gems_decoder=gems, overrides=cfg.agent or None)
        assert isinstance(agent, OfflineAgent)
        data = OfflineData(episodes.slates, episodes.clicks, actions.labels, agent.config.reward_scale, on)
        session = _Session(cfg, mlrun, env, agent)
        trainer = OfflineTrainer(
            agent,
            data,
            environment.make_env(cfg, sim_seed=VALIDATION_SIM_SEED, device=on),
            env,
            Schedule(
                steps=cfg.steps,
                eval_every=cfg.eval_every,
                save_every=cfg.save_every,
                val_episodes=cfg.val_episodes,
                test_episodes=cfg.test_episodes,
            ),
            on_evaluation=session.on_evaluation,
            on_checkpoint=session.on_checkpoint,
        )
        if resume_run is not None:
            session.resume(trainer)
        with Progress(cfg.steps, f"{STAGE} {cfg.algorithm}/{cfg.env}", unit="steps") as progress:
            progress.done = trainer.step
            while not trainer.done:
                before = trainer.step
                trainer.fit(cfg.eval_every)
                progress.advance(trainer.step - before)
        session.finish(trainer, references(episodes, env, cfg), quality, dataset_run)
        return mlrun.run_id


def identity(cfg: TrainOfflineConfig, spec: EnvSpec) -> dict[str, Any]:
    """What determines a run's outcome (its lineage key): the dataset run, the environment spec and the fields that
    differ from their defaults."""
    return {"dataset_run": cfg.dataset, **cfg.changed_fields(exclude=NOT_IDENTITY_FIELDS), **spec.as_params()}


def lookup_keys(cfg: TrainOfflineConfig) -> tuple[str, ...]:
    """The lineage key of a run on the dataset `cfg.dataset` (a collect run id) with this configuration."""
    return (lineage_key(STAGE, identity(cfg, environment.spec_of(cfg))),)


def resumable(run_id: str) -> TrainOfflineConfig:
    """The configuration of a train_offline run that can be resumed (it exists and did not finish)."""
    run = get_unfinished_run(run_id, STAGE)
    try:
        saved = json.loads(artifact_dir(run, CONFIG_FILE).read_text())
    except SlateRLError as exc:
        raise SlateRLError(
            f"run {run_id} has no {CONFIG_FILE}: it stopped before its configuration was saved; start a new run"
        ) from exc
    config = saved["config"]
    cfg = TrainOfflineConfig.resolve(config.pop("env"), config.pop("preset"), **config)
    assert isinstance(cfg, TrainOfflineConfig)
    return cfg


def recorded_threads(run_id: str) -> int:
    """The intra-op thread count a run trained with (its tag `threads`; 0 where it has none): a resumed run repeats
    an uninterrupted one bit for bit only with the same count."""
    return int(MlflowClient().get_run(run_id).data.tags.get("threads") or 0)


# ---------------------------------------------------------------------------------------------------- the dataset
def resolve_dataset(cfg: TrainOfflineConfig, spec: EnvSpec, mlrun: StageRun) -> str:
    """The collect run to learn from: `cfg.dataset` (checked to be a finished collect run of this simulator), or
    the newest finished collect run of `cfg.quality` on `cfg.env` made on this simulator."""
    if cfg.dataset:
        run_id, _ = parse_run_uri(cfg.dataset)
        get_finished_run(run_id, COLLECT)
        environment.check_upstream(spec, run_id, "dataset", cfg.allow_env_mismatch, mlrun)
        return run_id
    runs = collect_runs(cfg.env)
    of_quality = [run for run in runs if run.data.tags.get("quality") == cfg.quality]
    for run in of_quality:
        if not spec.differences(environment.recorded_spec(run)):
            log.info("%s: dataset %s (%s, newest of this simulator)", STAGE, run.info.run_id, cfg.quality)
            return run.info.run_id
    if of_quality:
        differences = spec.differences(environment.recorded_spec(of_quality[0]))
        listing = "; ".join(f"{name} = {there!r} there, {here!r} here" for name, here, there in differences)
        raise SlateRLError(
            f"the {len(of_quality)} finished collect run(s) of quality {cfg.quality!r} on {cfg.env} were made on "
            f"another simulator (the newest: {listing}); collect one on this simulator, or pass --dataset RUN_ID "
            "--allow-env-mismatch true"
        )
    counts = collections.Counter(run.data.tags.get("quality", "?") for run in runs)
    existing = ", ".join(f"{name} ({count} run{'s' * (count > 1)})" for name, count in sorted(counts.items()))
    raise SlateRLError(
        f"no finished collect run of quality {cfg.quality!r} on {cfg.env}; collected datasets on {cfg.env}: "
        f"{existing or 'none'}. Collect one first, e.g. `slate-rl collect --env {cfg.env} --quality {cfg.quality}`"
    )


def collect_runs(env: str) -> list[Run]:
    """The finished collect runs of `env` in every experiment, newest first."""
    client = MlflowClient()
    experiments = active_experiment_ids(client)
    if not experiments:
        return []
    return list(
        client.search_runs(
            experiments,
            filter_string=f"tags.stage = '{COLLECT}' and tags.env = '{env}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
        )
    )


# ---------------------------------------------------------------------------------------------------- the actions
def resolve_actions(
    cfg: TrainOfflineConfig, dataset_run: str, episodes: OfflineEpisodes, env: TopicRec, mlrun: StageRun
) -> Actions:
    """The ranker of `cfg.ranker` and the dataset's action labels in its box (see `slate_rl.offline.actions`)."""
    if cfg.ranker == "topk_ideal":
        decoder: SlateDecoder = TopKDecoder(env.item_embeddings, env.slate_size)
        raw, source = embedding_labels(env.item_embeddings, episodes.slates), "mean item embedding of the slate"
        gems_run = ""
    else:
        if cfg.ranker == "gems":
            gems_run = collecting_gems(episodes)
        else:
            gems_cfg = cast(
                PretrainGemsConfig,
                PretrainGemsConfig.resolve(
                    cfg.env,
                    cfg.preset,
                    env_params=cfg.env_params or None,
                    item_embeddings=cfg.item_embeddings or None,
                    allow_env_mismatch=cfg.allow_env_mismatch or None,
                ),
            )
            gems_run = pretrain_gems.find_or_pretrain(gems_cfg, dataset_run, mlrun, str(env.device))
        payload = pretrain_gems.load_payload(gems_run)
        decoder = GeMSDecoder.from_payload(payload["decoder"])
        stored = episodes.actions
        if cfg.ranker == "gems" and stored is not None and stored.shape[-1] == decoder.action_dim:
            raw, source = torch.from_numpy(stored), "latent actions stored by the collecting policy"
        else:
            raw = encoder_labels(gems_encoder(payload), episodes.slates, episodes.clicks, cfg.label_clicks == "zero")
            source = f"GeMS encoder mean ({cfg.label_clicks} clicks)"
        mlrun.set_tags({"upstream.gems": f"runs:/{gems_run}/{pretrain_gems.ARTIFACT}"})
    labels, outside = normalise(raw, decoder)
    mlrun.set_tags({"action_labels": source})
    mlrun.log_metrics({"labels/outside_box_share": outside})
    log.info("%s: action labels: %s (%.1f%% of components outside the ranker's box)", STAGE, source, 100 * outside)
    return Actions(decoder, labels, source, gems_run)


def collecting_gems(episodes: OfflineEpisodes) -> str:
    """The GeMS run every learned policy of the dataset acted through (baseline sources, e.g. Random, act through
    none: their episodes are relabelled by its encoder); refuses a dataset without one, or with several."""
    sources = episodes.metadata.get("sources", {})
    baselines = set(method_ids("baseline"))
    learned = {name: info for name, info in sources.items() if info.get("method") not in baselines}
    if not learned:
        raise SlateRLError(
            f"ranker=gems acts through the GeMS of the dataset's policies, but its sources ({', '.join(sources)}) "
            "are baselines that act through none; use --ranker gems_offline or topk_ideal"
        )
    client = MlflowClient()
    gems_of: dict[str, str] = {}
    for name, info in learned.items():
        reference = client.get_run(info["run_id"]).data.tags.get("upstream.gems", "") if info.get("run_id") else ""
        if not reference:
            raise SlateRLError(
                f"ranker=gems acts through the GeMS of the dataset's policies, but source {name!r} "
                f"({info.get('method', '?')}, version {info.get('model_version', '?')}) acted through none; use "
                "--ranker gems_offline or topk_ideal"
            )
        gems_of[name] = parse_run_uri(reference)[0]
    if len(set(gems_of.values())) > 1:
        listing = ", ".join(f"{name}: {run}" for name, run in gems_of.items())
        raise SlateRLError(
            f"the dataset's sources acted through different GeMS runs ({listing}); ranker=gems needs one shared "
            "GeMS: use --ranker gems_offline or topk_ideal, or mix sources trained on one GeMS"
        )
    return next(iter(gems_of.values()))


def gems_encoder(payload: dict[str, Any]) -> Any:
    """The `encode` of the GeMS VAE of a pretrain_gems payload (in eval mode)."""
    from slate_rl.rankers.gems import GeMS

    vae = GeMS(**payload["hparams"])
    vae.load_state_dict(payload["vae"])
    return vae.eval().encode


# ---------------------------------------------------------------------------------------------------- scores
@dataclass
class References:
    """The returns a score is normalised with, and where they come from."""

    random: float
    expert: float
    note: str


def references(episodes: OfflineEpisodes, env: TopicRec, cfg: TrainOfflineConfig) -> References:
    """The dataset's recorded reference returns; where it lacks one: for random, the random policy on the test
    users; for expert, the registered expert's test return, else the dataset's best source mean return."""
    recorded = episodes.metadata.get("reference_scores", {})
    notes = []
    random = recorded.get("random")
    if random is None:
        simulator = TopicRec(env.params, env.item_embeddings, name=env.name)
        policy = RandomPolicy(env.num_items, env.slate_size, seed=cfg.seed)
        random = evaluate(simulator, policy, cfg.test_episodes, reseed=True).mean
        notes.append("random: the random policy on the test users (the dataset records none)")
    expert = recorded.get("expert")
    if expert is None:
        registered = (
            models.get_version(cfg.env, "expert").tags.get("test_return", "")
            if "expert" in models.aliases(cfg.env)
            else ""
        )
        if registered:
            expert = float(registered)
            notes.append(f"expert: test return of slate-rl.{cfg.env}@expert now (the dataset records none)")
        else:
            by_source = episodes.return_stats()["by_source"]
            name = max(by_source, key=lambda key: by_source[key]["mean"])
            expert = by_source[name]["mean"]
            notes.append(f"expert: mean return of the dataset's best source, {name!r} (no expert reference exists)")
    if not expert > random:
        notes.append(
            f"no normalised score: the expert reference ({expert:.2f}) does not exceed the random one ({random:.2f}); "
            f"register an expert (`slate-rl registry promote {cfg.env} VERSION --as expert`) to score against it"
        )
        log.warning("%s: %s", STAGE, notes[-1])
    return References(float(random), float(expert), "; ".join(notes) or "recorded in the dataset")


def result_line(metrics: dict[str, float], test_episodes: int) -> str:
    """The end-of-run summary."""
    references = (
        f"random {metrics['reference_return_random']:.2f} = 0, expert {metrics['reference_return_expert']:.2f} = 100"
    )
    score = (
        f"normalised score undefined ({references}: the expert reference does not exceed the random one)"
        if math.isnan(metrics["normalised_score_best"])
        else f"normalised score {metrics['normalised_score_best']:.1f} (last {metrics['normalised_score_last']:.1f}; "
        f"{references})"
    )
    return (
        f"test return {metrics['test_return']:.2f} ± {metrics['test_return_stderr']:.2f} over {test_episodes} test "
        f"users (best validation weights; last weights {metrics['test_return_last']:.2f}); {score}"
    )


def _log_json(mlrun: StageRun, payload: dict[str, Any], name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mlrun.log_artifact(atomic.write_json(Path(tmp) / name, payload))


class _Session:
    """The run's side of the loop: metrics, the resume state, and the end of the run."""

    def __init__(self, cfg: TrainOfflineConfig, mlrun: StageRun, env: TopicRec, agent: OfflineAgent) -> None:
        self.cfg, self.mlrun, self.env, self.agent = cfg, mlrun, env, agent

    def on_evaluation(self, evaluation: Evaluation) -> None:
        returns = evaluation.returns
        mean, std = float(returns.mean()), float(returns.std())
        self.mlrun.log_metrics({"val_return": mean, "val_return_std": std, **evaluation.metrics}, step=evaluation.step)
        self.mlrun.flush()
        q = evaluation.metrics.get("diag/q_data")
        log.info(
            "%s: validation after %d steps: return %.2f (sd %.1f)%s",
            STAGE,
            evaluation.step,
            mean,
            std,
            "" if q is None else f", mean Q of the dataset's actions {q:.2f}",
        )

    def on_checkpoint(self, step: int, state: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            self.mlrun.replace_artifact(atomic.torch_save(state, Path(tmp) / RESUME_FILE), RESUME_PATH)
        log.info("%s: checkpoint after %d steps (resumable)", STAGE, step)

    def resume(self, trainer: OfflineTrainer) -> None:
        run = self.mlrun.client.get_run(self.mlrun.run_id)
        try:
            path = artifact_dir(run, f"{RESUME_PATH}/{RESUME_FILE}")
        except SlateRLError as exc:
            raise SlateRLError(
                f"run {self.mlrun.run_id} has no checkpoint to resume from (none was saved before it stopped; "
                f"checkpoints come every save_every={self.cfg.save_every} steps)"
            ) from exc
        trainer.load_state_dict(torch.load(path, map_location=self.env.device, weights_only=True))
        log.info("%s: resumed run %s at step %d", STAGE, self.mlrun.run_id, trainer.step)

    def payload(self, step: int, info: dict[str, Any]) -> dict[str, Any]:
        return policy_payload(
            self.agent, self.env, seed=self.cfg.seed, overrides=self.cfg.agent, episode=step, info=info
        )

    def finish(self, trainer: OfflineTrainer, refs: References, quality: str, dataset_run: str) -> None:
        cfg, mlrun, env = self.cfg, self.mlrun, self.env
        topics = env.item_topics.cpu().numpy()
        params = env.params.as_dict()
        results: dict[str, float] = {"reference_return_random": refs.random, "reference_return_expert": refs.expert}
        tested = {}
        for kind, weights in (("last", None), ("best", trainer.best_weights)):
            returns, slates, clicks = trainer.test(weights)
            tested[kind] = returns
            mean = float(returns.mean())
            results[f"test_return_{kind}"] = mean
            results[f"normalised_score_{kind}"] = normalised_score(mean, refs.random, refs.expert)
            prefix = "policy/" if kind == "best" else "policy_last/"
            results.update({prefix + k: v for k, v in behaviour(slates, clicks, env.num_items, topics, params).items()})
            if kind == "last":
                last_payload = self.payload(trainer.step, {"run_id": mlrun.run_id, "test_return": mean})
        best = tested["best"]
        results.update(
            test_return=results["test_return_best"],
            test_return_std=float(best.std()),
            test_return_stderr=float(best.std()) / len(best) ** 0.5,
            best_val_return=trainer.best_return,
            best_step=float(trainer.best_step or 0),
        )
        mlrun.log_metrics(results)
        mlrun.set_tags({"reference_returns": refs.note})
        best_step = trainer.best_step or trainer.step
        best_payload = self.payload(best_step, {"run_id": mlrun.run_id, "test_return": results["test_return"]})
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            rows = zip(best.tolist(), tested["last"].tolist(), strict=True)
            table = "user,best,last\n" + "".join(f"{i},{b:g},{last:g}\n" for i, (b, last) in enumerate(rows))
            mlrun.log_artifact(atomic.write_text(folder / "test_returns.csv", table), "test")
            for name, payload in (("best", best_payload), ("last", last_payload)):
                (folder / name).mkdir()
                mlrun.log_artifact(
                    atomic.torch_save(payload, folder / name / models.POLICY_FILE), f"checkpoints/{name}"
                )
            title = f"{get_method(cfg.algorithm).display} on {cfg.env} ({quality}), seed {cfg.seed}"
            curve = plot_run_curve(trainer.validations, folder / "learning_curve.png", title, "gradient step")
            mlrun.log_artifact(curve)
        log.info("%s: %s", STAGE, result_line(results, cfg.test_episodes))
        if not cfg.register:
            return
        path = models.log_policy(mlrun, best_payload, "best")
        version = models.register(
            cfg.env,
            mlrun.run_id,
            path,
            {
                "family": "offline",
                "method": cfg.algorithm,
                "algorithm": cfg.algorithm,
                "seed": cfg.seed,
                "episode": best_step,
                "checkpoint": "best",
                "val_return": trainer.best_return,
                "test_return": results["test_return"],
                "normalised_score": results["normalised_score_best"],
                "dataset_run": dataset_run,
                "dataset_quality": quality,
                "ranker": cfg.ranker,
                "run_id": mlrun.run_id,
                "preset": cfg.preset,
                "env": cfg.env,
                **EnvSpec.of(env).as_params(),
            },
        )
        mlrun.set_tags({"registered_version": version.version})
