"""The hypersphere experiment (paper Sec. 6.2): ``python examples/run_hypersphere.py --help``.

The experiment's code is the package ``examples/hypersphere/`` (with the
shared ``examples/harness/``); Python puts this script's folder,
``examples/``, first on ``sys.path``, which is how both are found.
"""

from hypersphere.cli import main

if __name__ == "__main__":
    main()
