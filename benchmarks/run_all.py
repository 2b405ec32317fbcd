"""Run every benchmark in this folder with its default arguments (`python benchmarks/run_all.py`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

if __name__ == "__main__":
    for script in sorted(Path(__file__).parent.glob("bench_*.py")):
        print(f"\n## {script.name}\n", flush=True)
        subprocess.run([sys.executable, str(script)], check=False)
