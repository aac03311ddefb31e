"""archbench: compare neural-network architectures over seeds, with verdicts, tracked in MLflow.

From Python (a notebook): `archbench.run`, `sweep`, `compare`, `inspect` and `network` (api.py).
They are imported on first use, so that `run.py` can set up the CPUs before anything loads torch.
"""

API = ("run", "sweep", "compare", "inspect", "network", "ArchbenchError")
__all__ = list(API)


def __getattr__(name: str):
    if name in API:
        from archbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'archbench' has no attribute {name!r}")
