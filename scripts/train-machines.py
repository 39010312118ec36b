#!/usr/bin/env python3
"""Trains seed 002's failure classifier on the AI4I 2020 records, reproducibly.

Run from the repository root (needs numpy and xgboost; CI only reads what it writes):

    pip install xgboost numpy
    python3 scripts/train-machines.py ../shared/data/AI4I2020/ai4i2020.csv

Writes:
- models/machines/xgboost.json: XGBoost's JSON model (`Booster.save_model`), read by
  tidewatch's own tree walk (src/machines/xgb.rs);
- models/machines/machines.json: the feature order, the decision threshold, the held-out
  precision and recall on failures, and the expected alert count of a replay of all
  records;
- tests/fixtures/machines_expected.json: xgboost's probabilities for every held-out record
  and the features of the first 100, which tests/machines.rs checks the Rust code against.

The type table models/machines/types.csv (L 0, M 1, H 2: seed 002's example encodes M as 1)
is read, not written: the script encodes types with the table the engine joins.

Held-out split: a fixed, stratified 20 % of the records (numpy's PCG64 seeded 2020 permutes
the failures and the others separately), so that both sides keep the 3.4 % failure rate.
"""

import csv
import json
import os
import sys

import numpy as np
import xgboost as xgb

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machines_features import FEATURES, features  # noqa: E402

MODEL_DIR = "models/machines"
FIXTURE = "tests/fixtures/machines_expected.json"
SEED = 2020
HELDOUT = 0.2
THRESHOLD = 0.5
PARAMS = {
    "objective": "binary:logistic",
    "max_depth": 5,
    "eta": 0.1,
    "subsample": 1.0,
    "tree_method": "hist",
    "nthread": 1,
    "seed": 0,
    "eval_metric": "logloss",
}
ROUNDS = 150


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/AI4I2020/ai4i2020.csv"
    with open(os.path.join(MODEL_DIR, "types.csv")) as f:
        types = {row["type"]: float(row["type_encoded"]) for row in csv.DictReader(f)}
    udi, x, y = [], [], []
    with open(path) as f:
        for row in csv.DictReader(f):
            udi.append(int(row["UDI"]))
            x.append(
                features(
                    types[row["Type"]],
                    float(row["Air temperature [K]"]),
                    float(row["Process temperature [K]"]),
                    float(row["Rotational speed [rpm]"]),
                    float(row["Torque [Nm]"]),
                    float(row["Tool wear [min]"]),
                )
            )
            y.append(int(row["Machine failure"]))
    x, y, udi = np.array(x, dtype=np.float64), np.array(y), np.array(udi)

    rng = np.random.Generator(np.random.PCG64(SEED))
    held = np.zeros(len(y), dtype=bool)
    for label in (0, 1):
        idx = np.flatnonzero(y == label)
        idx = rng.permutation(idx)
        held[idx[: int(round(len(idx) * HELDOUT))]] = True

    train = xgb.DMatrix(x[~held], label=y[~held], feature_names=FEATURES)
    booster = xgb.train(PARAMS, train, num_boost_round=ROUNDS)
    booster.save_model(os.path.join(MODEL_DIR, "xgboost.json"))

    every = booster.predict(xgb.DMatrix(x, feature_names=FEATURES))
    p = every[held]
    predicted, actual = p >= THRESHOLD, y[held] == 1
    tp = int(np.sum(predicted & actual))
    fp = int(np.sum(predicted & ~actual))
    fn = int(np.sum(~predicted & actual))
    heldout = {
        "records": int(held.sum()),
        "failures": int(actual.sum()),
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
        "precision": round(tp / max(tp + fp, 1), 4),
        "recall": round(tp / max(tp + fn, 1), 4),
    }
    meta = {
        "format": 1,
        "model": "xgboost.json",
        "types": "types.csv",
        "features": FEATURES,
        "threshold": THRESHOLD,
        "heldout": heldout,
        "all_records": {
            "records": int(len(y)),
            "alerts": int(np.sum(every >= THRESHOLD)),
        },
        "training": {
            "xgboost": xgb.__version__,
            "params": PARAMS,
            "rounds": ROUNDS,
            "split": f"stratified {HELDOUT} held out, numpy PCG64 seed {SEED}",
        },
        "provenance": {
            "data": "AI4I 2020 (../shared/data/AI4I2020/ai4i2020.csv), 10,000 records",
            "command": "python3 scripts/train-machines.py ../shared/data/AI4I2020/ai4i2020.csv",
        },
    }
    with open(os.path.join(MODEL_DIR, "machines.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")

    first = np.flatnonzero(held)[:100]
    fixture = {
        "xgboost": xgb.__version__,
        "heldout_udi": udi[held].tolist(),
        "heldout_probability": [float(f"{v:.9g}") for v in p.tolist()],
        "feature_udi": udi[first].tolist(),
        "features": [[float(f"{v:.17g}") for v in row] for row in x[first].tolist()],
    }
    with open(FIXTURE, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
        f.write("\n")
    print(json.dumps(heldout))


if __name__ == "__main__":
    main()
