"""Registers the session-wide corpus fixture of train_env.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_env import corpus  # noqa: E402,F401  (a pytest fixture)
