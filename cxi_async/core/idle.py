"""What an empty Q2 means: keep waiting, close the open files, or stop.

Pure (times are passed in), so each rule is tested exactly. The coordinator reports every
take and every poll that found Q2 empty; `empty_poll` answers with what to do.

- **Pause.** Q2 empty and every batch in flight waiting in a writer for `idle_flush_s`:
  the writers close their open files once, so the last hits before a pause reach disk
  within seconds, not at `max_file_age_s`.
- **Stop when empty** (the replay producer finished): only a poll that started after the
  request counts, since one already under way may have seen Q2 empty just before the
  producer's last put.
- **Idle timeout**: Q2 empty and nothing in flight for `idle_timeout_s`. The clock starts only
  once a first batch was taken, so a pipeline started before its producer waits for it;
  `wait_for_first_batch_s` bounds that wait for finite jobs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EmptyPollAnswer:
    stop: str | None = None  # the stop reason, when the run should drain and stop now
    close_open_files: bool = False


@dataclass
class IdleWatch:
    idle_timeout_s: float | None
    idle_flush_s: float
    wait_for_first_batch_s: float | None
    started: float
    queue_name: str = "Q2"
    stop_when_empty_reason: str | None = None
    stop_when_empty_since: float = 0.0
    idle_since: float | None = None
    paused_since: float | None = None
    pause_flushed: bool = False

    def taken(self) -> None:
        """A batch was taken: neither idle nor paused."""
        self.idle_since = self.paused_since = None

    def stop_when_empty(self, reason: str, now: float) -> None:
        self.stop_when_empty_reason = reason
        self.stop_when_empty_since = now

    def empty_poll(
        self, polled_at: float, now: float, in_flight: int, taken: int, all_at_writers: bool
    ) -> EmptyPollAnswer:
        """Q2 was empty at a poll started at `polled_at`."""
        close = self._pause(now, in_flight, all_at_writers)
        if self.stop_when_empty_reason is not None:
            if polled_at > self.stop_when_empty_since:
                return EmptyPollAnswer(self.stop_when_empty_reason, close)
            return EmptyPollAnswer(None, close)
        if in_flight:
            self.idle_since = None
            return EmptyPollAnswer(None, close)
        if taken == 0:
            wait = self.wait_for_first_batch_s
            if wait is not None and now - self.started >= wait:
                return EmptyPollAnswer(
                    f"no batch arrived from Q2 '{self.queue_name}' within "
                    f"stop.wait_for_first_batch_s = {wait:g} s of the start"
                )
            return EmptyPollAnswer()
        if self.idle_since is None:
            self.idle_since = now
        elif self.idle_timeout_s is not None and now - self.idle_since >= self.idle_timeout_s:
            return EmptyPollAnswer(
                f"Q2 empty and nothing in flight for {self.idle_timeout_s:g} s", close
            )
        return EmptyPollAnswer(None, close)

    def _pause(self, now: float, in_flight: int, all_at_writers: bool) -> bool:
        if not in_flight or not all_at_writers:
            self.paused_since = None
            return False
        if self.paused_since is None:
            self.paused_since, self.pause_flushed = now, False
            return False
        if not self.pause_flushed and now - self.paused_since >= self.idle_flush_s:
            self.pause_flushed = True
            return True
        return False
