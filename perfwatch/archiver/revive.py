"""Starting the embedded PostgreSQL again when it is found dead (killed, OOM-killed, stopped by
hand or by an operator command that had started it): nobody else would, and the spool would grow
until the archiver restarts. Batches wait in the spool meanwhile."""

from __future__ import annotations

import logging
import threading
import time

from perfwatch.archiver.database import Database
from perfwatch.archiver.embedded import EmbeddedPostgres

log = logging.getLogger("perfwatch.archiver")

BACKOFF_MAX = 60.0  # seconds between tries to start a dead embedded server that keeps failing to start


class Reviver:
    """Tries at most once per `retry` seconds (longer while starting keeps failing), one thread at a time."""

    def __init__(self, embedded: EmbeddedPostgres, database: Database, retry: float) -> None:
        self.embedded = embedded
        self.database = database
        self.retry = retry
        self.stopped = False  # set at shutdown: a server we are stopping is not started again
        self._lock = threading.Lock()
        self._wait = retry
        self._next = 0.0  # time.monotonic() of the next allowed try

    def __call__(self) -> bool:
        """The database is unreachable: start the server if it no longer runs. True if it did."""
        if self.stopped or not self._lock.acquire(blocking=False):
            return False
        try:
            if time.monotonic() < self._next:
                return False
            started = False
            try:
                if not self.embedded.running():
                    log.warning("the embedded PostgreSQL in %s is not running (killed, crashed or stopped); "
                                "starting it again", self.embedded.data_dir)
                    self.embedded.start()
                    started = True
                # Its address, even when it runs: whoever started it may have moved it to a new port.
                self.database.use_dsn(self.embedded.dsn())
            except Exception as err:
                # Orphaned backends of a killed server still holding its shared memory, a full disk:
                # try again later, less often while it keeps failing.
                self._wait = min(self._wait * 2, max(self.retry, BACKOFF_MAX))
                reason = (str(err).strip() or type(err).__name__).splitlines()[0]
                log.error("cannot start the embedded PostgreSQL again (%s); batches wait in the spool, next try in "
                          "%gs", reason, self._wait)
                log.debug("starting the embedded PostgreSQL failed", exc_info=True)
            else:
                self._wait = self.retry
            self._next = time.monotonic() + self._wait
            return started
        finally:
            self._lock.release()
