"""Secure aggregation of a group's releases, the SecAgg+ protocol (Bell et al., CCS 2020) over
Flower's own primitives (``flwr.common.secure_aggregation``: Shamir shares, ECDH key
agreement and Fernet encryption, quantisation, the seeded mask generator), with every client
of a group a neighbour of every other, as Flower's ``secaggplus_mod`` does.

A client (``SecAggClient``) in four steps, one message each:

1. ``setup``: two key pairs, one for the pairwise masks (1), one for encrypting shares (2);
   the public halves go to the server.
2. ``share_keys``: a random seed b for its private mask; b and its mask key sk1 split into
   Shamir shares (threshold t), each encrypted for one neighbour (the server only routes
   ciphertexts it cannot read).
3. ``masked``: its vector quantised into [0, target] (values clipped to +-clip first), plus
   PRG(b), plus PRG(s_uv) for every neighbour v with a larger id, minus it for a smaller one,
   mod the modulus: uniformly random to the server on its own.
4. ``unmask``: for each surviving neighbour its share of b, for each neighbour that dropped
   after step 2 its share of sk1.

``unmask_sum`` (the server's side) rebuilds each survivor's b and each dropped client's sk1
from t shares, removes their masks and returns the sum of the survivors' vectors: the pairwise
masks of survivors cancel, a dropped client's are recomputed from its rebuilt key. Nothing a
client sends reveals its vector unless t clients collude.
"""

from __future__ import annotations

import os

