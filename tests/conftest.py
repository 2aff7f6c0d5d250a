import sys
from pathlib import Path

# Tests import shared helpers from each other (e.g. `from test_model import random_system`).
sys.path.insert(0, str(Path(__file__).parent))
