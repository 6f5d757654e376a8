"""Speed and memory harnesses that sit beside the package, run from a checkout (`make bench`,
`make smoke-paper`), not installed with it: `python -m benchmarks.bench`, `python -m benchmarks.smoke`."""
