"""Shared test setup: tiny models on the path, quiet progress bars."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("PEFT_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))
