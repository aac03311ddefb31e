"""archbench's entry point: one Hydra job per network; `-m` or a preset sweeps.

python run.py                                   # mlp + relu + sgd on Fashion-MNIST
python run.py model=cnn3 -m activation=relu,tanh
python run.py +experiment=activations
python run.py model=cnn2 mode=inspect
"""

import sys

from archbench import cpus

cpus.prepare_environment()  # before torch loads OpenMP: it reads its wait policy only then

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from archbench import slurm  # noqa: E402, F401  (the Slurm preset's ${archbench.gpus:...} resolver)
from archbench.cli import main_argv  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from archbench.app import main as run_job  # imported here so --help and --cfg stay fast

    return run_job(cfg)


if __name__ == "__main__":
    sys.argv[1:] = main_argv(sys.argv[1:])  # flags anywhere among the overrides, as people type them
    try:
        main()
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM raised as archbench.tracking.runs.Terminated
        print(f"interrupted ({e or 'Ctrl-C'}): runs in progress are marked KILLED", file=sys.stderr)
        sys.exit(143 if type(e).__name__ == "Terminated" else 130)
    from archbench import exiting

    exiting.now()  # done and recorded: the interpreter's teardown would add 1.2-1.6 s (archbench/exiting.py)
