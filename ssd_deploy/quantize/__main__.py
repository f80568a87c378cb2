"""``python -m ssd_deploy.quantize``: the same command as ``ssd-quantize``
(:mod:`ssd_deploy.cli.quantize`).
"""

import sys

from ..cli.quantize import main

sys.exit(main())
