"""torch.profiler around one call, with the profiler's own start/stop chatter kept off the user's terminal."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

# Lines the profiler library itself prints on every start and stop (kineto's USDT probes, torch 2.13 on a CPU):
# noise to a user; everything else written to stderr meanwhile is passed on.
_CHATTER = re.compile(r"^USDT:.*ActivityProfilerHandler\.cpp:\d+\] profiler_(start|stop)\s*$")


@contextlib.contextmanager
def _stderr_filtered():
    """Send file descriptor 2 (where the profiler library writes) to a temporary file for the block, then write
    back to it every line but the chatter."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().splitlines(keepends=True)
                    if not _CHATTER.match(ln.decode(errors="replace"))]
            if kept:
                os.write(2, b"".join(kept))


@contextlib.contextmanager
def profiled(activities):
    """torch.profiler.profile(activities=...) as prof, without the start/stop chatter on stderr."""
    from torch.profiler import profile

    with _stderr_filtered(), profile(activities=activities) as prof:
        yield prof
