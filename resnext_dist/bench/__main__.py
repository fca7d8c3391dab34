"""`python -m resnext_dist.bench NAME ...`: see resnext_dist.bench for the benches."""
import sys

from resnext_dist.bench import main

if __name__ == "__main__":
    sys.exit(main())
