"""Hydra's basic sweeper, plus `seeds=auto`: a race that adds seeds until the comparison is answered.

Hydra instantiates sweepers only from the `hydra_plugins` package, so the plugin lives here and
the race itself in archbench.sweeps.race, imported when a race starts (Hydra imports every
plugin module at start-up).
"""

from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf


class RaceSweeper(BasicSweeper):
    """The cartesian product of the sweep's overrides, as the basic sweeper runs it, over
    `seeds` seeds; with seeds=auto, over as many seeds as the race needs. Either way, a job whose
    configuration and seed the store already holds is not trained again (sweeps/reuse.py)."""

    def sweep(self, arguments: list[str]) -> Any:
        from archbench.sweeps.reuse import ReusingLauncher  # here: a single run imports no MLflow

        # every batch (a round of a race) launches only what the store does not hold already
        reuse = OmegaConf.select(self.config, "sweep.reuse", default=True)
        stale_after = OmegaConf.select(self.config, "sweep.stale_after", default=300)
        self.launcher = ReusingLauncher(
            self.launcher, self.config, self.hydra_context.config_loader, reuse, stale_after=stale_after
        )
        tuned = OmegaConf.select(self.config, "tune.params", default=None)
        if self.config.get("seeds") != "auto" and not tuned:
            return super().sweep(arguments)
        from archbench.sweeps.race import Race, configurations

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        found = configurations(self._parse_config(), arguments, parser)
        if tuned:  # tune=...: a study per configuration first, then its chosen values are evaluated
            found = self._tune(found)
        if self.config.get("seeds") != "auto":
            batch = [[*c, f"seed={s}"] for s in range(self.config.seeds) for c in found]  # seeds outer
            returns = self.launcher.launch(batch, initial_job_idx=self.launcher.next_job or 0)
        else:
            returns = Race(self.config, self.launcher, found).run()
        for result in returns:  # as the basic sweeper does: a failed job's error ends the sweep
            _ = result.return_value
        return [returns]

    def validate_batch_is_legal(self, batch) -> None:
        """Hydra composes every job's config here, to fail early (0.27 s a composition on a 2-core
        Xeon: 3.8 s of the 15-job activations preset's start, before any job). The seeds of one
        configuration differ only in their seed=N, which composes alike; archbench validates it in the
        job. So one composition per configuration, kept by the reuse launcher, which needs each
        configuration's again to name its runs (0.2 s a composition, before the first job)."""
        from archbench.config import SEED_OVERRIDE

        distinct = {}
        for overrides in batch:
            distinct.setdefault(tuple(o for o in overrides if not SEED_OVERRIDE.fullmatch(o)), overrides)
        compose = getattr(self.launcher, "composed", None)
        if compose is None:  # not launched through sweep(): Hydra's own check
            return super().validate_batch_is_legal(list(distinct.values()))
        for overrides in distinct.values():
            compose(list(overrides))
        return None

    def _tune(self, found: list[list[str]]) -> list[list[str]]:
        from archbench.tuning import Study

        loader = self.hydra_context.config_loader
        choices = [dict(loader.load_sweep_config(self.config, c).hydra.runtime.choices) for c in found]
        return Study(self.config, self.launcher, found, choices).run(first_job=self.launcher.next_job or 0)
