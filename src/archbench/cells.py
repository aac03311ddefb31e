"""A network written in a notebook cell, made something a job can import.

A sweep's jobs run in other processes (joblib's workers, Slurm's nodes), which import a network by
its config's `_target_`, and a class defined in a notebook lives in no module they can import. So
`network` writes the class's cell (its imports, classes and functions) to a module file of its own,
under outputs/networks/, named
after a digest of that source (an edited class is a new module: a worker that imported the old one
cannot run it by mistake, and a sweep does not reuse runs of the old code), and registers its config
as an option of the model group in Hydra's ConfigStore, which Hydra's launchers carry to their jobs.
"""

import ast
import hashlib
import importlib
import inspect
import linecache
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the project (an editable install: src/archbench/cells.py)
CONF = ROOT / "conf"
FOLDER = ROOT / "outputs" / "networks"
# what a cell's network most often uses without importing it in its own cell
HEADER = "import torch\nfrom torch import nn\nimport torch.nn.functional as F\n"


def importable() -> None:
    """The networks' folder on this process's path and on its children's (before any is started).
    It is made now: Python's import system remembers a folder on the path that did not exist."""
    FOLDER.mkdir(parents=True, exist_ok=True)
    if str(FOLDER) not in sys.path:
        sys.path.append(str(FOLDER))
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(FOLDER) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([*paths, str(FOLDER)])


def network(cls: type, name: str | None = None, **arguments) -> str:
    """Write `cls` (an nn.Module class from a cell) to a module file and make it the option
    `model=<name>` (its lowercased name by default), built with `arguments`, which may interpolate
    the run's values: `network(MyNet, num_classes="${dataset.num_classes}")`. Returns the option."""
    from hydra.core.config_store import ConfigStore

    name = name or cls.__name__.lower()
    if (CONF / "model" / f"{name}.yaml").exists():  # the main config is searched first: it would win
        raise ValueError(
            f"model={name} is archbench's own network (conf/model/{name}.yaml): "
            f"give this one another name, network({cls.__name__}, name=...)"
        )
    source = _source(cls)
    module = f"{cls.__name__.lower()}_{hashlib.sha256(source.encode()).hexdigest()[:10]}"
    FOLDER.mkdir(parents=True, exist_ok=True)
    path = FOLDER / f"{module}.py"
    if not path.exists():
        temporary = path.with_suffix(".tmp")
        temporary.write_text(source)
        temporary.replace(path)  # whole or absent: a job importing it never sees half a file
    importable()
    importlib.invalidate_caches()  # the folder's listing, as this process's finder read it before the file
    getattr(importlib.import_module(module), cls.__name__)  # what a job will import: fails here, not there
    ConfigStore.instance().store(
        group="model", name=name, node={"_target_": f"{module}.{cls.__name__}", **arguments}
    )
    print(f"archbench: {cls.__name__} written to {path} for the jobs to import; it is model={name}")
    return name


def _source(cls: type) -> str:
    """The cell's imports, classes and functions (the class and what it may use), after the usual imports."""
    functions = [inspect.unwrap(f) for f in vars(cls).values() if inspect.isfunction(f)]
    if not functions:
        raise TypeError(f"{cls.__name__} defines no method: nothing shows where its source is")
    filename = functions[0].__code__.co_filename
    cell = "".join(linecache.getlines(filename))
    tree = ast.parse(cell)
    if not any(isinstance(n, ast.ClassDef) and n.name == cls.__name__ for n in tree.body):
        raise TypeError(f"the source of {cls.__name__} is not in {filename}")
    kept = (ast.Import, ast.ImportFrom, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    lines = cell.splitlines(keepends=True)
    parts = []
    for node in tree.body:
        if isinstance(node, kept):
            start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
            parts.append("".join(lines[start - 1 : node.end_lineno]))
    return HEADER + "\n\n" + "\n\n".join(parts)
