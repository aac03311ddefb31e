"""What makes two job runs "the same run", so that a sweep run again reuses what it already has.

A run is the same as an earlier one when both keys match:
- `config_key`: the composed config minus bookkeeping (where results are kept, how progress shows,
  how many threads ran it: the thread count changes float bits, not what a comparison is about),
  with the seed, and a digest of the data as read (the dataset record's file digests);
- `code_version`: the source of archbench's model and training code, of any module of the user's
  that the config names by `_target_` (an own network or dataset), and the torch version.

The launching process computes them from each job's composed config before it launches anything
(sweeps/reuse.py), and each job records the same two on its run as tags.
"""

import hashlib
import importlib.util
import json
import runpy
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# Keys that say how or where a job ran, not what it trained: in config.yaml, not in the params, where
# MLflow's runs table and compare page list them beside the configuration (51 params, with them).
BOOKKEEPING = ("tracking", "train.progress", "train.checkpoint", "data_dir", "resume", "mode", "seeds",
               "compare", "race", "sweep", "tune", "train.group",
               "dataset.system_dir", "dataset.torchvision_class",  # where the data is
               "dataset.classes")  # fmt: skip
CONFIG_TAG = "archbench.config_key"
CODE_TAG = "archbench.code_version"
# Not what a run trained: what its params leave out (where it is kept, how it showed, how a sweep
# compares), how many threads it had, and whether its seed trained beside others (batched.py: the
# same run, to float rounding)
NOT_IDENTITY = (*BOOKKEEPING, "train.threads", "train.together")
# archbench's own code that decides what a run learns: the networks, the data, the training loop
TRAINING_CODE = ("models.py", "train.py", "batched.py", "data.py", "splits.py", "images.py", "augment.py",
                 "stopping.py", "evaluation.py", "debug.py")  # fmt: skip
OWN_PACKAGES = ("archbench", "torch", "torchvision", "hydra", "omegaconf", "functools", "builtins")


def dotted(cfg: DictConfig) -> dict[str, str]:
    """The resolved config as dotted keys (`optimizer.lr`)."""
    flat: dict[str, str] = {}

    def walk(node, prefix):
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def settings(cfg: DictConfig) -> dict[str, str]:
    """The composed config as dotted keys, resolved, without bookkeeping and Hydra's node."""
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])  # as the job gets it
    return {k: v for k, v in dotted(job).items() if not _bookkeeping(k)}


def _bookkeeping(key: str) -> bool:
    return any(key == b or key.startswith(f"{b}.") for b in NOT_IDENTITY)


def data_digest(lineage: dict | None) -> str:
    """The data as read, from its lineage's digests ({split: Lineage}); "none" for a source without."""
    if not lineage:
        return "none"
    return data_digest_of({split: line.digest for split, line in lineage.items()})


def data_digest_of(split_digests: dict[str, str]) -> str:
    """`data_digest` from each split's Lineage.digest alone (a source's `split_digests`)."""
    return _digest(split_digests)


def config_key(configured: dict[str, str], data: str) -> str:
    """The configuration (`settings`), with its seed, and the data's digest, as 16 hex digits."""
    return _digest({"config": configured, "data": data})


def code_version(cfg: DictConfig) -> str:
    """archbench's training code, the user's modules that the config names, and torch, as 16 hex digits."""
    package = Path(__file__).parent
    sources = {name: (package / name).read_text() for name in TRAINING_CODE}
    for module in sorted(_own_modules(cfg)):
        sources[module] = _source(module)
    return _digest({"sources": sources, "torch": torch_version()})


def torch_version() -> str:
    """torch.__version__ ("2.14.1+cu130": the package's metadata lacks the local part), read from
    torch/version.py where torch is not imported: a sweep's parent would import it for this alone."""
    if "torch" in sys.modules:
        return sys.modules["torch"].__version__
    spec = importlib.util.find_spec("torch")
    return runpy.run_path(str(Path(spec.origin).with_name("version.py")))["__version__"]


def _own_modules(cfg: DictConfig) -> set[str]:
    """The modules outside archbench and torch that the config's `_target_`s name."""
    found = set()

    def walk(node):
        if isinstance(node, dict):
            target = node.get("_target_")
            if isinstance(target, str) and "." in target:
                module = target.rsplit(".", 1)[0]
                if module.split(".", 1)[0] not in OWN_PACKAGES:
                    found.add(module)
            for value in node.values():
                walk(value)

    container = OmegaConf.to_container(cfg, resolve=False)
    container.pop("hydra", None)
    walk(container)
    return found


def _source(module: str) -> str:
    """A module's source file, or a note that none was found (then only the same note matches)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    origin = spec.origin if spec is not None else None
    if origin and Path(origin).is_file():
        return Path(origin).read_text(errors="replace")
    return f"(no source found for {module})"
