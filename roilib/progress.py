"""Progress for long loops (tqdm): a live bar on a terminal, a line every ~10% in a log file."""
import re
import sys

from tqdm import tqdm

_COUNT = re.compile(r"\| *\d+/\d+ \[")   # tqdm's "| 3/10 [": the count a line shows


def format_seconds(seconds):
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class _Lines:
    """A stream for tqdm where stderr is not a terminal: each refresh becomes one line, not
    a carriage-return update that piles up in a log file. A refresh at the count of the line
    before (tqdm's close repeats the last one) is not written again."""

    def __init__(self, stream):
        self.stream = stream
        self.last_count = None

    def write(self, text):
        text = text.replace("\r", "").strip()
        count = _COUNT.search(text)
        count = count and count.group(0)
        if text and (count is None or count != self.last_count):
            self.stream.write(text + "\n")
            self.last_count = count

    def flush(self):
        self.stream.flush()


def progress_bar(total, label, unit="it", enabled=True, stream=None):
    """A tqdm bar over `total` steps; in a log (no terminal) one line per ~10%."""
    stream = stream or sys.stderr
    if enabled and total and not stream.isatty():
        return tqdm(total=total, desc=label, unit=unit, file=_Lines(stream), ascii=True,
                    mininterval=0, maxinterval=float("inf"), miniters=max(1, total // 10),
                    dynamic_ncols=False, ncols=100)
    return tqdm(total=total, desc=label, unit=unit, file=stream, disable=not enabled or not total)
