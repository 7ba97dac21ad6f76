#!/usr/bin/env python3
"""Reference values for sadajem's metrics (src/eval/), computed with NumPy, SciPy and
scikit-learn on stored random inputs: writes tests/fixtures/metrics.json.

    python3 -m venv /tmp/fx && /tmp/fx/bin/pip install numpy scipy scikit-learn
    /tmp/fx/bin/python scripts/make-metric-fixtures.py

Each entry holds the inputs and the expected value, computed the way the usual tools do it
(pytorch-fid's FID with scipy.linalg.sqrtm, sklearn's roc_auc_score / roc_curve, the cubic
polynomial kernel of KID, the original Inception Score over splits).
"""
import json
import pathlib

import numpy as np
import scipy.linalg
import scipy.special
import scipy.stats
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.metrics.pairwise import polynomial_kernel

rng = np.random.default_rng(20261129)


def ece():
    n, classes, bins = 500, 10, 20
    logits = rng.normal(size=(n, classes)) * 2.0
    p = scipy.special.softmax(logits, axis=1)
    conf = p.max(axis=1)
    pred = p.argmax(axis=1)
    # Labels agree with the prediction about as often as a slightly over-confident model.
    labels = np.where(rng.random(n) < conf * 0.9, pred, rng.integers(0, classes, n))
    correct = pred == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    value = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            value += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return {"confidence": conf.tolist(), "correct": correct.tolist(), "bins": bins, "ece": value}


def ood():
    # Scores rounded to one decimal: many ties, within and between the sets.
    s_in = np.round(rng.normal(1.0, 1.0, 300), 1)
    s_out = np.round(rng.normal(0.0, 1.0, 250), 1)
    labels = np.r_[np.ones_like(s_in), np.zeros_like(s_out)]
    scores = np.r_[s_in, s_out]
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return {
        "scores_in": s_in.tolist(),
        "scores_out": s_out.tolist(),
        "auroc": roc_auc_score(labels, scores),
        "fpr95": float(fpr[np.argmax(tpr >= 0.95)]),
    }


def fid():
    d = 12
    a = rng.normal(size=(200, d)) @ rng.normal(size=(d, d)) * 0.5
    b = rng.normal(size=(200, d)) @ rng.normal(size=(d, d)) * 0.5 + 0.3
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    value = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    return {"a": a.tolist(), "b": b.tolist(), "fid": float(value)}


def kid():
    d = 12
    x = rng.normal(size=(80, d))
    y = rng.normal(0.2, 1.1, size=(100, d))
    kxx = polynomial_kernel(x, degree=3, gamma=1.0 / d, coef0=1)
    kyy = polynomial_kernel(y, degree=3, gamma=1.0 / d, coef0=1)
    kxy = polynomial_kernel(x, y, degree=3, gamma=1.0 / d, coef0=1)
    m, n = len(x), len(y)
    mmd2 = (
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )
    return {"x": x.tolist(), "y": y.tolist(), "mmd2": float(mmd2)}


def inception_score():
    logits = rng.normal(size=(50, 10)) * 3.0
    splits = 5
    p = scipy.special.softmax(logits, axis=1)
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(axis=0)
        scores.append(np.exp(np.mean([scipy.stats.entropy(row, py) for row in part])))
    return {"logits": logits.tolist(), "splits": splits, "mean": float(np.mean(scores)), "std": float(np.std(scores))}


def inception_score_reference():
    """The Inception Score as the SADA-JEM reference computes it (sndnyang/SADAJEM
    Task/eval_buffer.py line 144, Task/inception.py lines 32-64, 104-106): softmax of the pool3
    features times the classifier weights WITHOUT its bias, splits = max(1, n // 5000), the KL
    written out as the improved-GAN code does. `weight` and `bias` are in PyTorch's Linear
    layout ([K, D] and [K]); the biased score is there to show the bias matters."""
    n, d, k = 60, 8, 7
    pool = np.abs(rng.normal(size=(n, d)))  # pool3 features are post-ReLU averages
    weight = rng.normal(size=(k, d)) * 1.5
    bias = rng.normal(size=k) * 2.0

    def score(logits):
        preds = scipy.special.softmax(logits, axis=1)
        splits = max(1, len(preds) // 5000)
        scores = []
        for i in range(splits):
            part = preds[(i * preds.shape[0] // splits):((i + 1) * preds.shape[0] // splits), :]
            kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
            scores.append(np.exp(np.mean(np.sum(kl, 1))))
        return splits, float(np.mean(scores)), float(np.std(scores))

    splits, unbiased, unbiased_std = score(pool @ weight.T)
    _, biased, _ = score(pool @ weight.T + bias)
    return {"pool": pool.tolist(), "weight": weight.tolist(), "bias": bias.tolist(), "splits": splits,
            "unbiased": unbiased, "unbiased_std": unbiased_std, "biased": biased}


out = {"ece": ece(), "ood": ood(), "fid": fid(), "kid": kid(), "inception_score": inception_score(),
       "inception_score_reference": inception_score_reference()}
path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "metrics.json"
path.write_text(json.dumps(out, separators=(",", ":")))
print(f"wrote {path}")
