"""python -m leukdx"""

import sys

from leukdx.cli import main

sys.exit(main())
