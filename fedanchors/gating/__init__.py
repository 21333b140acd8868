"""System 4: a gating network over long-tail experts (``python -m fedanchors.gating``)."""
