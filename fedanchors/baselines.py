"""Named federated baselines in the same harness: ``baseline: <name>`` in a config (or
``--set baseline=<name>``) merges that method's settings over the config's, so every method
runs on the same groups, population, budget and metrics. Settings a baseline does not name
(learning rate, rounds, clients, sampling) stay the config's.

- ``fedavg`` (McMahan et al. 2017): one encoder for every client, every group's inputs
  brought to one common shape (``data.common_input``: ``resize`` unless the config says
  ``pad``), one head, no anchors, ERM weights.
- ``lg_fedavg`` (Liang et al. 2020, "Think locally, act globally"): each client's encoder
  private, the head global, no anchors, ERM weights.
- ``fedproto`` (Tan et al. 2022): each client's encoder and head local; class prototypes
  (means) shared and averaged by counts; local loss CE + lambda |z - prototype_y|^2;
  prediction by the local model.
- ``flic_like`` (after FLIC, Rakotomamonjy et al. 2024): private encoders, diagonal Gaussian
  anchors fitted by Wasserstein barycenters, ERM weights (no GroupDRO).
- ``fedanchors``: this library's method: full-covariance anchors (W2 fit and barycenter),
  the classifier separation, GroupDRO; encoders as the config shares them.
- ``fedanchors_private``: the same with every client's encoder private (as lg_fedavg,
  FedProto and FLIC keep theirs), for a like-for-like comparison.
- ``afl`` (Mohri et al. 2019), ``qffl`` (Li et al. 2020), ``drfa`` (Deng et al. 2020),
  ``fgdro_cvar`` and ``fgdro_kl`` (Guo and Yang 2024): the robust federated objectives
  (``fedanchors.methods.robust``) over FedAvg's model: encoders shared per space, one global
  head, no anchors; the group weights (aggregation weights federated, loss weights
  centralized) are the method's; q-FFL federated takes the q-FedAvg server step, DRFA draws
  the clients by lambda. ``fgdro_kl_adam``: FGDRO-KL with local Adam (each client keeps its
  Adam moments between rounds; the server does not average them).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from fedanchors.registry import Registry

NO_ANCHORS = {"lambda_fit": 0.0, "lambda_sep": 0.0}


@dataclass(frozen=True)
class Baseline:
    """A named method: the settings merged over a config's (they win), and ``defaults``
    merged under them (applied where the config leaves the key at ``none`` or unset)."""

    settings: dict
    defaults: dict = field(default_factory=dict)


BASELINES: Registry[Baseline] = Registry("baseline")


def baseline(name: str, settings: dict, defaults: dict | None = None) -> Baseline:
    """Register ``settings`` (a nested mapping of config sections) as ``baseline: name``."""
    return BASELINES.register(name)(Baseline(settings, defaults or {}))


baseline(
    "fedavg",
    {
        "anchors": NO_ANCHORS,
        "method": {"name": "erm"},
        "federated": {"encoder_sharing": "space", "head_sharing": "global"},
        "dfr": {"enabled": False},
    },
    defaults={"data": {"common_input": "resize"}},
)
baseline(
    "lg_fedavg",
    {
        "anchors": NO_ANCHORS,
        "method": {"name": "erm"},
        "federated": {"encoder_sharing": "client", "head_sharing": "global"},
        "dfr": {"enabled": False},
    },
)
baseline(
    "fedproto",
    {
        "anchors": {
            "covariance": "none",
            "fit": "prototype",
            "update": "barycenter",
            "lambda_fit": 1.0,
            "lambda_sep": 0.0,
        },
        "method": {"name": "erm"},
        "federated": {"encoder_sharing": "client", "head_sharing": "local"},
        "dfr": {"enabled": False},
    },
)
baseline(
    "flic_like",
    {
        "anchors": {"covariance": "diag", "fit": "w2", "update": "barycenter"},
        "method": {"name": "erm"},
        "federated": {"encoder_sharing": "client", "head_sharing": "global"},
    },
)
baseline(
    "fedanchors",
    {
        "anchors": {"covariance": "full", "fit": "w2"},
        "method": {"name": "groupdro"},
        "federated": {"head_sharing": "global"},
    },
)
baseline(
    "fedanchors_private",
    {
        "anchors": {"covariance": "full", "fit": "w2"},
        "method": {"name": "groupdro"},
        "federated": {"head_sharing": "global", "encoder_sharing": "client"},
    },
)


def _merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` merged in section by section (``over`` wins)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = (
            _merge(out.get(k) or {}, v) if isinstance(v, dict) and isinstance(out.get(k), (dict, type(None))) else v
        )
    return out


def apply_baseline(raw: dict) -> dict:
    """``raw`` with its ``baseline``'s settings merged over it (the baseline's win)."""
    name = raw["baseline"]
    b = BASELINES.get(str(name), "baseline")
    merged = _merge(raw, b.settings)
    for section, values in b.defaults.items():
        given = raw.get(section) or {}
        for key, default in values.items():
            if given.get(key, "none") == "none":
                merged[section] = {**(merged.get(section) or {}), key: default}
    return merged


for _name in ("afl", "qffl", "drfa", "fgdro_cvar", "fgdro_kl", "fgdro_kl_adam"):  # over FedAvg's model
    baseline(
        _name,
        {
            "anchors": NO_ANCHORS,
            # GroupDRO's knobs a config may set do not carry over to the method's own step
            "method": {"name": _name.removesuffix("_adam"), "mix": 0.0, "eta_unit": "update", "adjustment": 0.0},
            "federated": {"encoder_sharing": "space", "head_sharing": "global"},
            "dfr": {"enabled": False},
            **({"optim": {"name": "adam"}} if _name.endswith("_adam") else {}),
        },
    )
