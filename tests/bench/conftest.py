import sys
from pathlib import Path

# bench_scripts.py (imports a bench/ script as a module) is shared by the tests of this folder.
sys.path.insert(0, str(Path(__file__).parent))
