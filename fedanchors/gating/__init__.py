"""The long-tail gate: a gating network over long-tail experts (``python -m fedanchors.gating``)."""
