#!/usr/bin/env python3
"""Issue 14's two numpy baselines on a Telemanom-layout data set, with the figures
`tidewatch evaluate` prints (point P/R/F1, point-adjusted F1, event P/R, pooled ROC-AUC,
false alarms), so that the README's table compares like with like.

    python3 scripts/smap-baselines.py ../shared/data/SMAP

Standard library only (no numpy on the build machines): the .npy files are parsed by
hand (little-endian float64, C order, the layout the data set's README states).

Baselines, value column 0 only, both flagged when the score exceeds 1:
- diff:   |x[t] - x[t-1]| / (its maximum over the training file)
- zscore: (|x - mean| / std) / (its maximum over the training file), mean and std of
          the training file
ROC-AUC is pooled over every test row of every channel (Mann-Whitney, ties averaged).
"""

import ast
import csv
import gzip
import os
import struct
import sys


def load(path):
    """Column 0 of a (rows, cols) float64 .npy[.gz] file."""
    raw = gzip.open(path).read() if path.endswith(".gz") else open(path, "rb").read()
    assert raw[:6] == b"\x93NUMPY", path
    major = raw[6]
    if major == 1:
        hlen = struct.unpack("<H", raw[8:10])[0]
        start = 10
    else:
        hlen = struct.unpack("<I", raw[8:12])[0]
        start = 12
    header = ast.literal_eval(raw[start : start + hlen].decode("latin1"))
    assert header["descr"] == "<f8" and not header["fortran_order"], header
    rows, cols = header["shape"]
    body = raw[start + hlen :]
    values = struct.unpack("<%dd" % (rows * cols), body[: rows * cols * 8])
    return [values[r * cols] for r in range(rows)]


def find(folder, chan):
    for ext in (".npy", ".npy.gz"):
        p = os.path.join(folder, chan + ext)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(chan)


def labels_of(path):
    ranges = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            ranges.setdefault(row["chan_id"], []).extend(
                ast.literal_eval(row["anomaly_sequences"])
            )
    return ranges


def diff_scores(train, test):
    d = [abs(b - a) for a, b in zip(train, train[1:])]
    top = max(d) or 1e-12
    prev = train[-1]
    out = []
    for v in test:
        out.append(abs(v - prev) / top)
        prev = v
    return out


def zscore_scores(train, test):
    n = len(train)
    mean = sum(train) / n
    std = (sum((v - mean) ** 2 for v in train) / n) ** 0.5 or 1e-12
    top = max(abs(v - mean) / std for v in train) or 1e-12
    return [abs(v - mean) / std / top for v in test]


def segments(labels):
    out, start = [], None
    for i, l in enumerate(labels + [False]):
        if l and start is None:
            start = i
        elif not l and start is not None:
            out.append((start, i))
            start = None
    return out


def tally(labels, flags, acc):
    for l, f in zip(labels, flags):
        key = ("tp" if f else "fn") if l else ("fp" if f else "tn")
        acc[key] += 1
    segs = segments(labels)
    adjusted = list(flags)
    for s, e in segs:
        if any(flags[s:e]):
            acc["etp"] += 1
            for i in range(s, e):
                adjusted[i] = True
        else:
            acc["efn"] += 1
    for l, f in zip(labels, adjusted):
        if l:
            acc["pa_tp" if f else "pa_fn"] += 1
        elif f:
            acc["pa_fp"] += 1
    # a maximal flagged run touching no labelled frame is a false event
    for s, e in segments(flags):
        if not any(labels[s:e]):
            acc["efp"] += 1


def roc_auc(scores, labels):
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    rank_sum, pos, i = 0.0, 0, 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        avg = (i + j) / 2 + 1
        for k in range(i, j + 1):
            if labels[order[k]]:
                rank_sum += avg
                pos += 1
        i = j + 1
    neg = len(scores) - pos
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)


def f1(p, r):
    return 2 * p * r / (p + r) if p + r else 0.0


def main(root):
    ranges = labels_of(os.path.join(root, "labeled_anomalies.csv"))
    chans = sorted(
        f.split(".")[0] for f in os.listdir(os.path.join(root, "test"))
    )
    for name, fn in (("diff", diff_scores), ("zscore", zscore_scores)):
        acc = dict.fromkeys(
            "tp fp fn tn etp efp efn pa_tp pa_fp pa_fn".split(), 0
        )
        all_scores, all_labels = [], []
        for c in chans:
            train = load(find(os.path.join(root, "train"), c))
            test = load(find(os.path.join(root, "test"), c))
            labels = [False] * len(test)
            for s, e in ranges.get(c, []):
                for i in range(s, min(e + 1, len(test))):
                    labels[i] = True
            scores = fn(train, test)
            tally(labels, [s > 1.0 for s in scores], acc)
            all_scores += scores
            all_labels += labels
        p = acc["tp"] / max(acc["tp"] + acc["fp"], 1)
        r = acc["tp"] / max(acc["tp"] + acc["fn"], 1)
        pap = acc["pa_tp"] / max(acc["pa_tp"] + acc["pa_fp"], 1)
        par = acc["pa_tp"] / max(acc["pa_tp"] + acc["pa_fn"], 1)
        ep = acc["etp"] / max(acc["etp"] + acc["efp"], 1)
        er = acc["etp"] / max(acc["etp"] + acc["efn"], 1)
        far = acc["fp"] / max(acc["fp"] + acc["tn"], 1)
        print(
            f"{name}: point P/R/F1 {p:.3f}/{r:.3f}/{f1(p, r):.3f}; "
            f"PA-F1 {f1(pap, par):.3f}; "
            f"events tp/fp/fn {acc['etp']}/{acc['efp']}/{acc['efn']} "
            f"P {ep:.3f} R {er:.3f}; "
            f"ROC-AUC {roc_auc(all_scores, all_labels):.3f}; "
            f"false alarms {100 * far:.2f} %"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/SMAP")
