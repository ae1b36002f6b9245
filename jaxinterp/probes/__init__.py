"""Linear probes fitted for every layer × task in one compiled call.

Features are ``[layer, n, d]`` (e.g. from :func:`layer_features`), labels ``[task, n]``.
:func:`fit_logistic` and :func:`fit_ridge` fit all layer × task probes at once with the exact
objectives of scikit-learn's ``LogisticRegression`` and ``Ridge``; :func:`fit_logistic_stream`
does the same from chunks with memory independent of ``n``. :func:`evaluate` gives accuracy,
balanced accuracy, log-loss and AUROC per probe; :func:`control_labels` and
:func:`selectivity` implement Hewitt & Liang's control tasks.

    feats = layer_features(model, variables, x, ["act_0", "act_1"], pool="flatten")
    probe, info = fit_logistic(feats[:, train], labels[:, train], C=1.0)
    evaluate(probe, feats[:, test], labels[:, test])["accuracy"]      # [layer, task]
"""

from jaxinterp.probes._data import layer_features, train_val_test_split
from jaxinterp.probes._fit import (
    FitInfo,
    LinearProbe,
    decision,
    fit_logistic,
    fit_ridge,
    predict,
    predict_proba,
)
from jaxinterp.probes._metrics import (
    accuracy,
    auroc,
    balanced_accuracy,
    control_labels,
    evaluate,
    evaluate_regression,
    log_loss,
    r2,
    selectivity,
)
from jaxinterp.probes._stream import fit_logistic_stream

__all__ = [
    "FitInfo",
    "LinearProbe",
    "accuracy",
    "auroc",
    "balanced_accuracy",
    "control_labels",
    "decision",
    "evaluate",
    "evaluate_regression",
    "fit_logistic",
    "fit_logistic_stream",
    "fit_ridge",
    "layer_features",
    "log_loss",
    "predict",
    "predict_proba",
    "r2",
    "selectivity",
    "train_val_test_split",
]
