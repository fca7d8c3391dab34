"""`python -m resnext_dist` is `python -m resnext_dist.train`."""
import sys

from resnext_dist.train import main

sys.exit(main())
