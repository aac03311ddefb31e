"""archbench's entry point: one Hydra job per network; `-m` or a preset sweeps.

python run.py                                   # mlp + relu + sgd on Fashion-MNIST
python run.py model=cnn3 -m activation=relu,tanh
python run.py +experiment=activations
python run.py model=cnn2 mode=inspect
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from archbench.app import main as run_job  # imported here so --help and --cfg stay fast

    return run_job(cfg)


if __name__ == "__main__":
    main()
