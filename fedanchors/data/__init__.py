"""Scenarios: real datasets split into groups. Importing this fills ``SCENARIOS``."""

from fedanchors.data import digits, femnist, longtail, mnist, multimodal, spurious, textcaps, waterbirds  # noqa: F401
from fedanchors.data.base import SCENARIOS, GroupData, ScenarioData, Split, check_labels, data_root

__all__ = ["SCENARIOS", "GroupData", "ScenarioData", "Split", "data_root", "build_scenario"]


def build_scenario(cfg) -> ScenarioData:
    """Build the configured scenario (``cfg`` is the run's DataConfig)."""
    data = SCENARIOS.get(cfg.scenario, "data.scenario")(cfg)
    for g in data.groups:
        for split in ("train", "val", "test"):
            check_labels(getattr(g, split).y, data.num_classes, f"scenario {cfg.scenario!r}, group {g.name} ({split})")
    return data
