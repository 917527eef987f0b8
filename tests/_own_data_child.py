"""Child process for tests/test_own_data.py: `zoo ARGS` with image folders opened by
tests/own_data_double.py (the stand-in for train/sources/images.py).

Usage: python tests/_own_data_child.py train cnn --data FOLDER ...
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if __name__ == "__main__":  # Grain's spawned workers import this file too: they must not train
    from tests import own_data_double
    from train.cli import main

    own_data_double.install()
    sys.exit(main(sys.argv[1:]))
