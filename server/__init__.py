"""Flower ServerApp and the FedAnchors strategy."""
