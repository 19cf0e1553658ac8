"""The benchmarks' memory sampler (benchmarks/common.py): exact peaks, at little cost to the run."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from common import PeakRSS  # noqa: E402  (a benchmark helper, not library code)

# 300 MiB touched and freed within ~0.3 s of the start, then 2 quiet seconds: a spike between two samples
SPIKE = "import time\nb = bytearray(300 << 20)\nb[::4096] = b'x' * len(b[::4096])\ndel b\ntime.sleep(2.0)\n"


def test_a_peak_between_two_samples_is_still_the_processs_peak():
    """Sampled RSS misses a spike shorter than the interval; the kernel's high-water mark does not."""
    proc = subprocess.Popen([sys.executable, "-c", SPIKE])
    with PeakRSS(proc.pid, interval=1.0, pss_interval=60.0) as tree:  # looks at 0, 1 and 2 s
        proc.wait(timeout=60)
        time.sleep(0.2)
    root = tree.processes[proc.pid]
    assert root["rss"] >= 300 << 20, root


def test_sampling_takes_a_small_share_of_one_core():
    """The sampler must not take the measured run's CPU: PSS (page-table walks) is read rarely."""
    procs = [subprocess.Popen([sys.executable, "-c", "b = bytearray(200 << 20); b[::4096] = b'x' * len(b[::4096]); "
                                                     "import time; time.sleep(4)"]) for _ in range(3)]
    parent = psutil.Process()
    try:
        time.sleep(1.0)
        before = parent.cpu_times()
        with PeakRSS(parent.pid) as tree:
            time.sleep(3.0)
        after = parent.cpu_times()
    finally:
        for p in procs:
            p.kill()
            p.wait()
    used = (after.user + after.system) - (before.user + before.system)
    assert tree.peak >= 3 * (200 << 20) and tree.peak_pss > 0
    assert used < 0.3, f"the sampler took {used:.2f} CPU-seconds in 3 s"
