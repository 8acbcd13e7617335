import sys
from pathlib import Path

# helpers.py (tiny trees on real RBD rows) is shared by tests/training and tests/cli.
sys.path.insert(0, str(Path(__file__).parent))
