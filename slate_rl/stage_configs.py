"""Typed configurations of the stages (light to import: `slate-rl --help` does not load torch).

Each config resolves as: the stage's defaults below, then the preset's section (experiments/<preset>.yaml), then the
values given on the command line; `validate` names the first value out of range.

Every stage that plays or learns from the simulator has the same environment fields: `env` (a preset environment),
`env_params` (simulator parameter overrides) and `item_embeddings` (a .pt / .npy table, or '' for the preset's);
together they give the run's environment spec (`slate_rl.envs.spec`). Those that use upstream runs also have
`allow_env_mismatch`, which lets an explicitly given upstream run of another simulator through (recorded as a tag).
"""

from __future__ import annotations

import dataclasses
from typing import Any, cast

from slate_rl import config
from slate_rl.config import StageConfig
from slate_rl.errors import SlateRLError
from slate_rl.methods import ONLINE_FAMILIES, Need, get_method, method_ids
from slate_rl.precision import check_precision
from slate_rl.protocol import Protocol
from slate_rl.seeds import MAX_SEED


@dataclasses.dataclass
class GenerateDatasetConfig(StageConfig):
    """Parameters of `generate_dataset` (defaults come from the preset)."""

    stage = "generate_dataset"
    n_sessions: int = 100_000
    epsilon: float = 0.5
    seed: int = 2754851
    sim_seed: int = 24321357327
    item_embeddings: str = ""  # '' = the table the environment preset names; else a .pt / .npy path
    chunk_size: int = 10_000
    env_params: dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        if int(self.n_sessions) <= 0:
            raise SlateRLError(f"n_sessions must be a positive number of sessions (got {self.n_sessions})")
        if not 0.0 <= float(self.epsilon) <= 1.0:
            raise SlateRLError(
                f"epsilon is the probability of a random slot and must lie in [0, 1] (got {self.epsilon})"
            )
        if int(self.chunk_size) <= 0:
            raise SlateRLError(f"chunk_size must be positive (got {self.chunk_size})")
        check_seed(self, "seed")
        check_seed(self, "sim_seed")
        check_env_params(self)


@dataclasses.dataclass
class PretrainGemsConfig(StageConfig):
    """Parameters of `pretrain_gems` (paper values by default; `epochs` comes from the preset)."""

    stage = "pretrain_gems"
    dataset: str = ""  # runs:/ reference of a generate_dataset run; '' = find or generate the preset's dataset
    item_embeddings: str = ""  # only to find / generate the dataset (the VAE learns its own item table)
    env_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    allow_env_mismatch: bool = False
    seed: int = 58407201
    latent_dim: int = 32
    lambda_kl: float = 1.0
    lambda_click: float = 0.5
    lambda_prior: float = 0.0
    epochs: int = 15
    batch_size: int = 256
    lr: float = 1e-3
    loss_convention: str = "reference"
    shuffle: bool = True
    bound_sessions: int = 1000
    precision: str = "fp32"  # or 'bf16': training's forward passes under bfloat16 autocast (slate_rl.precision)

    def validate(self) -> None:
        check_precision(self.precision)
        if int(self.latent_dim) < 1:
            raise SlateRLError(f"latent_dim must be >= 1 (got {self.latent_dim})")
        for name in ("lambda_kl", "lambda_click", "lambda_prior"):
            if float(getattr(self, name)) < 0:
                raise SlateRLError(f"{name} is a loss weight and must be >= 0 (got {getattr(self, name)})")
        for name in ("epochs", "batch_size", "bound_sessions"):
            if int(getattr(self, name)) < 1:
                raise SlateRLError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if not float(self.lr) > 0:
            raise SlateRLError(f"lr must be > 0 (got {self.lr})")
        if self.loss_convention not in ("reference", "standard"):
            raise SlateRLError(f"loss_convention must be 'reference' or 'standard' (got {self.loss_convention!r})")
        check_env_params(self)


