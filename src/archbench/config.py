"""One explicit validator for the composed config: every mistake is one line naming the key.

It runs before any data is read and before any MLflow run exists. Unknown group options never
get here: Hydra refuses them while composing.
"""

import math
import re
from typing import TYPE_CHECKING

from hydra.errors import CompactHydraException
from omegaconf import DictConfig, ListConfig, OmegaConf

GROUPS = ("model", "activation", "optimizer", "dataset", "loss", "scheduler")  # tagged on every run
# Overrides that say how or where a job ran, not what was trained: left out of its configuration.
# (train.threads changes the last bits, not what a comparison is about.)
NOT_CONFIGURATION = ("seed", "seeds", "tracking", "data_dir", "train.progress", "train.checkpoint",
                     "train.threads", "train.together", "train.group", "resume", "race", "compare", "sweep",
                     "tune")  # fmt: skip
MODES = ("train", "inspect")
HEADS = (None, "softmax", "log_softmax")
INTERVALS = ("epoch", "batch")
SPENDING = ("pocock", "obrien-fleming", "bonferroni")  # how a race's looks share alpha; the first: default
MONITORS = ("val_loss", "val_accuracy", "train_loss", "train_accuracy")  # never test_*: no peeking


if TYPE_CHECKING:
    import torch


class ConfigError(CompactHydraException):
    """A config value that archbench cannot run with; Hydra prints it as one line."""


SEED_OVERRIDE = re.compile(r"seed=(\d+)")  # as the sweeper writes a replicate: seed=range(0,${seeds})
GROUP_KEY = "++train.group"  # a job of seeds together (sweeps/together.py): ++train.group=[0,1,2]


def seed_jobs(overrides: list[str]) -> list[list[str]]:
    """The overrides of each seed's own job, for a job of seeds together (seed= where the sweeper put
    it, no group); [overrides] for any other job."""
    group = next((o for o in overrides if o.startswith(GROUP_KEY + "=")), None)
    if group is None:
        return [overrides]
    seeds = [int(s) for s in group.split("=", 1)[1].strip("[]").split(",")]
    rest = [o for o in overrides if o != group]
    return [[f"seed={s}" if SEED_OVERRIDE.fullmatch(o) else o for o in rest] for s in seeds]


def configuration(overrides: list[str], tuned: tuple[str, ...] | list[str] = ()) -> str:
    """What a run compared: its overrides minus seed and bookkeeping, sorted; runs that differ only
    by seed share it, so a comparison groups them (and MLflow's runs table can, by this tag).
    `tuned`: keys a tuned sweep chose per configuration (tune=lr), not what sets configurations apart."""

    def bookkeeping(override: str) -> bool:
        key = override.split("=", 1)[0].lstrip("+~")
        return any(key == k or key.startswith(f"{k}.") for k in (*NOT_CONFIGURATION, *tuned))

    keep = [o for o in overrides if not bookkeeping(o)]
    return " ".join(sorted(keep)) or "(defaults)"


def _number(cfg, key, low=None, low_open=False, integer=False, optional=False, high=None):
    value = OmegaConf.select(cfg, key)
    if value is None and optional:
        return None
    kind = "an integer" if integer else "a number"
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        bounds.append(f"< {high}")
    allowed = f"{kind} {' and '.join(bounds)}".strip() + (" or null" if optional else "")
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (not integer or isinstance(value, int))
    ok = ok and (low is None or (value > low if low_open else value >= low))
    ok = ok and (high is None or value < high)
    if not ok:
        raise ConfigError(f"{key} must be {allowed}, got {value!r}")
    return value


def _sizes(cfg, key):
    value = OmegaConf.select(cfg, key)
    ok = isinstance(value, ListConfig | list) and len(value) > 0
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    if not ok:
        shown = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
        raise ConfigError(f"{key} must be a non-empty list of integers >= 1, got {shown!r}")
    return list(value)


def pick_device(name: str) -> "torch.device":
    """`auto` = cuda, then mps, then cpu; a named device must exist on this machine."""
    import torch  # here: the comparison's report and --help load no torch (4 s)

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not isinstance(name, str) or not re.fullmatch(r"cpu|mps|cuda(:\d+)?", name):
        raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")
    if name.startswith("cuda"):
        index = int(name.partition(":")[2] or 0)
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} but this machine has no CUDA device; use device=auto or cpu")
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device={name} but only {torch.cuda.device_count()} CUDA device(s) exist")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps but MPS is not available here; use device=auto or cpu")
    return torch.device(name)


