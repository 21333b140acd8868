"""Checks of a config against the data it names, before any run directory is made.

Entries that name groups or clients (``federated.group_clients``, ``method.lambdas``,
``optim.group_batch``, a population's partition, the DFR layer) can only be checked once
the scenario is built; every entry point calls ``check_against_data`` right after building
the data, so a mistake is one line with nothing written.
"""

from __future__ import annotations

from fedanchors.config import Config
from fedanchors.errors import ConfigError


def check_against_data(cfg: Config, data) -> None:
    """Config entries that name groups or clients must match the scenario (before any run dir)."""
    from fedanchors.dfr import check_dfr_layer
    from fedanchors.methods import build_method
    from fedanchors.population import build_population
    from fedanchors.train import group_batch_sizes

    group_batch_sizes(data.names, cfg.optim)
    build_method(cfg.method, data.names)
    check_dfr_layer(cfg, data)
    if cfg.mode != "federated":
        return
    f = cfg.federated
    unknown = sorted(set(f.group_clients) - set(data.names))
    if unknown:
        raise ConfigError(f"federated.group_clients names no group {unknown}; the groups are {data.names}")
    population = build_population(data, f, cfg.seed)  # a partition that cannot be made fails here
    n = len(population)
    t = cfg.privacy.secagg_threshold
    if cfg.privacy.enabled and cfg.privacy.secure_aggregation:
        small = [data.names[g] for g in range(len(data.names)) if sum(c.group == g for c in population) < t]
        if small:
            raise ConfigError(
                f"privacy.secagg_threshold={t}: group(s) {small} have fewer clients, so their sums could never be "
                "aggregated securely; give them more clients (federated.clients / group_clients) or lower it"
            )
    if cfg.method.level == "client" and n < 2:
        raise ConfigError(
            f"method.level: client weighs clients against each other, and this population has {n} client(s) "
            "that train; use method.level: group or more clients (federated.clients / group_clients)"
        )
    if f.clients_per_round > n:
        raise ConfigError(f"federated.clients_per_round={f.clients_per_round} exceeds the population of {n} clients")
    if f.clients_per_round and f.sampling != "uniform" and f.clients_per_round < len(data.groups):
        raise ConfigError(
            f"federated.clients_per_round={f.clients_per_round} is below the {len(data.groups)} groups that "
            f"{f.sampling} sampling gives a client each round; raise it or use federated.sampling: uniform"
        )
    if f.fault_partition >= n:
        raise ConfigError(
            f"federated.fault_partition={f.fault_partition} names no client: partitions are 0..{n - 1}; "
            "use one of them or -1 (off)"
        )
    bad = [x.partition for x in f.faults if x.partition >= n]
    if bad:
        raise ConfigError(f"federated.faults: partition {bad[0]} names no client: partitions are 0..{n - 1}")
    per_round = f.clients_per_round or n
    if f.aggregation == "krum" and per_round < 2 * f.krum_byzantine + 3:
        raise ConfigError(
            f"federated.aggregation: krum with krum_byzantine={f.krum_byzantine} needs at least "
            f"{2 * f.krum_byzantine + 3} clients per round, the run has {per_round}; lower krum_byzantine"
        )
    if f.min_clients > n:
        raise ConfigError(f"federated.min_clients={f.min_clients} exceeds the population of {n} clients")
