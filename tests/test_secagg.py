"""Secure aggregation (SecAgg+ over Flower's primitives): the server's sum equals the plain
sum, a client that drops after sharing its keys leaves the right sum, no message the server
reads holds a client's release, and a federated run gives the same model as without it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clients.secagg import TARGET, SecAggClient, unmask_sum
from fedanchors.errors import ConfigError

from .conftest import small_config
from .flower_harness import run_rounds


def _protocol(vectors: dict[int, np.ndarray], threshold: int, drop_after_sharing=(), clip=1.0):
    clients = {i: SecAggClient(i, threshold) for i in vectors}
    public = {i: c.setup() for i, c in clients.items()}
    sent = {i: c.share_keys(public) for i, c in clients.items()}
    inbox = {i: {s: sent[s][i] for s in vectors if s != i} for i in vectors}
    masked = {i: clients[i].masked(inbox[i], vectors[i], clip) for i in vectors if i not in drop_after_sharing}
    dead = sorted(drop_after_sharing)
    shares = {i: clients[i].unmask(sorted(masked), dead) for i in masked}
    _protocol.clients = clients
    return unmask_sum(masked, shares, public, dead, threshold, clip), masked, sent, shares


def test_the_secure_sum_is_the_plain_sum_even_at_the_clipping_range():
    rng = np.random.default_rng(0)
    vectors = {i: rng.uniform(-1, 1, 500) for i in (3, 9, 14, 20)}
    vectors[9][:4] = [1.0, -1.0, 0.999999, -0.999999]  # at and next to the clipping range
    vectors[14][:4] = [1.0, -1.0, 1.0, -1.0]
    got, masked, _, _ = _protocol(vectors, threshold=3)
    assert np.abs(got - sum(vectors.values())).max() < 1e-5
    for i, v in masked.items():  # what the server reads of a client is not its quantised vector
        plain = np.round((vectors[i] + 1) * TARGET / 2)
        assert np.abs(v - plain).mean() > TARGET  # masked values spread over the whole modulus


def test_a_client_that_drops_after_sharing_leaves_the_right_sum():
    rng = np.random.default_rng(1)
    vectors = {i: rng.uniform(-1, 1, 300) for i in (1, 2, 5, 8, 13)}
    got, masked, _, _ = _protocol(vectors, threshold=3, drop_after_sharing=(5, 13))
    assert sorted(masked) == [1, 2, 8]
    assert np.abs(got - sum(vectors[i] for i in (1, 2, 8))).max() < 1e-5
    with pytest.raises(ValueError, match="fewer than the threshold"):
        _protocol(vectors, threshold=4, drop_after_sharing=(5, 13))  # 3 survivors cannot rebuild


def test_a_client_refuses_a_server_that_lies_about_who_dropped():
    rng = np.random.default_rng(3)
    vectors = {i: rng.uniform(-1, 1, 20) for i in (1, 2, 3, 4)}
    clients = {i: SecAggClient(i, 2) for i in vectors}
    public = {i: c.setup() for i, c in clients.items()}
    sent = {i: c.share_keys(public) for i, c in clients.items()}
    for i in vectors:
        clients[i].masked({s: sent[s][i] for s in vectors if s != i}, vectors[i], 1.0)
    c = clients[1]
    # both of client 2's shares would let the server strip every mask off its vector
    with pytest.raises(ValueError, match=r"client\(s\) \[2\] both survivors and dropped"):
        c.unmask([1, 2, 3], [2])
    with pytest.raises(ValueError, match=r"\[9\] this client holds no shares of"):
        c.unmask([1, 2, 3], [9])
    with pytest.raises(ValueError, match="client 1 dropped, yet asks it to unmask"):
        c.unmask([2, 3], [1])
    assert not c.revealed  # nothing was revealed by a refused request
    shares = c.unmask([1, 2, 3], [4])
    assert sorted(shares) == [1, 2, 3, 4] and shares[4] == c.shares[4][1] and shares[2] == c.shares[2][0]
    with pytest.raises(ValueError, match="a second time"):  # e.g. to ask again with 2 named dropped
        c.unmask([1, 3], [2, 4])
    assert SecAggClient.load(c.state()).revealed  # kept across the client's steps


def test_no_message_holds_a_clients_secrets_in_the_clear():
    rng = np.random.default_rng(2)
    vectors = {i: rng.uniform(-1, 1, 50) for i in (4, 6, 7)}
    _, _, sent, shares = _protocol(vectors, threshold=2)
    clients = _protocol.clients
    for cts in sent.values():  # encrypted shares only: no client's seed or mask key appears in them
        for ct in cts.values():
            assert all(c.seed not in ct and c.sk1 not in ct for c in clients.values())
    for held in shares.values():  # the unmask shares: each alone is one share, not the secret
        assert all(c.seed not in b and c.sk1 not in b for b in held.values() for c in clients.values())


def test_secure_aggregation_bad_settings_are_one_line(tmp_path):
    priv = {"enabled": True, "target_epsilon": 8.0, "secure_aggregation": True}
    with pytest.raises(ConfigError, match=r"privacy\.secagg_threshold"):
        small_config(tmp_path, mode="federated", privacy={**priv, "secagg_threshold": 1})
    with pytest.raises(ConfigError, match=r"privacy\.secagg_threshold=3"):
        small_config(
            tmp_path, mode="federated", privacy=priv, federated={"clients_per_round": 2, "sampling": "uniform"}
        )
    cfg = small_config(tmp_path, mode="federated", privacy=priv, federated={"clients": 2})  # 2 clients a group < 3
    from fedanchors.preflight import check_against_data
    from fedanchors.runs import build_data

    with pytest.raises(ConfigError, match="could never be aggregated"):
        check_against_data(cfg, build_data(cfg.data))


def test_a_federated_round_with_secure_aggregation_matches_the_plain_private_one(tmp_path):
    heads, grids = {}, {}
    for secure in (False, True):
        cfg = small_config(
            tmp_path / str(secure), mode="federated",
            federated={"rounds": 2, "local_steps": 2, "clients": 3},
            privacy={"enabled": True, "noise_multiplier": 1.0, "seeded_noise": True, "secure_aggregation": secure,
                     "secagg_threshold": 2},
        )  # fmt: skip
        server, grid, summary = run_rounds(cfg, 6)
        heads[secure], grids[secure] = server.head.state_dict(), grid
        assert 0 <= summary["test_acc_wg"] <= 1
    for k, v in heads[False].items():  # the same sums, up to the quantisation (2 / 2^22 a value)
        assert torch.allclose(heads[True][k], v, atol=1e-4), k
    received = grids[True].received
    assert not any("private" in m.content.array_records for m in received if m.has_content())
    masked = [m for m in received if m.has_content() and "masked" in m.content.array_records]
    assert len(masked) == 2 * 6  # every client of both groups, both rounds
    for m in masked:
        v = m.content["masked"]["v"].numpy()
        assert v.dtype == np.int64 and v.max() > TARGET * 8  # masked: far outside the quantised range