def _optimizer(cfg):
    _number(cfg, "optimizer.lr", low=0, low_open=True)
    for key, value in cfg.optimizer.items():
        if str(key).startswith("_") or key == "lr":
            continue
        if isinstance(value, bool):
            continue
        values = list(value) if isinstance(value, ListConfig) else [value]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"optimizer.{key} must be a number, got {value!r}")
        if any(v < 0 for v in values):
            raise ConfigError(f"optimizer.{key} must be >= 0, got {value!r}")


def _model_fits(cfg):
    """archbench's own networks: their sizes, and the input they are built for. (Any network gets a
    forward pass of a zero batch before training: archbench.fits.build.)"""
    model, data_shape = cfg.model, list(cfg.dataset.input_shape)
    shape = list(model.input_shape) if "input_shape" in model else data_shape
    if cfg.mode == "train" and shape != data_shape:
        raise ConfigError(
            f"model.input_shape {shape} does not fit dataset={cfg.dataset.name}, whose input is "
            f"{data_shape}; this model is for mode=inspect or a dataset of that shape"
        )
    if model.get("_target_") == "archbench.models.CNN":
        _sizes(cfg, "model.channels")
        kernel = _number(cfg, "model.kernel_size", low=1, integer=True)
        padding = _number(cfg, "model.padding", low=0, integer=True)
        pool = _number(cfg, "model.pool", low=1, integer=True, optional=True)
        if len(shape) != 3:
            raise ConfigError(f"model.input_shape must be [channels, height, width] for a CNN, got {shape}")
        from archbench.models import ShapeError, cnn_shapes  # here: no torch for the report's import

        try:
            cnn_shapes(shape, list(model.channels), kernel, padding, pool)
        except ShapeError as e:
            raise ConfigError(
                f"model={cfg.model._target_.rsplit('.', 1)[-1]} cannot fit input {shape}: {e}"
            ) from e
    if model.get("_target_") == "archbench.models.MLP":
        _sizes(cfg, "model.hidden_sizes")


def _loss_fits(cfg):
    if "head" not in cfg.model:  # a network that takes no head: archbench.fits.ignored
        return
    head, wanted = cfg.model.head, cfg.loss.head
    if head not in HEADS:
        raise ConfigError(f"model.head must be one of null, softmax, log_softmax, got {head!r}")
    if cfg.mode == "train" and head != wanted:
        shown = "null" if head is None else head
        raise ConfigError(
            f"model.head={shown} does not fit the loss, which needs "
            f"model.head={'null' if wanted is None else wanted}; choose a loss made for a "
            f"{head or 'logits'} output (mse takes softmax, nll log_softmax, cross_entropy logits)"
        )


def _training_options(cfg):
    """Schedule, early stopping, the debug limits and augmentation."""
    value = cfg.train.limit_batches
    count = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if not (value is None or count or (isinstance(value, float) and 0 < value <= 1)):
        allowed = "null, an integer >= 1 (batches) or a fraction in (0, 1]"
        raise ConfigError(f"train.limit_batches must be {allowed}, got {value!r}")
    _number(cfg, "train.overfit_batches", low=1, integer=True, optional=True)
    patience = _number(cfg, "train.early_stopping.patience", low=1, integer=True, optional=True)
    _number(cfg, "train.early_stopping.min_delta", low=0)
    schedule, interval, monitor = cfg.scheduler.schedule, cfg.scheduler.interval, cfg.scheduler.get("monitor")
    if schedule is not None and not (isinstance(schedule, DictConfig) and "_target_" in schedule):
        raise ConfigError(f"scheduler.schedule must be null or a node with a _target_, got {schedule!r}")
    if interval not in INTERVALS:
        raise ConfigError(f"scheduler.interval must be one of {', '.join(INTERVALS)}, got {interval!r}")
    if monitor is not None and monitor not in MONITORS:
        raise ConfigError(f"scheduler.monitor must be null or one of {', '.join(MONITORS)}, got {monitor!r}")
    for flag in ("augment", "flip"):
        if flag in cfg.dataset and not isinstance(cfg.dataset[flag], bool):
            raise ConfigError(f"dataset.{flag} must be true or false, got {cfg.dataset[flag]!r}")
    if "crop_padding" in cfg.dataset:
        _number(cfg, "dataset.crop_padding", low=0, integer=True)
    if cfg.mode != "train" or cfg.train.val_fraction > 0:
        return
    got = f"needs train.val_fraction > 0, got {cfg.train.val_fraction}"
    if patience is not None:
        raise ConfigError(f"train.early_stopping.patience={patience} watches val_accuracy and {got}")
    if monitor is not None and monitor.startswith("val_"):
        name = _choice("scheduler") or schedule._target_
        raise ConfigError(f"scheduler={name} watches {monitor} and {got}")


