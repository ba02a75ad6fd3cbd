"""The pipeline configuration: pydantic models loaded from YAML, overridable from the CLI.

Every field has a description (shown by ``raytag config-help``); unknown keys and bad
values raise :class:`ConfigError` with one line per problem naming the field, the value
and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from raytag.lm.config import LMConfig

PACKAGE_CONFIGS = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A user-facing configuration problem; the message says what to fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticConfig(_Section):
    num_nodes: int = Field(20_000, gt=10, description="Nodes in the generated graph.")
    num_communities: int = Field(60, gt=0, description="Planted overlapping communities (one task each).")
    avg_degree: float = Field(8.0, gt=0, description="Target mean degree.")
    seed: int = Field(0, description="Random seed of the generator.")


class DataConfig(_Section):
    format: Literal["dblp", "snap", "adjlist", "synthetic", "text"] = Field(
        "dblp",
        description="dblp: the vendored SNAP com-DBLP files; snap: `edges` edge list + `communities` file; "
        "adjlist: `adjacency` list + `labels` node-labels file; synthetic: planted-community generator; "
        "text: instruction tasks for a LoRA language model (see the `lm` section).",
    )
    edges: Optional[Path] = Field(None, description="Edge list (u v per line; tab/space/comma; # comments; .gz ok). format=snap.")
    communities: Optional[Path] = Field(None, description="Communities: one per line of node ids, or cdlib JSON. format=snap.")
    adjacency: Optional[Path] = Field(None, description="Adjacency list (node nbr nbr ... per line). format=adjlist.")
    labels: Optional[Path] = Field(None, description="Node labels (node label1 label2 ... per line). format=adjlist.")
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig, description="Generator settings. format=synthetic.")

    @model_validator(mode="after")
    def _files_for_format(self) -> "DataConfig":
        needed = {"snap": ("edges", "communities"), "adjlist": ("adjacency", "labels")}.get(self.format, ())
        missing = [name for name in needed if getattr(self, name) is None]
        if missing:
            raise ValueError(
                f"data.format={self.format} needs data.{' and data.'.join(missing)} (a file path); set it in the "
                f"config or with --set data.{missing[0]}=PATH"
            )
        return self


class TasksConfig(_Section):
    num_tasks: int = Field(100, ge=2, description="Use the top-n communities/labels by size as tasks.")
    regime: Literal["seeds", "balanced"] = Field(
        "seeds",
        description="seeds: subgraph of the chosen communities, few positive training seeds per task "
        "(where tasks interfere); balanced: members vs sampled non-members.",
    )
    seeds_per_task: int = Field(10, ge=1, description="seeds regime: positive training seeds per task.")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="seeds regime: fraction of members used for validation.")
    negative_fractions: tuple[float, float, float] = Field(
        (0.2, 0.2, 0.6), description="seeds regime: train/val/test split of non-members (must sum to 1)."
    )
    negative_ratio: float = Field(1.0, gt=0, description="balanced regime: sampled non-members per member.")
    max_positives_per_task: Optional[int] = Field(None, gt=0, description="balanced regime: cap on members per task.")
    negatives_per_split: int = Field(
        1000, gt=0,
        description="Negatives sampled per task and split (train, val) for gradients, estimation and fine-tune "
        "checks; weighted so losses stay unbiased.",
    )
    balance_classes: bool = Field(
        True,
        description="Weight each task's positives so both classes weigh the same in every loss (θ* training, "
        "fine-tunes, estimates). Unweighted, 10 seeds among ~26k negatives learn to answer 'no' "
        "(DBLP, 15 epochs: test AP 0.034 unweighted vs 0.160 balanced).",
    )
    seed: int = Field(0, description="Seed of the splits and negative samples.")

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> "TasksConfig":
        total = sum(self.negative_fractions)
        if abs(total - 1.0) > 1e-6 or min(self.negative_fractions) < 0:
            raise ValueError(
                f"tasks.negative_fractions={list(self.negative_fractions)} must be three non-negative numbers "
                f"summing to 1 (train, val, test), e.g. [0.2, 0.2, 0.6]"
            )
        return self


class FeaturesConfig(_Section):
    method: Literal["spectral", "fastrp"] = Field(
        "spectral", description="spectral: top eigenvectors of the normalized adjacency (default); fastrp: fast random projection."
    )
    dim: int = Field(128, gt=0, description="Embedding dimension before SIGN propagation.")
    hops: int = Field(2, ge=0, description="SIGN hops: features are [X, AX, ..., A^hops X].")
    seed: int = Field(0, description="Seed of the randomized eigensolver / projection.")


class ModelConfig(_Section):
    hidden_dims: list[int] = Field([256, 128], description="Hidden layer widths of the SIGN-MLP.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout between hidden layers.")

    @model_validator(mode="after")
    def _positive_widths(self) -> "ModelConfig":
        if not self.hidden_dims or min(self.hidden_dims) <= 0:
            raise ValueError(f"model.hidden_dims={self.hidden_dims} must be a non-empty list of positive widths, e.g. [256, 128]")
        return self


class TrainingConfig(_Section):
    epochs: int = Field(30, gt=0, description="Epochs of multitask training of the meta-initialization.")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay.")
    batch_size: int = Field(4096, gt=0, description="Nodes per minibatch.")
    num_workers: int = Field(1, gt=0, description="Ray Train workers (data parallel).")
    use_gpu: Literal["auto", "true", "false"] = Field("auto", description="auto: use GPUs when the cluster has them.")
    seed: int = Field(0, description="Seed of initialization and batch order.")


class ProjectConfig(_Section):
    projector: Literal["taskgrad", "kfac", "kronecker", "svd", "gaussian", "rademacher"] = Field(
        "taskgrad",
        description="taskgrad: every task's mean training gradient (a fine-tune's first step, exact) plus the task "
        "gradients' shared Kronecker components (informed, factored, fast; needs d > number of tasks); kfac: per-layer "
        "KFAC eigenbases; kronecker: random factored; svd: top singular directions of sampled gradients; "
        "gaussian/rademacher: dense random (exact path).",
    )
    d: int = Field(200, gt=0, description="Projected gradient dimension (taskgrad: n task directions + d - n shared "
                   "ones; see README, Validation, for what d buys).")
    task_rank: int = Field(4, gt=0, description="taskgrad: singular triplets per layer that represent each task's "
                           "gradient (rank 4 keeps >= 98.8% of its energy on DBLP and the unseen graph).")
    dtype: Literal["float32", "float16"] = Field("float32", description="Storage dtype of projected gradients.")
    batch_size: int = Field(2048, gt=0, description="Pairs per Ray Data batch.")
    num_actors: int = Field(1, gt=0, description="Projection actors (one model copy each).")
    fit_samples: int = Field(4000, gt=0, description="Training pairs used to fit an informed subspace.")
    seed: int = Field(0, description="Seed of random projections and of the fit sample.")


class FinetuneConfig(_Section):
    lr: float = Field(0.05, gt=0, description="Learning rate of the deterministic full-batch gradient-descent fine-tune.")
    steps: int = Field(10, gt=0, description="Steps of that fine-tune (the linearized estimator runs the same; "
                       "longer fine-tunes leave the linear regime — see README, Validation).")


class EstimateConfig(_Section):
    estimator: Literal["linearized", "onestep", "newton", "seed"] = Field(
        "linearized",
        description="linearized: the fine-tune's own optimizer on the linearized model (default); onestep: one Newton "
        "step of the offset logistic fit; newton: that fit to convergence; seed: the reference code's fit.",
    )
    num_subsets: int = Field(2000, gt=0, description="Random task subsets to estimate.")
    subset_size: int = Field(10, gt=0, description="Tasks per subset.")
    l2: float = Field(1e-3, gt=0, description="L2 penalty of the logistic estimators (and of the surrogate affinity).")
    seed_c: float = Field(1.0, gt=0, description="estimator=seed: sklearn-style inverse regularization C.")
    num_actors: int = Field(2, gt=0, description="Estimator actors.")
    batch_size: Optional[int] = Field(
        None, gt=0, description="Subsets per actor call (a crash loses at most one batch); default: the estimator's own.")
    matmul_dtype: Optional[Literal["bfloat16"]] = Field(
        None, description="Do the large per-pair products in bfloat16 (≈1.7x faster on CPUs with bf16 units; "
        "changes predicted loss changes by ≈0.2%).")
    anchors: bool = Field(
        True, description="Calibrate each task's predicted loss level with real fine-tunes on a partition of the "
        "tasks (about n_tasks / subset_size fine-tunes); rankings and the affinity matrix do not change.")
    seed: int = Field(0, description="Seed of the subset sampler and of the anchor partition.")


class AffinityConfig(_Section):
    method: Literal["mean", "surrogate"] = Field("mean", description="mean: average z-scored score over subsets; surrogate: linear regression on membership.")


class ClusterConfig(_Section):
    method: Literal["auto", "sdp", "spectral", "scalable"] = Field("auto", description="Grouping method; auto picks by size.")
    k: Optional[int] = Field(None, gt=0, description="Number of groups; swept when not given.")
    overlap: bool = Field(False, description="Allow a task in several groups (the seed's behaviour).")
    seed: int = Field(0, description="Seed of k-means / local search / random baseline.")


class GroupsConfig(_Section):
    init: Literal["theta_star", "scratch"] = Field(
        "theta_star",
        description="Where each per-group model and each `select --verify` fine-tune starts: theta_star (a copy of "
                    "the multitask model θ*) or scratch (fresh weights — Grad-TAG's one model per group; for text "
                    "runs, fresh LoRA weights on the base). θ* has already learned every task, which mutes the "
                    "effect of what a group holds; from scratch give it more epochs (e.g. groups.epochs=30).")
    epochs: int = Field(10, gt=0, description="Epochs of each per-group fine-tune (Adam, minibatches).")
    lr: float = Field(3e-3, gt=0, description="Adam learning rate of per-group fine-tunes.")
    seeds: int = Field(2, gt=0, description="Seeds per strategy (noise is reported).")
    single_task_limit: int = Field(100, gt=0, description="Train the single-task baseline for at most this many tasks.")


class SelectConfig(_Section):
    targets: list[str] = Field([], description="Target task names for source selection (empty: the first task).")
    budget: int = Field(5, gt=0, description="Auxiliary tasks to choose per target.")
    num_subsets: int = Field(400, gt=0, description="Random source subsets estimated per target.")


class ValidateConfig(_Section):
    n_validated_tasks: int = Field(20, gt=0, description="Tasks whose estimates are validated.")
    n_subsets: int = Field(40, gt=0, description="Subsets really fine-tuned (each validated task in >= 8).")
    steps_multiplier: float = Field(1.0, gt=0, description="Run the true fine-tune this many times longer than finetune.steps.")
    stochastic_subsets: int = Field(4, ge=0, description="Subsets also fine-tuned by minibatch Adam under two seeds (noise ceiling).")
    seed: int = Field(0, description="Seed of the validation design.")


class RayConfig(_Section):
    address: Optional[str] = Field(None, description="Ray address; default: RAY_ADDRESS or an embedded local Ray.")
    num_cpus: Optional[int] = Field(None, gt=0, description="CPUs for the embedded local Ray (default: all).")
    dashboard_host: str = Field("127.0.0.1", description="Dashboard bind address of the embedded Ray (loopback by default).")
    include_dashboard: bool = Field(False, description="Start the dashboard with the embedded Ray.")


class RaytagConfig(_Section):
    name: str = Field("raytag-run", description="Run name shown in the report.")
    data: DataConfig = Field(default_factory=DataConfig)
    tasks: TasksConfig = Field(default_factory=TasksConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    project: ProjectConfig = Field(default_factory=ProjectConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    estimate: EstimateConfig = Field(default_factory=EstimateConfig)
    affinity: AffinityConfig = Field(default_factory=AffinityConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    groups: GroupsConfig = Field(default_factory=GroupsConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    ray: RayConfig = Field(default_factory=RayConfig)
    lm: LMConfig = Field(default_factory=LMConfig, description="Language-model runs (data.format=text).")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json", by_alias=True)

    def section_dict(self, *names: str) -> dict:
        full = self.to_dict()
        return {name: full[name] for name in names}


def _format_errors(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(top level)"
        value = item.get("input")
        if item["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown field '{field}' — remove it or check the spelling (see `raytag config-help`)")
            continue
        message = item["msg"].removeprefix("Value error, ")
        if isinstance(value, dict):  # a cross-field check: its message names the fields itself
            lines.append(f"{source}: {message}")
        else:
            lines.append(f"{source}: {field} = {value!r}: {message}")
    return "\n".join(lines)


def parse_overrides(overrides: list[str]) -> list[tuple[list[str], Any]]:
    """Parse ``section.field=value`` strings; values are read as YAML (numbers, lists, null)."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set training.epochs=5")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        parsed.append((key.strip().split("."), value))
    return parsed


