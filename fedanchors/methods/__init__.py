"""Methods: how groups are weighted in the loss (centralized) and the aggregation (federated).

Each method maps per-group example counts and losses to weights w (G,) that sum to 1 over
the groups present: centralized mode minimises sum_g w_g CE_g, federated mode averages the
head with the same w. ``step`` runs after the optimizer step (after the round). ``classic``:
ERM, importance weighting, fixed lambdas, GroupDRO; ``robust``: the robust federated
objectives (AFL, q-FFL, FGDRO's CVaR and KL).
"""

from fedanchors.methods import classic, robust  # noqa: F401  (register the methods)
from fedanchors.methods.base import METHODS, Method, build_method, masked

__all__ = ["METHODS", "Method", "build_method", "masked"]