@dataclasses.dataclass
class TrainMFConfig(StageConfig):
    """Parameters of `train_mf` (the reference's values; the step / time caps come from the preset)."""

    stage = "train_mf"
    dataset: str = ""
    item_embeddings: str = ""  # only to find / generate the dataset
    env_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    allow_env_mismatch: bool = False
    seed: int = 2022
    dim: int = 20
    lr: float = 1e-4
    batch_size: int = 256
    eval_every: int = 1000
    patience: int = 3
    max_steps: int = 0  # 0 = no cap (early stopping only)
    max_seconds: float = 0.0  # 0 = no cap
    reference_validation: bool = False  # the reference's re-keyed split and validation pass that trains
    save_every: int = 20_000  # training steps between resume states (0: none); not part of the model's identity

    def validate(self) -> None:
        if int(self.save_every) < 0:
            raise SlateRLError(f"save_every must be >= 0 (0: no resume state; got {self.save_every})")
        for name in ("dim", "batch_size", "eval_every", "patience"):
            if int(getattr(self, name)) < 1:
                raise SlateRLError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if not float(self.lr) > 0:
            raise SlateRLError(f"lr must be > 0 (got {self.lr})")
        if int(self.max_steps) < 0 or float(self.max_seconds) < 0:
            raise SlateRLError("max_steps and max_seconds must be >= 0 (0 means no cap)")
        check_env_params(self)


@dataclasses.dataclass
class TrainOnlineConfig(Protocol, StageConfig):
    """Parameters of `train_online`: the method, the protocol (the fields of `Protocol`, episode counts from the
    preset), the upstream runs (found or produced by lineage when empty) and agent hyper-parameter overrides.

    Two umbrellas switch the reference code's behaviours on (`resolve` spells out what they set, so the run's params
    show it): `reference_bugs` turns on every reference switch of the method's agent config (its
    `REFERENCE_SWITCHES`) and keeps slate-rl's protocol; `reference_parity` is reference_bugs plus
    `reference_protocol` (K = 1, no overlap). For Random and the short-term oracle, which have no agent config,
    they change nothing but the protocol fields (which those test-only methods do not use)."""

    stage = "train_online"
    method: str = "sac_gems"
    seed: int = 58407201
    item_embeddings: str = ""
    env_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    allow_env_mismatch: bool = False
    dataset: str = ""  # runs:/ of a generate_dataset run (for GeMS / MF); '' = the preset's, by lineage
    gems: str = ""  # runs:/ of a pretrain_gems run; '' = GeMS of this seed and setting, by lineage
    mf: str = ""  # runs:/ of a train_mf run; '' = by lineage
    mf_reference_validation: bool = False  # the MF table of an MF trained with the reference's validation
    latent_dim: int = 32
    lambda_kl: float = 1.0
    lambda_click: float = 0.5
    agent: dict[str, Any] = dataclasses.field(default_factory=dict)  # overrides of the method's hyper-parameters
    register: bool = True
    reference_bugs: bool = False
    reference_parity: bool = False

    @classmethod
    def resolve(cls, env: str, preset: str, **overrides: Any) -> TrainOnlineConfig:
        """The preset's values, then the given ones, with what the reference umbrellas imply filled in."""
        given = config.resolve(preset, cls.stage, overrides)  # None = not given
        return cast(TrainOnlineConfig, super().resolve(env, preset, **reference_settings(given)))

    def validate(self) -> None:
        get_method(self.method, ONLINE_FAMILIES)
        check_seed(self, "seed")
        Protocol.validate(self)
        if int(self.latent_dim) < 1 or float(self.lambda_kl) < 0 or float(self.lambda_click) < 0:
            raise SlateRLError("latent_dim must be >= 1 and the GeMS loss weights >= 0")
        check_agent_overrides(self.method, self.agent)
        if self.mf_reference_validation and Need.MF not in get_method(self.method).needs:
            raise SlateRLError(
                f"mf_reference_validation selects the MF item table of a method that uses one ("
                f"{', '.join(m for m in method_ids(ONLINE_FAMILIES) if Need.MF in get_method(m).needs)}); "
                f"{self.method} uses none: drop it"
            )
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        missing = sorted(
            name for name, value in flat(reference_settings(values)).items() if flat(values).get(name) != value
        )
        if missing:
            raise SlateRLError(
                f"the reference umbrellas set {', '.join(missing)}, which this configuration lacks; build it with "
                "TrainOnlineConfig.resolve, which fills them in"
            )
        check_env_params(self)


# What `reference_protocol` needs of the protocol.
REFERENCE_PROTOCOL = {"reference_protocol": True, "parallel_episodes": 1, "overlap_collection": False}
PROTOCOL_NOTE = "reference_parity = reference_bugs + reference_protocol: parallel_episodes 1, no overlap"