def _apply_override(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: '{part}' is a value, not a section")
        node = child
    node[path[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RaytagConfig:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    source = "defaults"
    tree: dict = {}
    if path is not None:
        path = resolve_config_path(path)
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (data:, tasks:, ...)")
        tree = loaded or {}
        _resolve_relative_paths(tree, path.parent)
    for keys, value in parse_overrides(overrides or []):
        _apply_override(tree, keys, value)
    try:
        return RaytagConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def resolve_config_path(path: str | Path) -> Path:
    """A config path, or the name of a packaged config (``dblp_demo``)."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    packaged = PACKAGE_CONFIGS / (candidate.name if candidate.suffix else f"{candidate.name}.yaml")
    if packaged.is_file():
        return packaged
    known = ", ".join(sorted(p.stem for p in PACKAGE_CONFIGS.glob("*.yaml")))
    raise ConfigError(f"config file {str(path)!r} not found (packaged configs: {known})")


def _resolve_relative_paths(tree: dict, base: Path) -> None:
    """Data file paths in a YAML file are relative to that file, not to the working directory."""
    data = tree.get("data")
    if not isinstance(data, dict):
        return
    for key in ("edges", "communities", "adjacency", "labels"):
        value = data.get(key)
        if isinstance(value, str) and not Path(value).is_absolute() and "://" not in value:
            data[key] = str((base / value).resolve())


def describe_fields(model: type[BaseModel] = RaytagConfig, prefix: str = "") -> list[str]:
    """One line per field: dotted name, default and description (for ``raytag config-help``)."""
    lines = []
    for name, field in model.model_fields.items():
        name = field.alias or name
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines.extend(describe_fields(annotation, f"{prefix}{name}."))
            continue
        default = field.get_default(call_default_factory=True)
        lines.append(f"{prefix}{name} = {default!r}  — {field.description or ''}")
    return lines
