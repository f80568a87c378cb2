"""``python -m ssd_deploy.triton``: the same command as ``ssd-triton`` (:mod:`ssd_deploy.cli.triton`)."""

import sys

from ..cli.triton import main

sys.exit(main())