import numpy as np
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, encrypt, generate_shared_key
from flwr.common.secure_aggregation.quantization import quantize
from flwr.common.secure_aggregation.secaggplus_utils import (
    pseudo_rand_gen,
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

TARGET = 2**22  # quantisation levels per value (Flower's default quantization_range)
MODULUS = 2**32  # the masked sums' modulus: room for MODULUS // TARGET = 1024 clients


def _mask(seed: bytes, n: int) -> np.ndarray:
    return pseudo_rand_gen(seed, MODULUS, [(n,)])[0]


def _pairwise(sk1: bytes, pk1: bytes, n: int) -> np.ndarray:
    return _mask(generate_shared_key(bytes_to_private_key(sk1), bytes_to_public_key(pk1)), n)


class SecAggClient:
    """One client's side of a round's secure aggregation (its state between the steps)."""

    FIELDS = ("nid", "threshold", "sk1", "pk1", "sk2", "pk2", "seed", "revealed")

    def __init__(self, nid: int, threshold: int) -> None:
        self.nid, self.threshold = nid, threshold
        sk1, pk1 = generate_key_pairs()
        sk2, pk2 = generate_key_pairs()
        self.sk1, self.pk1 = private_key_to_bytes(sk1), public_key_to_bytes(pk1)
        self.sk2, self.pk2 = private_key_to_bytes(sk2), public_key_to_bytes(pk2)
        self.seed = os.urandom(32)
        self.revealed = False  # unmask answered: a client reveals shares once a round
        self.public: dict[int, tuple[bytes, bytes]] = {}
        self.shares: dict[int, tuple[bytes, bytes]] = {}  # neighbour -> (its b share, its sk1 share) held here

    def setup(self) -> tuple[bytes, bytes]:
        return self.pk1, self.pk2

    def share_keys(self, public: dict[int, tuple[bytes, bytes]]) -> dict[int, bytes]:
        """Every neighbour's encrypted shares of this client's b and sk1 (neighbour id -> ciphertext)."""
        if len(public) < self.threshold:
            raise ValueError(f"{len(public)} clients in the group, fewer than the threshold {self.threshold}")
        if public.get(self.nid) != (self.pk1, self.pk2):
            raise ValueError("the server's key list misstates this client's public keys")
        keys = [k for pair in public.values() for k in pair]
        if len(set(keys)) != len(keys):
            raise ValueError("two clients' public keys are identical")
        self.public = dict(public)
        ids = sorted(public)
        b_shares = create_shares(self.seed, self.threshold, len(ids))
        sk_shares = create_shares(self.sk1, self.threshold, len(ids))
        out = {}
        for i, nid in enumerate(ids):
            if nid == self.nid:
                self.shares[nid] = (b_shares[i], sk_shares[i])
                continue
            key = generate_shared_key(bytes_to_private_key(self.sk2), bytes_to_public_key(public[nid][1]))
            out[nid] = encrypt(key, share_keys_plaintext_concat(self.nid, nid, b_shares[i], sk_shares[i]))
        return out

    def masked(self, ciphertexts: dict[int, bytes], vector: np.ndarray, clip: float) -> np.ndarray:
        """This client's masked, quantised vector, after reading the shares sent to it."""
        for src, ct in ciphertexts.items():
            key = generate_shared_key(bytes_to_private_key(self.sk2), bytes_to_public_key(self.public[src][1]))
            actual, dst, b_share, sk_share = share_keys_plaintext_separate(decrypt(key, ct))
            if actual != src or dst != self.nid:
                raise ValueError(f"a share from {actual} for {dst} arrived at {self.nid} as from {src}")
            self.shares[src] = (b_share, sk_share)
        n = vector.size
        q = quantize([np.asarray(vector, dtype=np.float64).reshape(-1)], clip, TARGET)[0].astype(np.int64)
        q = q + _mask(self.seed, n)
        for nid, (pk1, _) in self.public.items():
            if nid == self.nid:
                continue
            m = _pairwise(self.sk1, pk1, n)
            q = q + m if self.nid > nid else q - m
        return np.mod(q, MODULUS)

    def unmask(self, active: list[int], dead: list[int]) -> dict[int, bytes]:
        """Shares of b for the survivors (this client included), of sk1 for the dropped.

        The checks a client can make on its own against a server that lies about who dropped:
        no client is named both a survivor and dropped (its b and sk1 shares together unmask its
        vector), every named client is one whose shares this client holds, this client (which
        sent its masked vector) is a survivor, and shares are revealed once a round. A server
        that names a client dropped to some clients and a survivor to others is caught only by
        SecAgg's signed consistency round, which this protocol (semi-honest server) leaves out."""
        if self.revealed:
            raise ValueError("the server asked for this round's shares a second time: refused")
        both = sorted(set(active) & set(dead))
        if both:
            raise ValueError(f"the server names client(s) {both} both survivors and dropped: refused")
        unknown = sorted((set(active) | set(dead)) - set(self.shares))
        if unknown:
            raise ValueError(f"the server names client(s) {unknown} this client holds no shares of: refused")
        if self.nid not in active:
            raise ValueError(f"the server names client {self.nid} dropped, yet asks it to unmask: refused")
        if len(active) < self.threshold:
            raise ValueError(f"{len(active)} survivors, fewer than the threshold {self.threshold}")
        self.revealed = True
        return {**{n: self.shares[n][0] for n in active}, **{n: self.shares[n][1] for n in dead}}

    def state(self) -> dict:
        """What the client keeps between the steps (in its node's Context)."""
        out = {k: getattr(self, k) for k in self.FIELDS}
        out["public"] = {str(k): list(v) for k, v in self.public.items()}
        out["shares"] = {str(k): list(v) for k, v in self.shares.items()}
        return out

    @classmethod
    def load(cls, state: dict) -> SecAggClient:
        c = cls.__new__(cls)
        for k in cls.FIELDS:
            setattr(c, k, state[k])
        c.public = {int(k): tuple(v) for k, v in state["public"].items()}
        c.shares = {int(k): tuple(v) for k, v in state["shares"].items()}
        return c


def unmask_sum(
    masked: dict[int, np.ndarray],
    shares: dict[int, dict[int, bytes]],
    public: dict[int, tuple[bytes, bytes]],
    dead: list[int],
    threshold: int,
    clip: float,
) -> np.ndarray:
    """The sum of the survivors' vectors (float64) from their masked vectors and the shares
    each survivor returned (``shares[responder][about]``)."""
    active = sorted(masked)
    n = next(iter(masked.values())).size
    total = np.zeros(n, dtype=np.int64)
    for v in masked.values():
        total = np.mod(total + v, MODULUS)
    for u in active:  # each survivor's private mask
        got = [s[u] for s in shares.values() if u in s]
        if len(got) < threshold:
            raise ValueError(f"{len(got)} shares of client {u}'s mask seed, fewer than the threshold {threshold}")
        total = np.mod(total - _mask(combine_shares(got[:threshold]), n), MODULUS)
    for d in dead:  # a dropped client's pairwise masks, left in the survivors' vectors
        got = [s[d] for s in shares.values() if d in s]
        if len(got) < threshold:
            raise ValueError(f"{len(got)} shares of dropped client {d}'s key, fewer than the threshold {threshold}")
        sk1 = combine_shares(got[:threshold])
        for u in active:
            m = _pairwise(sk1, public[u][0], n)
            total = np.mod(total - m if u > d else total + m, MODULUS)  # undo what u added for d
    k = len(active)
    return total.astype(np.float64) * (2 * clip / TARGET) - k * clip
