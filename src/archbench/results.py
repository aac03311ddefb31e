"""What the Python API (api.py) hands back, each showing itself in a notebook: a run, a sweep's
comparison, a network's inspection."""

import functools
import html
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd


def absolute_uri(uri: str, root: Path) -> str:
    """A SQLite store's URI with its path made absolute against the project (`root`), as run.py
    typed in the project's folder reads it: the same store from a notebook in notebooks/."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(root / uri.removeprefix("sqlite:///"))
    return uri


@dataclass
class Run:
    """One trained run, as the store holds it: `.model` loads its network."""

    id: str
    name: str
    status: str
    metrics: dict[str, float]
    params: dict[str, str]
    tracking_uri: str
    experiment_id: str

    @classmethod
    def get(cls, uri: str, run_id: str) -> "Run":
        from archbench.tracking import store

        return cls.of(store.client(uri).get_run(run_id), uri)

    @classmethod
    def of(cls, run, uri: str) -> "Run":
        info, data = run.info, run.data
        return cls(info.run_id, info.run_name, info.status, dict(data.metrics), dict(data.params), uri,
                   info.experiment_id)  # fmt: skip

    @property
    def model(self):
        """The trained network, from the run's MLflow model (`runs:/<id>/model`): it takes raw images
        (0-255 or 0-1, as the dataset stores them) and returns a score per class."""
        import mlflow.pytorch

        from archbench.tracking.logged_model import _tracking_uri

        with _tracking_uri(self.tracking_uri):
            return mlflow.pytorch.load_model(f"runs:/{self.id}/model")

    @property
    def link(self) -> str:
        from archbench.tracking import views

        return views.run_link(self.experiment_id, self.id)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{k}={self.metrics[k]:.4g}" for k in ("test_accuracy", "train_time_s") if k in self.metrics
        )
        return f"Run({self.name}, {self.status}, {shown}, id={self.id})"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td></tr>" for k, v in sorted(self.metrics.items())
        )
        return (
            f"<p><strong>{html.escape(self.name)}</strong> ({self.status}), run {self.id}: "
            f'<a href="{self.link}">MLflow UI</a></p><table>{rows}</table>'
        )


@dataclass
class Comparison:
    """A sweep's (or an experiment's) comparison: `.table` (a row per configuration, best first),
    `.runs` (a row per run), `.parent_id`, the two UI links, and its charts on request."""

    comp: object  # archbench.comparing.comparison.Comparison
    tracking_uri: str  # its store
    parent: str | None = None  # the sweep's parent run; None for an experiment's
    experiment_id: str = ""

    @functools.cached_property
    def client(self):
        """An MlflowClient on its store: made when a link or the curves need it, not to show the table."""
        from archbench.tracking import store

        return store.client(self.tracking_uri)

    @property
    def parent_id(self) -> str | None:
        return self.parent

    @property
    def table(self) -> pd.DataFrame:
        """verdict, configuration, n, mean, sd, ci_low, ci_high, diff (with the best), its simultaneous
        interval diff_low..diff_high, train_time_s, params_total, front."""
        s = self.comp.summary
        frame = s[["verdict", "configuration", "n", "mean", "sd", "ci_low", "ci_high", "diff", "diff_low",
                   "diff_high", "train_time_s", "params_total", "front"]].copy()  # fmt: skip
        if self.comp.chosen:  # tune=lr: each configuration's chosen values
            frame.insert(2, "tuned", frame.configuration.map(self.comp.chosen))
        frame["configuration"] = frame.configuration.map(self.comp.labels)
        return frame.set_index("configuration")

    @property
    def runs(self) -> pd.DataFrame:
        return self.comp.runs.drop(columns=["start_time"])

    @property
    def title(self) -> str:
        return self.comp.title

    @functools.cached_property
    def ui_link(self) -> str:
        """The sweep's runs in the MLflow UI (`make ui`), grouped by configuration: a view saved
        with the experiment, once (every time the notebook shows the comparison reads it)."""
        from archbench.sweeps import lookup

        name = self.parent or f"experiment-{self.experiment_id}"
        experiment = None if self.parent else self.client.get_experiment(self.experiment_id).name
        return lookup.ui_link(self.client, self.comp, name, self.experiment_id, experiment)

    @property
    def comparison_link(self) -> str | None:
        """The parent run's page, whose description is this comparison; None for an experiment's."""
        from archbench.tracking import views

        return views.run_link(self.experiment_id, self.parent) if self.parent else None

    def chart(self, kind: str = "accuracy"):
        """A chart, shown inline: "accuracy" (per configuration, each seed a dot), "curves" (per epoch)
        or "pareto" (accuracy against training time); a tuned sweep's "sensitivity" and "budget" too."""
        from IPython.display import Image

        from archbench.comparing import charts
        from archbench.tracking import tables

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{kind}.png"
            if kind == "accuracy":
                charts.comparison(self.comp, path)
            elif kind == "curves":
                charts.curves(
                    self.comp, tables.histories(self.client, self.comp.runs, self.comp.metric), path
                )
            elif kind == "pareto":
                charts.pareto(self.comp, path)
            elif kind in ("sensitivity", "budget") and self.comp.tuning:
                from archbench.comparing import study_charts

                getattr(study_charts, kind)(self.comp.tuning, self.comp.labels, path)
            else:
                kinds = "accuracy, curves, pareto" + (", sensitivity or budget" if self.comp.tuning else "")
                raise ValueError(f"chart kind must be {kinds}, got {kind!r}")
            return Image(path.read_bytes(), format="png")

    def __repr__(self) -> str:
        from archbench.comparing import table

        return table.markdown(self.comp)

    def _repr_html_(self) -> str:
        from archbench.comparing import table

        links = f'<p><a href="{self.ui_link}">runs in the MLflow UI</a>'
        if self.parent:
            links += f' · <a href="{self.comparison_link}">the comparison</a> (parent run {self.parent})'
        return table.html(self.comp) + links + "</p>"


@dataclass
class Inspection:
    """`mode=inspect`'s text: the torchinfo summary, then the parameter breakdown."""

    text: str

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(self.text)}</pre>"
