"""Flower ClientApp: each group of data is a client with its own encoder."""
