"""Comparisons per configuration, read back from MLflow: table, CSV, charts.

Asked again of a store in which nothing has changed, it prints what it printed (tracking/stored.py).

python -m archbench.report                      # the latest sweep
python -m archbench.report --parent RUN_ID      # one sweep, by its parent run
python -m archbench.report --experiment NAME    # every job run of an experiment, across sweeps
"""

import argparse
import os
import sys
from pathlib import Path

from archbench.tracking import DEFAULT_URI, stored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m archbench.report", description=__doc__.split("\n")[0])
    pick = parser.add_mutually_exclusive_group()
    pick.add_argument("--parent", help="a sweep's parent run id (default: the latest sweep)")
    pick.add_argument("--experiment", help="every job run of this experiment, grouped by configuration")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI))
    parser.add_argument("--out", type=Path, default=stored.REPORT_DIR, help="folder for the files")
    parser.add_argument(
        "--margin",
        type=float,
        help="equivalence margin (default: the sweep's compare.margin, else its default)",
    )
    args = parser.parse_args(argv)
    if args.tracking_uri.startswith("sqlite:///") and not Path(args.tracking_uri[10:]).exists():
        print(
            f"nothing to compare: no MLflow store at {args.tracking_uri}; run a sweep first "
            "(make sweep-activations)",
            file=sys.stderr,
        )
        return 1
    request = stored.request(args.tracking_uri, args.parent, args.experiment, args.margin, args.out)
    kept = stored.recall(request, args.tracking_uri)
    if kept is not None:
        print(kept)
        return 0
    return _report(args, request)


def _report(args, request: str) -> int:
    """Read the store and compare, print, write the files, and keep what was printed."""
    from archbench.comparing.comparison import write_all
    from archbench.sweeps import lookup
    from archbench.tracking import store, tables, views

    try:
        mlflow_client = store.client(args.tracking_uri)
        asked = lookup.question(mlflow_client, args.parent, args.experiment, args.margin)
        comp, name = asked.compare(mlflow_client), asked.name
    except lookup.NothingToCompare as e:
        print(f"nothing to compare in {store.redact(args.tracking_uri)}: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a store that is locked, unreadable or not answering: one line
        line = store.failure(e, args.tracking_uri)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1
    curves = tables.histories(mlflow_client, comp.runs, comp.metric)
    paths = write_all(comp, args.out / name, curves)
    link = lookup.ui_link(mlflow_client, comp, name, asked.experiment_id, args.experiment)
    run_link = None if args.experiment else views.run_link(asked.experiment_id, name)
    text = lookup.shown(comp, args.out / name, paths, link, run_link)
    print(text)
    before = stored.state(args.tracking_uri)  # after this report's own write (the UI's view)
    if asked.same(lookup.question(mlflow_client, args.parent, args.experiment, args.margin)):
        stored.keep(request, before, text, paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
