"""Soak by hand: a simulated cluster of three daemons killed (kill -9) again and again.

    python bench/soak_cluster.py --kills 100 --inputs 300 [--seed 1]

The same loop as tests/test_cluster.py (tests/cluster/soak.py), longer; prints the figures
docs/reliability.md records and exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.cluster.harness import Cluster, verify_outputs
from tests.cluster.soak import KillLoop
from tests.pg_server import start_server, stop_server


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--inputs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    server = start_server()
    if isinstance(server, str):
        sys.exit(server)
    try:
        with tempfile.TemporaryDirectory() as root:
            cluster = Cluster(Path(root), server.url())
            cluster.build(["a", "b", "c"])
            try:
                cluster.start()
                loop = KillLoop(cluster, random.Random(args.seed))
                inputs = loop.run(kills=args.kills, inputs=args.inputs)
                problems = verify_outputs(cluster, inputs)
                rows = cluster.rows()
            finally:
                cluster.close()
            print("\n".join(loop.lines()))
            print(f"views: {'bindfs' if cluster.views else 'plain folders'}")
            print(f"inputs: {len(inputs)}, done rows: {sum(r['state'] == 'done' for r in rows)}")
            for problem in problems:
                print(f"VIOLATION: {problem}")
            return 1 if problems else 0
    finally:
        stop_server(server)


if __name__ == "__main__":
    sys.exit(main())