def _choice(group: str) -> str | None:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get(group) if HydraConfig.initialized() else None


def _single_run() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.RUN


def validate(cfg: DictConfig) -> "torch.device":
    """Check every value archbench relies on; returns the device to train on."""
    if cfg.mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    _number(cfg, "seed", low=0, integer=True)
    if cfg.seeds != "auto":
        _number(cfg, "seeds", low=1, integer=True)
    if (cfg.seeds == "auto" or cfg.seeds > 1) and _single_run():
        raise ConfigError(
            f"seeds={cfg.seeds} repeats the configurations of a sweep: add -m "
            f"(python run.py -m seeds={cfg.seeds} ...), or set seed=N for one run"
        )
    if cfg.mode == "train":
        _number(cfg, "train.epochs", low=1, integer=True)
    _number(cfg, "train.batch_size", low=1, integer=True)
    _number(cfg, "train.val_fraction", low=0, high=1)
    _number(cfg, "train.threads", low=1, integer=True, optional=True)
    for key in ("amp", "together"):
        if cfg.train.get(key, "auto") not in (True, False, "auto"):
            raise ConfigError(f"train.{key} must be auto, true or false, got {cfg.train[key]!r}")
    for flag in ("channels_last", "cudnn_benchmark", "compile", "checkpoint", "progress"):
        if not isinstance(cfg.train[flag], bool):
            raise ConfigError(f"train.{flag} must be true or false, got {cfg.train[flag]!r}")
    if not isinstance(cfg.deterministic, bool):
        raise ConfigError(f"deterministic must be true or false, got {cfg.deterministic!r}")
    _training_options(cfg)
    _optimizer(cfg)
    _model_fits(cfg)
    _loss_fits(cfg)
    if cfg.dataset.name == "synthetic":
        _number(cfg, "dataset.train_size", low=1, integer=True)
        _number(cfg, "dataset.test_size", low=1, integer=True)
    _records(cfg)
    _resample(cfg)
    return pick_device(cfg.device)


# the sources whose train and test splits splits.partition can pool (dataset.resample=true)
POOLED = {
    "archbench.data.IdxSource": "fashion_mnist, mnist",
    "archbench.data.CifarSource": "cifar10",
    "archbench.images.ImageFolderSource": "image_folder",
    "archbench.data.SyntheticSource": "synthetic",
}


def _resample(cfg) -> None:
    flag = cfg.dataset.get("resample", False)
    if not isinstance(flag, bool):
        raise ConfigError(f"dataset.resample must be true or false, got {flag!r}")
    if flag and cfg.dataset.get("_target_") not in POOLED:
        raise ConfigError(
            f"dataset.resample=true pools the train and test splits of {', '.join(POOLED.values())}; "
            f"{cfg.dataset.get('_target_')} cannot be pooled"
        )


def _records(cfg):
    """What the MLflow record needs: a name per class, a registry name, a flag."""
    classes, count = cfg.dataset.get("classes"), cfg.dataset.num_classes
    if classes is not None and (not isinstance(classes, ListConfig) or len(classes) != count):
        shown = OmegaConf.to_container(classes) if isinstance(classes, ListConfig) else classes
        raise ConfigError(f"dataset.classes must list dataset.num_classes={count} names, got {shown!r}")
    register = cfg.tracking.get("register")
    if register is not None and not (isinstance(register, str) and register.strip()):
        raise ConfigError(f"tracking.register must be a registered model's name or null, got {register!r}")
    if register is not None and not cfg.tracking.get("log_model", True):
        raise ConfigError("tracking.register needs tracking.log_model=true: it registers the run's model")
    for key in ("system_metrics", "log_model"):
        flag = cfg.tracking.get(key, False)
        if not isinstance(flag, bool):
            raise ConfigError(f"tracking.{key} must be true or false, got {flag!r}")
    _number(cfg, "tracking.heartbeat_s", low=0, low_open=True)


