"""The 3D human pose experiment (paper Sec. 5): ``python examples/run_pose.py --help``.

The experiment's code is the package ``examples/pose/`` (with the shared
``examples/harness/``); Python puts this script's folder, ``examples/``,
first on ``sys.path``, which is how both are found.
"""

import sys

from pose.cli import main

if __name__ == "__main__":
    sys.exit(main())
