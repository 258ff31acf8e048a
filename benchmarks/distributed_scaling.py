"""Training throughput on 1, 2, 4 ... processes (torchrun, gloo on CPU / NCCL on GPUs).

For each process count N it launches
    torchrun --standalone --nproc_per_node=N -m extmem train CONFIG --set train.steps=S ...
with OMP_NUM_THREADS = max(1, cores // N), reads the run's metrics.jsonl and prints one JSON
object: tokens/s (global batch tokens per second, the first logging window dropped as
warm-up), speed-up vs 1 process, and the largest train-loss difference to the 1-process run
(the same global batch, so it should be float noise).

    python benchmarks/distributed_scaling.py configs/quickstart.toml --procs 1 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run(config: str, procs: int, steps: int, out: Path, extra: list[str]) -> dict:
    threads = max(1, (os.cpu_count() or 1) // procs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={procs}", "-m", "extmem", "train", config, "--out", str(out),
               "--quiet", "--set", f"train.steps={steps}", "--set", "train.eval_every=0",
               "--set", "train.log_every=5", "--set", "train.checkpoint_every=0", *extra]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{procs} processes failed:\n{done.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    timed = train[1:] or train
    return {"procs": procs, "threads_per_proc": threads,
            "tokens_per_s": sum(r["tokens_per_s"] for r in timed) / len(timed),
            "losses": [r["loss"] for r in train]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    extra = [x for s in args.set for x in ("--set", s)]
    with tempfile.TemporaryDirectory(prefix="extmem-scaling-") as tmp:
        results = [run(args.config, n, args.steps, Path(tmp) / f"p{n}", extra) for n in args.procs]
    base_speed, base_losses = results[0]["tokens_per_s"], results[0]["losses"]
    for r in results:
        r["speedup"] = r["tokens_per_s"] / base_speed
        r["max_loss_diff_vs_first"] = max(abs(a - b) for a, b in
                                          zip(r.pop("losses"), base_losses, strict=True))
    print(json.dumps({"config": args.config, "steps": args.steps, "cpu_count": os.cpu_count(),
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
