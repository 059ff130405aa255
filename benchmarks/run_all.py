"""`make bench`: run every benchmark module's main() in turn (each prints its own ratios).

Benchmarks are not tests: they print figures measured side by side in one run. Select some with
`python -m benchmarks.run_all engine fit`.
"""

from __future__ import annotations

import importlib
import sys
import time

MODULES = ["engine", "oracle", "tree", "train", "fit", "serving", "mtp", "smollm2", "eagle3"]


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or MODULES
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {MODULES}", file=sys.stderr)
        return 2
    for name in names:
        print(f"\n=== benchmark: {name} " + "=" * 50, flush=True)
        t0 = time.perf_counter()
        module = importlib.import_module(f"benchmarks.bench_{name}")
        module.main()
        print(f"--- {name} took {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
