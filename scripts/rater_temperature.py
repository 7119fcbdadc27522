"""Fix the simulated raters' temperature from a pool's gold gaps, before any alignment run.

python scripts/rater_temperature.py RUN_DIR [--agreement=0.7]
reads RUN_DIR/data/gold.json (written by the prepare stage in controlled settings) and prints the
temperature at which Bradley-Terry raters agree with the gold order on that share of the
gold-decided pairs, with the gap distribution it came from. The gold scores do not depend on the
rater temperature, so any prepared run of the pool serves.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cwpo_jax.gold import rater_temperature  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--agreement", type=float, default=0.7)
    args = parser.parse_args()
    with open(os.path.join(args.run_dir, "data", "gold.json"), encoding="utf-8") as f:
        gold = np.asarray(list(json.load(f).values()), np.float64)
    gaps = np.abs(gold[:, 0] - gold[:, 1])
    t = rater_temperature(gold[:, 0], gold[:, 1], args.agreement)
    print(json.dumps({"pairs": len(gaps), "gold_ties": int((gaps == 0).sum()),
                      "gap_quartiles": [round(float(q), 4) for q in
                                        np.quantile(gaps[gaps > 0], [0.25, 0.5, 0.75])],
                      "agreement": args.agreement, "rater_temperature": round(t, 4)}))


if __name__ == "__main__":
    main()
