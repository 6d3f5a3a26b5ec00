"""Pose-accuracy evaluation: baselines and / or trained checkpoints on a data config, optionally at
several injected outlier rates. Writes table.md, summary.json, problems.csv and recall.png.

    python scripts/evaluate.py --data.source synthetic --data.test_samples 100 --baseline [oracle,random] \\
        --outlier_rates 0,0.25,0.5,0.75 --out runs/eval
"""

from bpnp.cli.evaluate import evaluate_main

if __name__ == "__main__":
    evaluate_main()