def reference_switches(method: str) -> tuple[str, ...]:
    """The reference-behaviour switches of `method`'s agent config (its `REFERENCE_SWITCHES`; () without one)."""
    config_class = get_method(method).load_config()
    return tuple(getattr(config_class, "REFERENCE_SWITCHES", ()))


def reference_settings(given: dict[str, Any]) -> dict[str, Any]:
    """`given` (train_online values; absent = not given) with what `reference_parity`, `reference_bugs` and
    `reference_protocol` imply filled in: reference_parity sets reference_bugs and reference_protocol,
    reference_bugs every reference switch of the method (`agent.<switch> = true`), reference_protocol K = 1 and
    no overlap. A value given against one of them is refused, naming both."""
    implied: dict[str, tuple[Any, str]] = {}  # field -> (value, the umbrella that sets it)
    if given.get("reference_parity"):
        implied.update({"reference_bugs": (True, "reference_parity"), "reference_protocol": (True, "reference_parity")})
    if given.get("reference_protocol") or "reference_protocol" in implied:
        why = "reference_protocol" if given.get("reference_protocol") else "reference_parity"
        implied.update({name: (value, why) for name, value in REFERENCE_PROTOCOL.items() if name not in implied})
    if given.get("reference_bugs") or "reference_bugs" in implied:
        why = "reference_bugs" if given.get("reference_bugs") else "reference_parity"
        method = given.get("method") or TrainOnlineConfig.method
        implied.update({f"agent.{switch}": (True, why) for switch in reference_switches(method)})
    if not implied:
        return given
    agent = dict(given.get("agent") or {})
    values = flat(given)
    conflicts = {
        f"{name.removeprefix('agent.')} = {_spelled(values[name])} was given, {why} sets {_spelled(value)}": why
        for name, (value, why) in implied.items()
        if name in values and values[name] != value
    }
    if conflicts:
        umbrellas = sorted(set(conflicts.values()))
        raise SlateRLError(
            f"conflicting train_online values: {'; '.join(conflicts)}; drop the given value or "
            f"{' and '.join(umbrellas)}" + ("" if umbrellas == ["reference_bugs"] else f" ({PROTOCOL_NOTE})")
        )
    result = {**given}
    for name, (value, _) in implied.items():
        if name.startswith("agent."):
            agent[name[len("agent.") :]] = value
        else:
            result[name] = value
    if agent:
        result["agent"] = agent
    return result


def flat(values: dict[str, Any]) -> dict[str, Any]:
    """Train_online values with the agent overrides as 'agent.<name>' entries."""
    agent = values.get("agent") or {}
    return {**{k: v for k, v in values.items() if k != "agent"}, **{f"agent.{k}": v for k, v in agent.items()}}


