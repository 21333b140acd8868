"""fedanchors: group-robust learning across heterogeneous groups, centralized or federated.

The library never imports flwr; ``clients/`` and ``server/`` are its Flower layers.
"""

__version__ = "0.1.0"
