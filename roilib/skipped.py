"""Bookkeeping of the image files a run could not read (counted once, reported once)."""


class SkippedFiles:
    """Unreadable images met so far (each counted once, in order of appearance), for the
    main process's reports."""

    def __init__(self):
        self.reasons = {}  # image path -> the first reason it could not be used
        self.reported = 0

    def __len__(self):
        return len(self.reasons)

    def add(self, entries):
        for path, reason in entries:
            self.reasons.setdefault(path, reason)

    def unreported(self):
        """Reasons not returned by an earlier call."""
        fresh = list(self.reasons.values())[self.reported:]
        self.reported = len(self.reasons)
        return fresh

    def summary(self):
        """'skipped N unreadable images (first: reason)', or '' when none was."""
        if not self.reasons:
            return ""
        return f"skipped {len(self)} unreadable images (first: {next(iter(self.reasons.values()))})"

    def as_list(self):
        return [{"path": path, "reason": reason} for path, reason in self.reasons.items()]
