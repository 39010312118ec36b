#!/usr/bin/env python3
"""Writes models/rules/rules.toml, the rules variant's shipped rule file for NASA SMAP,
from the training data alone (never the test set or its labels).

    python3 scripts/smap_rules.py ../shared/data/SMAP/train > models/rules/rules.toml

Per channel, on the telemetry value (feature 0):
- `<chan>-level-shift`: Page's two-sided CUSUM (the variant's, default parameters:
  baseline weight 0.01, slack 0.5, warm-up 100 frames, reproduced below) over 1.5 times
  the largest value it reached on the channel's training data, and at least the textbook
  decision interval of 5. The textbook 5 alone is not used: SMAP's values are strongly
  autocorrelated, and on the training data it is crossed at half of all windows.
- `<chan>-above-training` / `<chan>-below-training`, for a channel whose training values
  stay clear of an end of the scaled range [-1, 1]: the window's mean more than 0.05 (2.5 %
  of the range) past the training maximum or minimum, the seed's "beyond what was seen".
"""
import gzip
import math
import pathlib
import sys

import numpy as np

MARGIN = 0.05
H = 5.0


def cusum_max(x, alpha=0.01, k=0.5, warmup=100):
    """The largest max(S+, S-) of crate::detect::Cusum over x."""
    mean = var = up = down = top = 0.0
    for i, v in enumerate(x):
        if i == 0:
            mean = v
            continue
        d = v - mean
        z = d / math.sqrt(max(var, 1e-12))
        if i >= warmup:
            up = max(0.0, up + z - k)
            down = max(0.0, down - z - k)
            top = max(top, up, down)
        step = alpha * d
        mean += step
        var = (1 - alpha) * (var + d * step)
    return top


train = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/SMAP/train")
print("""# The rules variant's rule file for NASA SMAP telemetry (25 values a frame: the scaled
# telemetry value, then 24 command flags), written by scripts/smap_rules.py from
# ../shared/data/SMAP/train alone (see the script for how each threshold is chosen): no
# threshold here was chosen on the test set or its labels. Weights are the seed's 0.5 a
# violation: one rule alone is `info`, two together `critical`.
features = 25""")
for path in sorted(train.glob("*.npy.gz")):
    chan = path.name[: -len(".npy.gz")]
    values = np.load(gzip.open(path))[:, 0].astype(np.float32).astype(float)
    top = cusum_max(values)
    print(f"""
# {chan}: CUSUM up to {top:.4g} in training
[[rule]]
name = "{chan}-level-shift"
stat = "cusum"
feature = 0
entity = "{chan}"
above = {max(H, round(1.5 * top, 3))}""")
    lo, hi = float(values.min()), float(values.max())
    if hi + MARGIN < 1.0:
        print(f"""
# {chan}: training values up to {hi:.4f}
[[rule]]
name = "{chan}-above-training"
stat = "mean"
feature = 0
entity = "{chan}"
above = {round(hi + MARGIN, 4)}""")
    if lo - MARGIN > -1.0:
        print(f"""
# {chan}: training values down to {lo:.4f}
[[rule]]
name = "{chan}-below-training"
stat = "mean"
feature = 0
entity = "{chan}"
below = {round(lo - MARGIN, 4)}""")
