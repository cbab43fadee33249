"""`python -m tests.resilience.soak --minutes 10 [--out DIR] [--seed N]`: exit 0 when the soak
holds, 1 when it does not (each failure printed), 2 when a real component is missing."""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import pytest

from tests.resilience.soak.run import Options, run, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.resilience.soak")
    parser.add_argument("--minutes", type=float, default=10.0, help="churn time (default 10)")
    parser.add_argument("--out", type=Path, help="where logs and result.json go")
    parser.add_argument("--seed", type=int, help="the churn's seed (default: a random one)")
    parser.add_argument("--clients", type=int, default=16, help="istiod-like clients")
    parser.add_argument("--max-rss-slope", type=float, help="MiB/hour to fail above")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.clients <= 0:
        parser.error("--minutes and --clients must be positive")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    out = args.out or Path(tempfile.mkdtemp(prefix="mcpserver-soak-"))
    print(f"soak: seed {seed}, {args.minutes} minutes, output in {out}", flush=True)
    options = Options(args.minutes, out, seed, args.clients, args.max_rss_slope)
    try:
        result = run(options)
    except (pytest.skip.Exception, pytest.fail.Exception) as err:  # testbed.builds.missing
        print(f"soak: {err}", file=sys.stderr)
        return 2
    except AssertionError as err:  # a component that would not start
        print(f"soak: {err}", file=sys.stderr)
        return 1
    print(summary(result))
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