def _spelled(value: Any) -> str:
    """A value as the command line spells it (booleans in lower case)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_agent_overrides(method: str, overrides: dict[str, Any]) -> None:
    """Name an agent override (`--set`) that `method` does not take: a train_online option, a reference switch of
    another method (with the switches `method` has), or an unknown name (with the valid ones)."""
    from slate_rl.agents.config import with_overrides

    if not overrides:
        return
    known = agent_defaults(method)
    for name in sorted(set(overrides) - set(known)):
        if name in {f.name for f in dataclasses.fields(TrainOnlineConfig)}:
            raise SlateRLError(
                f"{name} is a train_online option, not a hyper-parameter of {method}: give it as "
                f"--{name.replace('_', '-')} VALUE (in a pipeline: --set {name}=VALUE)"
            )
        owners = [other for other in method_ids(ONLINE_FAMILIES) if name in reference_switches(other)]
        if owners:
            mine = reference_switches(method)
            raise SlateRLError(
                f"{name} is a reference switch of {', '.join(owners)}, not of {method}; "
                + (f"{method}'s reference switches: {', '.join(mine)}" if mine else f"{method} has none")
            )
    config_class = get_method(method).load_config()
    if config_class is None:
        raise SlateRLError(f"method {method!r} has no hyper-parameters to override (got {', '.join(overrides)})")
    with_overrides(config_class(), overrides)  # names the unknown ones with the valid ones


@dataclasses.dataclass
class TrainOfflineConfig(StageConfig):
    """Parameters of `train_offline`: the algorithm, its dataset (a collect run, or the newest of a quality), the
    ranker it acts through, the schedule (step counts from the preset) and hyper-parameter overrides."""

    stage = "train_offline"
    algorithm: str = "bc"
    dataset: str = ""  # a collect run (id or runs:/<id>); '' = the newest finished collect run of `quality`
    quality: str = "expert"  # what that run collected: an alias (expert, medium, random), a mix name, or 'policy'
    ranker: str = (
        "gems"  # gems (the collecting policy's GeMS), gems_offline (GeMS pretrained on the dataset), topk_ideal
    )
    label_clicks: str = "real"  # clicks the GeMS encoder sees when it relabels actions: real, or zero
    seed: int = 58407201
    steps: int = 20_000
    eval_every: int = 1_000
    save_every: int = 5_000
    val_episodes: int = 200
    test_episodes: int = 500
    item_embeddings: str = ""
    env_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    allow_env_mismatch: bool = False
    agent: dict[str, Any] = dataclasses.field(default_factory=dict)  # overrides of the algorithm's hyper-parameters
    register: bool = True

    def validate(self) -> None:
        from slate_rl.agents.config import with_overrides

        algorithms = method_ids("offline")
        if self.algorithm not in algorithms:
            raise SlateRLError(f"unknown algorithm {self.algorithm!r}; choose one of: {', '.join(algorithms)}")
        check_seed(self, "seed")
        for name in ("steps", "eval_every", "save_every", "val_episodes", "test_episodes"):
            if int(getattr(self, name)) < 1:
                raise SlateRLError(f"{name} must be a positive number (got {getattr(self, name)})")
        if self.ranker not in OFFLINE_RANKERS:
            raise SlateRLError(f"ranker must be one of {', '.join(OFFLINE_RANKERS)} (got {self.ranker!r})")
        if self.label_clicks not in LABEL_CLICKS:
            raise SlateRLError(f"label_clicks must be one of {', '.join(LABEL_CLICKS)} (got {self.label_clicks!r})")
        if not self.dataset and not self.quality:
            raise SlateRLError("give a dataset (a collect run) or the quality of the newest collected dataset to use")
        config_class = get_method(self.algorithm).load_config()
        if config_class is not None:  # every offline algorithm has one; its validate names a value out of range
            with_overrides(config_class(), self.agent).validate()
        check_env_params(self)


OFFLINE_RANKERS = ("gems", "gems_offline", "topk_ideal")
LABEL_CLICKS = ("real", "zero")


def agent_defaults(method: str) -> dict[str, Any]:
    """The hyper-parameters of `method`'s agent with their defaults ({} for a method without any): what an
    `agent` override (`--set`) can change, and what a run that logged no `agent.<name>` param ran with."""
    config_class = get_method(method).load_config()
    return dataclasses.asdict(config_class()) if config_class is not None else {}


@dataclasses.dataclass(frozen=True)
class CollectPart:
    """One source of a collected dataset: a registered version (alias or number), or a models:/ URI."""

    policy: str
    episodes: int
    epsilon_noise: float = 0.0


@dataclasses.dataclass
class CollectConfig(StageConfig):
    """Parameters of `collect`: one policy (`quality` alias or `policy` URI) or a `mix` of several; none of them
    given means the expert (alias `expert`)."""

    stage = "collect"
    quality: str = ""  # alias of the environment's registered model: expert, medium or random ('' and no other: expert)
    policy: str = ""  # any models:/slate-rl.<env>@alias or models:/slate-rl.<env>/<version>
    episodes: int = 10_000  # in a mix: the total, which the parts must add up to
    epsilon_noise: float = 0.0  # probability that a step's latent action gets Gaussian noise
    noise_scale: float = 0.3  # noise std as a fraction of the action box's half-range
    mix: str = ""  # "policy:share[:noise],...": shares are episode counts or fractions of `episodes`
    seed: int = 0
    format: str = "both"  # minari, npz or both
    oracle: bool = False  # sidecar with user states and bored topics
    relevances: bool = False  # sidecar with every item's relevance (large)
    batch_size: int = 10_000  # users simulated at once
    name: str = ""  # dataset name (default: the alias, 'policy' or 'mix')
    reference_episodes: int = 500  # episodes of the random policy for the reference score
    item_embeddings: str = ""  # the table of the simulator to collect on ('' = the preset's)
    env_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    allow_env_mismatch: bool = False  # play a registered policy on a simulator other than its own

    def parts(self) -> list[CollectPart]:
        """The sources to collect: the single policy, or the mix with its shares turned into episode counts."""
        if not self.mix:
            return [CollectPart(self.source(), int(self.episodes), float(self.epsilon_noise))]
        entries = []
        for item in self.mix.split(","):
            fields = [f.strip() for f in item.split(":")]
            try:
                if len(fields) not in (2, 3) or not fields[0]:
                    raise ValueError
                entries.append((fields[0], float(fields[1]), float(fields[2]) if len(fields) == 3 else 0.0))
            except ValueError as exc:
                raise SlateRLError(
                    f"mix part {item.strip()!r} must look like policy:share or policy:share:noise, "
                    "e.g. expert:4000:0.3 (a count) or expert:0.4:0.3 (a fraction)"
                ) from exc
        shares = [share for _, share, _ in entries]
        if all(share < 1 for share in shares):  # fractions of `episodes`
            if abs(sum(shares) - 1.0) > 1e-6:
                raise SlateRLError(f"the mix fractions add up to {sum(shares):g}, not 1")
            from slate_rl.data.mixing import split_counts

            counts = list(split_counts(int(self.episodes), {str(i): f for i, f in enumerate(shares)}).values())
        else:
            counts = [int(share) for share in shares]
            if any(c != s for c, s in zip(counts, shares, strict=True)) or sum(counts) != int(self.episodes):
                raise SlateRLError(
                    f"the mix counts {', '.join(f'{s:g}' for s in shares)} add up to {sum(shares):g} "
                    f"episodes, not episodes = {self.episodes}; give whole counts that add up, or "
                    "fractions"
                )
        return [CollectPart(name, count, noise) for (name, _, noise), count in zip(entries, counts, strict=True)]

    def source(self) -> str:
        """What is collected: the alias or URI given, 'mix', or the default, the expert."""
        return self.quality or self.policy or ("mix" if self.mix else "expert")

    def validate(self) -> None:
        chosen = [name for name in ("quality", "policy", "mix") if getattr(self, name)]
        if len(chosen) > 1:
            raise SlateRLError(
                "choose what to collect with one of quality (an alias), policy (a models:/ URI) or "
                f"mix (got {', '.join(chosen)}); with none, the expert is collected"
            )
        if self.quality and self.quality not in ("expert", "medium", "random"):
            raise SlateRLError(
                f"quality is an alias: expert, medium or random (got {self.quality!r}); "
                "give --policy for another version"
            )
        if int(self.episodes) < 1:
            raise SlateRLError(f"episodes must be >= 1 (got {self.episodes})")
        for part in self.parts():
            if part.episodes < 1:
                raise SlateRLError(f"mix part {part.policy} gets {part.episodes} episodes; every part needs >= 1")
            if not 0.0 <= part.epsilon_noise <= 1.0:
                raise SlateRLError(f"epsilon_noise is a probability and must lie in [0, 1] (got {part.epsilon_noise})")
        if not float(self.noise_scale) > 0:
            raise SlateRLError(f"noise_scale must be > 0 (got {self.noise_scale})")
        if self.format not in ("minari", "npz", "both"):
            raise SlateRLError(f"format must be minari, npz or both (got {self.format!r})")
        for name in ("batch_size", "reference_episodes"):
            if int(getattr(self, name)) < 1:
                raise SlateRLError(f"{name} must be >= 1 (got {getattr(self, name)})")
        check_env_params(self)


def check_seed(cfg: Any, name: str) -> None:
    """SlateRLError when the seed field `name` of a stage config lies outside [0, 2**63)."""
    if not 0 <= int(getattr(cfg, name)) <= MAX_SEED:
        raise SlateRLError(f"{name} must lie in [0, 2**63) (got {getattr(cfg, name)})")


def check_env_params(cfg: Any) -> None:
    """Name an unknown, mistyped or out-of-range simulator override of `cfg.env_params` (with the valid keys)."""
    from slate_rl.envs import env_params
    from slate_rl.envs.spec import TABLE_KEY

    if TABLE_KEY in cfg.env_params:
        raise SlateRLError(
            "item_embeddings is not an --env-param: give the table with --item-embeddings (a .pt / "
            ".npy file, or focused / diffuse)"
        )
    env_params(cfg.env, **cfg.env_params)
