"""A client's messages in secure aggregation (``privacy.secure_aggregation``): its release is
kept in its node's Context after training, and ``clients.secagg.SecAggClient``'s steps run
one query message each (``secagg_stage``: share_keys, masked, unmask)."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from clients.secagg import SecAggClient
from fedanchors.privacy import BLOCKS

_STATE, _VECTOR = "secagg", "secagg_vector"


def flat_release(release: dict) -> np.ndarray:
    """The release's blocks as one vector, in ``BLOCKS`` order (the server unflattens the sum)."""
    return np.concatenate([np.asarray(release[k], dtype=np.float64).reshape(-1) for k in BLOCKS if k in release])


def _save(context: Context, client: SecAggClient) -> None:
    s = client.state()
    rec = {k: s[k] for k in SecAggClient.FIELDS}
    for name, field in (("public", ("pk1", "pk2")), ("share", ("b", "sk"))):
        d = s["public" if name == "public" else "shares"]
        if d:  # (a ConfigRecord cannot hold an empty list)
            rec[f"{name}_ids"] = [int(k) for k in d]
            rec |= {f"{name}_{f}": [v[i] for v in d.values()] for i, f in enumerate(field)}
    context.state[_STATE] = ConfigRecord(rec)


def _load(context: Context) -> SecAggClient:
    r = context.state[_STATE]
    s = {k: r[k] for k in SecAggClient.FIELDS}
    get = lambda k: r[k] if k in r else []  # noqa: E731
    s["public"] = {str(i): (a, b) for i, a, b in zip(get("public_ids"), get("public_pk1"), get("public_pk2"))}
    s["shares"] = {str(i): (a, b) for i, a, b in zip(get("share_ids"), get("share_b"), get("share_sk"))}
    return SecAggClient.load(s)


def begin(msg: Message, context: Context, pid: int, n: int, release: dict, threshold: int) -> Message:
    """After training: keep the release, make the keys, reply with the public keys only."""
    context.state[_VECTOR] = ArrayRecord({"v": Array(flat_release(release))})
    client = SecAggClient(pid, threshold)
    _save(context, client)
    pk1, pk2 = client.setup()
    keys = ConfigRecord({"pk1": pk1, "pk2": pk2})
    metrics = MetricRecord({"partition": pid, "num-examples": n})
    return Message(RecordDict({"secagg": keys, "metrics": metrics}), reply_to=msg)


def step(msg: Message, context: Context, pid: int) -> Message:
    """One step of the protocol, as the server's message says."""
    conf = msg.content["config"]
    stage = str(conf["secagg_stage"])
    client = _load(context)
    out: dict = {"partition": pid}
    if stage == "share_keys":
        public = {int(i): (a, b) for i, a, b in zip(conf["ids"], conf["pk1"], conf["pk2"])}
        cts = client.share_keys(public)
        out |= {"dst": list(cts), "ct": list(cts.values())}
    elif stage == "masked":
        vector = context.state[_VECTOR]["v"].numpy()
        masked = client.masked(dict(zip(conf.get("src", []), conf.get("ct", []))), vector, float(conf["clip"]))
        _save(context, client)
        return Message(
            RecordDict({"masked": ArrayRecord({"v": Array(masked)}), "info": ConfigRecord(out)}), reply_to=msg
        )
    elif stage == "unmask":
        shares = client.unmask(list(conf["active"]), list(conf.get("dead", [])))
        out |= {"ids": list(shares), "shares": list(shares.values())}
        del context.state[_VECTOR]  # the round is over for this client
    else:
        raise ValueError(f"unknown secure-aggregation stage {stage!r}")
    _save(context, client)
    return Message(RecordDict({"info": ConfigRecord(out)}), reply_to=msg)
