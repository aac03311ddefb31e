"""Comparisons per configuration, read back from MLflow: table, CSV, charts.

python -m archbench.report                      # the latest sweep
python -m archbench.report --parent RUN_ID      # one sweep, by its parent run
python -m archbench.report --experiment NAME    # every job run of an experiment, across sweeps
"""

import argparse
import os
import sys
from pathlib import Path

from archbench.comparing import table
from archbench.comparing.comparison import write_all
from archbench.comparing.verdicts import MARGIN
from archbench.sweeps import lookup
from archbench.tracking import store, tables, views


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m archbench.report", description=__doc__.split("\n")[0])
    pick = parser.add_mutually_exclusive_group()
    pick.add_argument("--parent", help="a sweep's parent run id (default: the latest sweep)")
    pick.add_argument("--experiment", help="every job run of this experiment, grouped by configuration")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", lookup.DEFAULT_URI))
    parser.add_argument("--out", type=Path, default=Path("outputs/comparison"), help="folder for the files")
    parser.add_argument(
        "--margin", type=float, help=f"equivalence margin (default: the sweep's compare.margin or {MARGIN})"
    )
    args = parser.parse_args(argv)
    if args.tracking_uri.startswith("sqlite:///") and not Path(args.tracking_uri[10:]).exists():
        print(
            f"nothing to compare: no MLflow store at {args.tracking_uri}; run a sweep first "
            "(make sweep-activations)",
            file=sys.stderr,
        )
        return 1
    try:
        mlflow_client = store.client(args.tracking_uri)
        comp, name, experiment_id = lookup.find(mlflow_client, args.parent, args.experiment, args.margin)
    except lookup.NothingToCompare as e:
        print(f"nothing to compare in {store.redact(args.tracking_uri)}: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a store that is locked, unreadable or not answering: one line
        line = store.failure(e, args.tracking_uri)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1
    print(table.markdown(comp))
    curves = tables.histories(mlflow_client, comp.runs, comp.metric)
    paths = write_all(comp, args.out / name, curves)
    print(f"written to {args.out / name}: {', '.join(p.name for p in paths)}")
    link = lookup.ui_link(mlflow_client, comp, name, experiment_id, args.experiment)
    print(f"in the MLflow UI (make ui): {link}")
    if not args.experiment:
        print(f"the comparison: {views.run_link(experiment_id, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
