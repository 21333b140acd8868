"""Every key a run writes, with its one definition (docs/configs.md, "What a run writes").

Both modes write each key with the meaning below, so ``compare`` can overlay them. When a
definition changes, ``METRICS_VERSION`` goes up: runs written under another version are
never put side by side (``check_comparable``).
"""

from __future__ import annotations

from fedanchors.errors import DataError

METRICS_VERSION = 2  # 1: `loss`/`fit` were unweighted client means federated; `w2_anchor` mixed splits

DEFINITIONS: dict[str, str] = {
    "epoch / round": "the step of the loop (1-based); a record is written at each evaluated step",
    "loss": "training objective sum_g w_g CE_g with the method's group weights w (normalised over the groups "
    "present), mean over the epoch's batches (centralized) or at each client's reported group loss (federated)",
    "fit": "sum_g w_g fit_g: the W2 fit of the codes to the anchors in the local objective, same weights",
    "sep": "the anchor separation loss (last server step, federated)",
    "anchor_fit": "the W2 fit objective of the anchors to the groups' training class moments after the anchor "
    "update (federated: the server's; centralized: with anchors.update barycenter)",
    "acc_all": "accuracy over every validation example of every group (null unless every group was evaluated)",
    "acc_group:<g>": "validation accuracy of group g",
    "acc_wg": "min over all groups of acc_group (null unless every group was evaluated)",
    "acc_bal": "mean over classes of the per-class recall pooled over all groups (null unless all evaluated)",
    "acc_<set>": "accuracy over the classes of a named class set (e.g. head/tail)",
    "loss_group:<g>": "mean validation cross-entropy of group g",
    "q:<g>": "the method's weight of group g after the step: GroupDRO's q (with method.mix > 0 the "
    "objective weighs group g by (1 - mix) q_g + mix n_g / N), AFL's / DRFA's lambda, ERM's share "
    "of the examples, IW's uniform weight, balanced's normalised lambdas",
    "w2_anchor:<g>": (
        "centralized: mean over classes of W2^2(anchor_c, group g's validation class Gaussian), "
        "under anchors.covariance (diag: the diagonal Gaussians; none: the squared mean distance)"
    ),
    "w2_anchor_train:<g>": "federated: the same on the class moments of the clients' training codes",
    "client_acc_worst / client_acc_p10 / client_acc_std": "accuracy of each client on its own validation slice: "
    "the worst, 10th percentile and standard deviation over all clients (null unless every client was "
    "evaluated); federated, and centralized when the config has a population (federated.clients > 1)",
    "client_acc_worst:<g> / client_acc_p10:<g> / client_acc_std:<g>": "the same over group g's clients",
    "client_accs": "the list of every client's validation accuracy (partition order; null for an empty slice "
    "or a held-out new client)",
    "val_new_* / test_new_*": "summary, federated.holdout > 0: the held-out new clients after each adapted its own "
    "encoder to the selected model: acc_all, acc_wg (null unless every new client answered), acc_bal, "
    "acc_group:<g>, client_acc_mean / _worst / _p10 over the new clients",
    "update_norm_median / update_norm_max": "federated: the median and largest L2 norm over the answering "
    "clients of their update (reply - global) of the head and shared encoders, before federated.max_update_norm",
    "move:head / move:enc:<space>": "the L2 norm of the change of the head's (the space's encoder's) parameters "
    "over the epoch (centralized) or the round (federated: the server's shared parts only): what each part learned",
    "eval_complete": "federated: every group answered the evaluation",
    "eval_clients": "federated, federated.eval_clients > 0: the clients the record's validation metrics are over "
    "(the seeded cohort, every group in it); the summary's test_* are over every client",
    "bytes_sent / bytes_received": "federated: array payload bytes since the previous record (the summary: the "
    "run's totals), evaluation included",
    "bytes_train": "federated: of bytes_sent + bytes_received, the traffic training needs (the rounds' messages "
    "and replies, DRFA's loss queries, secure aggregation), without evaluation's",
    "test_*": "summary: the metric above on the test split, for the step with the best validation acc_wg",
}


def check_comparable(summaries: dict[str, dict]) -> None:
    """Refuse runs whose metric keys were written under different definitions."""
    versions = {name: int(s.get("metrics_version", 1)) for name, s in summaries.items()}
    if len(set(versions.values())) > 1:
        detail = ", ".join(f"{n}: v{v}" for n, v in versions.items())
        raise DataError(
            f"these runs define their metric keys differently ({detail}; see fedanchors.metric_keys); "
            "re-run the older ones before comparing"
        )
