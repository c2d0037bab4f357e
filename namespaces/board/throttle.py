"""Throttling password guesses: a few failed logins per window, then a pause."""
import time
from collections import OrderedDict


class Throttle:
    """Failed attempts per key (a user name, a connection) within a window of time.

    After *max_failures()* failures of one key, :meth:`retry_after` says how
    long that key has to wait: until *window()* seconds after its first
    failure. A success forgets the key. At most *max_keys()* keys are
    remembered; past that the one that failed least recently is forgotten, so
    guessing over many user names cannot grow the table. The limits are
    callables, read on each use (the configuration can change in tests).
    """

    def __init__(self, max_failures, window, max_keys, clock=time.monotonic):
        self.max_failures, self.window, self.max_keys = max_failures, window, max_keys
        self.clock = clock
        self._failures = OrderedDict()     # key -> [time of the first failure, count]
        #: keys forgotten because the table was full
        self.evicted = 0

    def __len__(self):
        return len(self._failures)

    def __contains__(self, key):
        return key in self._failures

    def retry_after(self, key):
        """Seconds *key* must wait before its next attempt; 0 when it may try now."""
        entry = self._failures.get(key)
        if entry is None:
            return 0
        left = entry[0] + self.window() - self.clock()
        if left <= 0:
            del self._failures[key]
            return 0
        return left if entry[1] >= self.max_failures() else 0

    def failed(self, key):
        """Count a failed attempt of *key*; True if this one makes it wait."""
        now = self.clock()
        entry = self._failures.pop(key, None)
        if entry is None or now - entry[0] >= self.window():
            entry = [now, 0]
        entry[1] += 1
        self._failures[key] = entry        # the most recent failure goes last
        while len(self._failures) > self.max_keys():
            self._failures.popitem(last=False)
            self.evicted += 1
        return entry[1] == self.max_failures()

    def succeeded(self, key):
        """Forget *key*'s failures."""
        self._failures.pop(key, None)

    def clear(self):
        self._failures.clear()
        self.evicted = 0
