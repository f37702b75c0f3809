"""Progress for long loops: a live bar on a terminal, a line every ~10% in a log file."""
import sys
import time


def format_seconds(seconds):
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    def __init__(self, total, label, unit="items", stream=None, enabled=True):
        self.total, self.label, self.unit = total, label, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.live = self.enabled and self.stream.isatty()
        self.start = time.perf_counter()
        self.done = 0
        self.counted = 0          # e.g. segments, for the rate
        self.next_report = 0.1

    def update(self, done=1, counted=0):
        self.done += done
        self.counted += counted
        if not self.enabled:
            return
        fraction = self.done / self.total
        if self.live or fraction >= self.next_report or self.done == self.total:
            self.next_report = fraction + 0.1
            self._print(fraction)

    def rate(self):
        return self.counted / max(time.perf_counter() - self.start, 1e-9)

    def _print(self, fraction):
        elapsed = time.perf_counter() - self.start
        eta = elapsed * (1 - fraction) / max(fraction, 1e-9)
        bar = "#" * int(20 * fraction)
        text = (f"{self.label} [{bar:<20}] {self.done}/{self.total}  "
                f"{self.rate():.1f} {self.unit}/s  ETA {format_seconds(eta)}")
        end = "\r" if self.live and self.done < self.total else "\n"
        print(text, end=end, file=self.stream, flush=True)