def validate_sweep(config: DictConfig, seed_swept: bool) -> None:
    """What a sweep's comparison and race need, checked before the sweep's parent run exists."""
    if config.seeds != "auto":
        _number(config, "seeds", low=1, integer=True)
    _number(config, "compare.margin", low=0, low_open=True, high=1)
    reuse = OmegaConf.select(config, "sweep.reuse", default=True)
    if not isinstance(reuse, bool):
        raise ConfigError(f"sweep.reuse must be true or false, got {reuse!r}")
    _tune(config)
    beat = _number(config, "tracking.heartbeat_s", low=0, low_open=True)
    if _number(config, "sweep.stale_after", low=0, low_open=True) < 2 * beat:
        # one late beat (a store busy for a moment) must not make a live run look dead
        shown = config.sweep.stale_after
        raise ConfigError(f"sweep.stale_after must be >= 2 x tracking.heartbeat_s={beat:g}, got {shown}")
    if config.seeds != "auto":
        return
    if seed_swept:
        raise ConfigError(
            "seeds=auto picks the seeds itself (0, 1, 2, ... as the race needs them): leave out seed="
        )
    first = _number(config, "race.first_seeds", low=2, integer=True)
    if _number(config, "race.max_seeds", low=2, integer=True) < first:
        raise ConfigError(f"race.max_seeds must be >= race.first_seeds={first}, got {config.race.max_seeds}")
    _number(config, "race.max_runs", low=1, integer=True, optional=True)
    _number(config, "race.max_minutes", low=0, low_open=True, optional=True)
    if "futility" in config.race:
        _number(config, "race.futility", low=0, high=1)
    spending = config.race.get("spending", SPENDING[0])
    if spending not in SPENDING:
        raise ConfigError(f"race.spending must be one of {', '.join(SPENDING)}, got {spending!r}")


def specs(config: DictConfig) -> dict[str, DictConfig]:
    """The tuned keys (`optimizer.lr`) and their grids' specs; none without `tune`. The specs nest as
    the keys do (tune.params.optimizer.lr.step), so a command line can override them."""
    found = {}

    def walk(node, path):
        if isinstance(node, DictConfig) and "step" in node:
            found[path] = node
        elif isinstance(node, DictConfig):
            for name in node:
                walk(node[name], f"{path}.{name}" if path else name)

    walk(OmegaConf.select(config, "tune.params", default=None), "")
    return found


def keys(config: DictConfig) -> list[str]:
    return list(specs(config))


def _tune(config: DictConfig) -> None:
    """A tuned sweep's space and budget (conf/tune/), and what it may not sweep; a hint without it."""
    task = OmegaConf.to_container(config.hydra.overrides.task)
    given = {o.split("=", 1)[0].lstrip("+~"): o for o in task}
    params = specs(config)
    if not params:
        swept = [
            k
            for k in ("optimizer.lr", "train.batch_size")
            if "," in given.get(k, "") or "(" in given.get(k, "")
        ]
        if swept:
            print(f"hint: {swept[0]} is swept as a configuration of its own; tune=lr compares the other axis "
                  "fairly, each of its values at its own tuned learning rate", flush=True)  # fmt: skip
        return
    for key, spec in params.items():
        if key in given:
            raise ConfigError(
                f"{key} is tuned by tune={config.hydra.runtime.choices.get('tune')} for each configuration; "
                f"leave out {given[key]!r}, or tune=none to set it by hand"
            )
        if not isinstance(spec.get("from"), int | float | DictConfig) or isinstance(spec.get("from"), bool):
            raise ConfigError(
                f"tune.params.{key}.from must be a number > 0, or one per choice of its `by` group"
            )
        starts = spec["from"].values() if isinstance(spec["from"], DictConfig) else [spec["from"]]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in starts):
            raise ConfigError(
                f"tune.params.{key}.from must be numbers > 0, got {OmegaConf.to_container(spec)['from']!r}"
            )
        if isinstance(spec["from"], DictConfig):
            by = spec.get("by")
            picked = config.hydra.runtime.choices.get(by) if by else None
            if picked is None:
                raise ConfigError(f"tune.params.{key}.by must name a config group, got {by!r}")
        step = spec.get("step")  # (a dotted key inside params: OmegaConf.select would read it as a path)
        number = isinstance(step, int | float) and not isinstance(step, bool)
        if not (number and math.isfinite(step) and step > 1):
            raise ConfigError(f"tune.params.{key}.step must be a number > 1, got {step!r}")
    _number(config, "tune.settings", low=2, integer=True)
    _number(config, "tune.extend", low=0, integer=True)
    _number(config, "tune.val_fraction", low=0, low_open=True, high=1)
    seeds = config.tune.seeds
    ok = isinstance(seeds, ListConfig) and len(seeds) >= 1 and len(set(seeds)) == len(seeds)
    if not ok or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"tune.seeds must be a list of distinct integers >= 0, got {seeds!r}")
    evaluated = config.race.max_seeds if config.seeds == "auto" else config.seeds
    if min(seeds) < evaluated:
        raise ConfigError(
            f"tune.seeds must be apart from the evaluation seeds 0..{evaluated - 1} (reused, they carry the "
            f"tuning's luck into the verdicts): take seeds >= {evaluated}, got {list(seeds)}"
        )
