"""Any nn.Module as a model: what archbench hands a network, and whether the network fits the run.

A model config names a constructor (`_target_`, any importable callable returning an nn.Module)
and holds that constructor's own arguments, nothing else: archbench passes a network only what its
config names. The course's networks take archbench's own keys the same way, by interpolation:
`activation: ${activation}`, `head: ${loss.head}`, `input_shape: ${dataset.input_shape}`. (Reading
the constructor's signature instead cannot see through `**kwargs`, which is how torchvision's and
timm's model functions take their arguments.) So a network whose config does not read
`${activation}` ignores the activation group, and choosing one for it is refused: a sweep over
activations would compare identical networks. Likewise a loss that needs a head (nll, mse) on a
network that takes none.
"""

import re
from itertools import product
from typing import TYPE_CHECKING

from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:  # torch is imported where a network is built: a sweep's parent never needs it
    from torch import nn

from archbench.config import ConfigError

READ_BY_THE_MODEL = ("activation",)  # groups only a network's constructor reads, through its config
CHECKED_GROUPS = ("model", "loss", *READ_BY_THE_MODEL)  # the choices the refusal depends on


def input_shape(cfg: DictConfig) -> list[int]:
    """The input a network is built for: its config's own `input_shape` (the course's examples for
    mode=inspect set one), else the dataset's."""
    return list(cfg.model.input_shape if "input_shape" in cfg.model else cfg.dataset.input_shape)


def reads(model: DictConfig, group: str) -> bool:
    """Whether a model config (unresolved) interpolates the group: `${activation}` or `${activation.x}`."""
    pattern = re.compile(r"\$\{\s*" + re.escape(group) + r"\s*[}.\[]")

    def strings(node):
        if isinstance(node, dict | list):
            for value in node.values() if isinstance(node, dict) else node:
                yield from strings(value)
        elif isinstance(node, str):
            yield node

    return any(pattern.search(s) for s in strings(OmegaConf.to_container(model, resolve=False)))


def unused_groups(model: DictConfig) -> set[str]:
    """The groups a network's config does not read: their choice does not name its run."""
    return {group for group in READ_BY_THE_MODEL if not reads(model, group)}


def ignored(model: DictConfig, loss: DictConfig, overrides: list[str], choices: dict) -> str | None:
    """Why the run's choices do not fit its network (one line), or None when they do."""
    name = f"model={choices.get('model') or model._target_.rsplit('.', 1)[-1]}"
    for group in READ_BY_THE_MODEL:
        chosen = [o for o in overrides if re.sub(r"^[+~]+", "", o).split("=")[0].split(".")[0] == group]
        if chosen and not reads(model, group):
            return (
                f"{name} takes no {group} (its config has no ${{{group}}}), so {chosen[0]} would change "
                f"nothing and a sweep over it would compare identical networks: drop {chosen[0]}, or give "
                f"the network an {group} argument and `{group}: ${{{group}}}` in its config"
            )
    if "head" not in model and loss.head is not None:
        return (
            f"{name} takes no head, so it gives raw scores (logits), and loss={choices.get('loss')} "
            f"needs {loss.head} outputs: use loss=cross_entropy, or give the network a head argument "
            "and `head: ${loss.head}` in its config"
        )
    return None


def build(cfg: DictConfig, name: str) -> "nn.Module":
    """The config's network, tried on a batch of two zero inputs: one line where it cannot be built,
    take the input, or give one score per class. The module returned is the constructor's own."""
    import torch  # here, not above: the sweep's parent loads this module for its callback only
    from torch import nn

    try:
        model = instantiate(cfg.model)
    except InstantiationException as e:
        hint = ""
        if "Error locating target" in str(e):
            hint = ": is the folder that holds its module on PYTHONPATH (export PYTHONPATH=...)?"
        raise ConfigError(f"model={name}: {' '.join(str(e).split())}{hint}") from e
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model={name}: {cfg.model._target_} returned a {type(model).__name__}, not an nn.Module"
        )
    shape, training = input_shape(cfg), model.training
    try:
        with torch.no_grad():  # also gives lazy modules (nn.LazyLinear) their weights, before the optimiser
            out = model.eval()(torch.zeros(2, *shape))
    except Exception as e:
        raise ConfigError(
            f"model={name} cannot take input {shape} (dataset={cfg.dataset.name}): "
            f"{type(e).__name__}: {' '.join(str(e).split())}"
        ) from e
    finally:
        model.train(training)
    classes = cfg.dataset.num_classes
    got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if cfg.mode == "train" and got != [2, classes]:
        raise ConfigError(
            f"model={name} gives {got} for a batch of 2 inputs, and dataset={cfg.dataset.name} has "
            f"{classes} classes: archbench needs one score per class ([2, {classes}]); give it "
            "num_classes: ${dataset.num_classes} (or its own name for that) in its config"
        )
    return model


class RefuseIgnoredChoices(Callback):
    """Before a sweep launches any job (and before its parent run exists): compose the job config of
    every model x loss it runs, as Hydra's sweeper will, and stop in one line if one ignores a choice."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.override_parser.overrides_parser import OverridesParser

        params = config.hydra.sweeper.get("params") or {}
        typed = [f"{k}={v}" for k, v in params.items() if k in CHECKED_GROUPS]
        typed += list(config.hydra.overrides.task)
        fixed, swept = [], {}  # swept: group -> (the override as typed, one override per value)
        for override in OverridesParser.create().parse_overrides(typed):
            group = override.key_or_group
            if not override.is_sweep_override():
                fixed.append(override.input_line)
            elif group in CHECKED_GROUPS:  # other sweeps (seed, lr) change nothing checked here
                swept[group] = (
                    override.input_line,
                    [f"{group}={v}" for v in override.sweep_string_iterator()],
                )
        as_typed = fixed + [line for line, _ in swept.values()]
        # a network's config reads ${activation} unresolved, alike for every value: only the model
        # and the loss need composing per value (0.2 s a composition, before the first job)
        composed = [values for group, (_, values) in swept.items() if group not in READ_BY_THE_MODEL]
        loader = GlobalHydra.instance().config_loader()
        for picked in product(*composed):
            try:
                job = loader.load_sweep_config(config, [*fixed, *picked])
            except Exception:  # the sweeper itself reports a config that cannot be composed
                continue
            why = ignored(job.model, job.loss, as_typed, dict(job.hydra.runtime.choices))
            if why is not None:
                raise SystemExit(f"error: {why}; nothing was run")  # an exception would be a mere warning
