"""Speed and memory against the stock model and FastV: `python benchmarks/speed.py --help` (same as `tokcomp bench`).

The implementation lives in `hf_tokcomp/bench.py` so the `tokcomp bench` command and this script are one thing.
"""

from hf_tokcomp.bench.speed import main

if __name__ == "__main__":
    main()
