"""Run every benchmarks/bench_*.py in turn; each writes its JSON under benchmarks/results/."""

import subprocess
import sys
from pathlib import Path

failed = []
for script in sorted(Path(__file__).parent.glob("bench_*.py")):
    print(f"== {script.name}", flush=True)
    if subprocess.run([sys.executable, str(script)]).returncode:
        failed.append(script.name)
sys.exit(f"failed: {', '.join(failed)}" if failed else 0)
