"""The server's side of secure aggregation (``privacy.secure_aggregation``): after the train
exchange, in which each sampled client kept its release and sent its public keys, three more
exchanges per round (share keys, masked vectors, unmask shares; ``clients.secagg`` explains
the protocol) give the server each group's *sum* of releases and nothing else. A group with
fewer answering clients than ``privacy.secagg_threshold`` at any step contributes nothing
this round (logged, and counted as missing like a group without replies).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, MessageType, RecordDict

from clients.secagg import MODULUS, unmask_sum
from fedanchors.fedserver import ClientUpdate
from fedanchors.privacy import BLOCKS

log = logging.getLogger("fedanchors.server")


def _bytes(msg: Message) -> int:
    """Every record's payload: the arrays and the keys, ciphertexts and shares in configs."""
    if not msg.has_content():
        return 0
    return sum(r.count_bytes() for r in msg.content.values())


def clip_range(server) -> float:
    """Every value of a release lies in +-1 (each block has norm <= 1); local noise widens it by
    6 standard deviations (a value beyond is clipped, post-processing of the noisy release)."""
    p = server.cfg.privacy
    return 1.0 + (6.0 * server.privacy_std if p.noise == "local" else 0.0)


def _exchange(server, grid, rnd: int, confs: dict[int, dict], timeout: float) -> dict[int, Message]:
    """One query per client with its config; the successful replies by partition."""
    msgs = []
    for pid, conf in confs.items():
        rec = ConfigRecord({k: v for k, v in conf.items() if not (isinstance(v, list) and not v)})
        m = Message(RecordDict({"config": rec}), message_type=MessageType.QUERY, dst_node_id=server.nodes[pid],
                    group_id=str(rnd))  # fmt: skip
        server.count_bytes(_bytes(m), 0)
        msgs.append(m)
    out = {}
    for r in grid.send_and_receive(msgs, timeout=timeout):
        server.count_bytes(0, _bytes(r))
        pid = server.pid_of[r.metadata.src_node_id]
        if r.has_error():
            log.warning(
                "round %d: client %d failed in secure aggregation: %s", rnd, pid, r.error.reason.splitlines()[-1:]
            )
        else:
            out[pid] = r
    return out


def _group_sum(server, grid, rnd: int, keys: dict[int, tuple[bytes, bytes]], timeout: float):
    """The sum of one group's releases, and the clients it is over (or None below the threshold)."""
    t = server.cfg.privacy.secagg_threshold
    ids = sorted(keys)
    pub = {"ids": ids, "pk1": [keys[i][0] for i in ids], "pk2": [keys[i][1] for i in ids], "secagg_stage": "share_keys"}
    shared = _exchange(server, grid, rnd, {p: pub for p in ids}, timeout)
    if len(shared) < t:
        return None
    inbox: dict[int, dict[int, bytes]] = {p: {} for p in shared}
    for src, r in shared.items():
        info = r.content["info"]
        for dst, ct in zip(info.get("dst", []), info.get("ct", [])):
            if dst in inbox:
                inbox[dst][src] = ct
    clip = clip_range(server)
    confs = {
        p: {"secagg_stage": "masked", "src": list(box), "ct": list(box.values()), "clip": clip}
        for p, box in inbox.items()
    }
    masked = {}
    for p, r in _exchange(server, grid, rnd, confs, timeout).items():
        v = r.content["masked"]["v"].numpy()
        if v.dtype.kind in "iu" and v.ndim == 1 and bool(((v >= 0) & (v < MODULUS)).all()):
            masked[p] = v.astype(np.int64)
    dead = sorted(set(shared) - set(masked))
    if len(masked) < t:
        return None
    conf = {"secagg_stage": "unmask", "active": sorted(masked), "dead": dead}
    got = _exchange(server, grid, rnd, {p: conf for p in masked}, timeout)
    shares = {p: dict(zip(r.content["info"]["ids"], r.content["info"]["shares"])) for p, r in got.items()}
    return unmask_sum(masked, shares, {p: keys[p] for p in shared}, dead, t, clip), sorted(masked)


def _blocks(vec: np.ndarray, shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for k in BLOCKS:
        if k in shapes:
            n = math.prod(shapes[k])
            out[k] = torch.from_numpy(vec[i : i + n].copy()).reshape(shapes[k])
            i += n
    return out


def aggregate_secure(server, grid, rnd: int, replies, timeout: float) -> dict[str, float]:
    """Round ``rnd`` from the key replies of its train exchange: each group's sum by secure
    aggregation, then the private aggregation over those sums."""
    keys: dict[int, dict[int, tuple[bytes, bytes]]] = {}
    metrics = {}
    for pid, r in server._split_replies(rnd, replies, "train"):
        c = r.content
        if "secagg" not in c.config_records or "metrics" not in c.metric_records:
            server._reject(rnd, "train", pid, r, "no public keys for secure aggregation")
            continue
        keys.setdefault(server.cgroup[pid], {})[pid] = (c["secagg"]["pk1"], c["secagg"]["pk2"])
        metrics[pid] = dict(c["metrics"])
    sums, ok = {}, []
    for g, group_keys in sorted(keys.items()):
        res = (
            _group_sum(server, grid, rnd, group_keys, timeout)
            if len(group_keys) >= server.cfg.privacy.secagg_threshold
            else None
        )
        if res is None:
            log.warning("round %d: group %s: fewer than %d clients through secure aggregation; left out this round",
                        rnd, server.names[g], server.cfg.privacy.secagg_threshold)  # fmt: skip
            continue
        vec, members = res
        sums[g] = (_blocks(vec, server.release_shapes(members[0])), len(members), members[0])
        ok += [ClientUpdate(p, metrics[p]) for p in members]
    server.secure_sums = sums
    try:
        return server.aggregate_round(rnd, sorted(ok, key=lambda u: u.pid))
    finally:
        server.secure_sums = None
