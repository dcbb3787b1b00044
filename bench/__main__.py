"""`python -m bench`: the benchmark suite (see bench/suite.py); writes BENCHMARKS.md."""

from bench.suite import main

main()
