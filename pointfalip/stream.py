"""The one frame loop of a scene: frames in, :class:`~pointfalip.scene.SceneResult`s out, every frame to the sinks.

``pointfalip scene`` and the ROS 2 node (:mod:`pointfalip.ros2`) both run :func:`stream`::

    from pointfalip.scene import load_scene_recognizer
    from pointfalip.sources import read_frames
    from pointfalip.stream import stream

    scene = load_scene_recognizer(labels=["mug", "bowl"])
    for item in stream(scene, read_frames("recording/").frames, sinks=[my_sink]):
        print(item.result.stamp_ns, [o.text for o in item.result.objects])

A **frame** is anything with ``points`` (``(N, 3)``, metres), ``stamp_ns`` (int or None) and ``frame_id`` (str or
None), e.g. :class:`pointfalip.sources.BagFrame`, and optionally ``pose`` (a ``(4, 4)`` world-from-sensor transform
from odometry, handed to the tracker; None or absent: unknown). A **sink** is anything with ``log_frame(points, result, *,
stamp_ns=None)``: :class:`pointfalip.foxglove.McapRecording`, :class:`pointfalip.foxglove.LiveServer`,
:class:`pointfalip.foxglove.SceneChannels`, :class:`JsonLines`, or a ROS publisher (:mod:`pointfalip.ros2`). Sinks
that share one Foxglove channel set (their ``scene``: a live server and a recording of :class:`SceneOutputs`) get
each frame once between them: one log reaches every sink of the set.
:class:`FrameQueue` turns pushed frames (a subscriber's callback) into the iterable the loop reads;
:class:`SceneOutputs` opens a run's Foxglove outputs (live server, MCAP recording) and :func:`reopening` a source
that a ``loop`` reads again: the wiring the command line and the node share. ``realtime`` paces frames by their
stamps on one monotonic clock, never trusting a stamp that goes back or jumps (:class:`RealtimePacer`).
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
from contextlib import ExitStack
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional, Sequence, TextIO, Union

from .errors import InputError

log = logging.getLogger(__name__)

__all__ = ["FrameQueue", "JsonLines", "RealtimePacer", "SceneOutputs", "StreamedFrame", "reopening", "stream"]

_NS_PER_S = 1_000_000_000
Frames = Union[Iterable[Any], Callable[[], Iterable[Any]]]


class StreamedFrame(NamedTuple):
    """One frame through the loop: its points, its result, which pass over the input, and whether it was re-sent."""

    points: Any  # the frame's (N, 3) points (objects' ``indices`` are rows of it)
    result: Any  # its SceneResult
    pass_index: int  # 0: the first pass over the input; 1, 2, ...: repeats of ``loop``
    resent: bool  # the previous result sent again to the sinks (a single frame looping), not recomputed


MAX_STAMP_GAP_S = 10.0  # a stamp further than this from the previous frame's is not paced by (one warning)


class RealtimePacer:
    """Releases the frames of a recording at the pace of their stamps, measured on one monotonic clock.

    :meth:`wait` sleeps until a frame is due: the first frame anchors the pace and is due at once, every later one
    ``stamp - anchor stamp`` after the anchor. A stamp that goes back or jumps ahead of the previous frame's by more
    than ``max_gap_s`` (a header stamp of 0, a sensor whose clock was reset) is not trusted: that frame is paced by
    its arrival, released at once, and anchors the pace from there; the first such stamp is warned about, once. A
    frame that is already late (processing slower than the recording) is released at once; nothing is skipped, and
    no stamp can make the pacer wait longer than ``max_gap_s``.

    Args:
        clock: seconds on a monotonic clock (``time.monotonic``; wall-clock jumps do not disturb the pace).
        sleep: how to wait a number of seconds (``time.sleep``).
        max_gap_s: the largest step between two frames' stamps that is paced (seconds, positive).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 max_gap_s: float = MAX_STAMP_GAP_S):
        if not (isinstance(max_gap_s, (int, float)) and 0 < max_gap_s < float("inf")):
            raise InputError(f"max_gap_s must be a positive number of seconds, got {max_gap_s!r}")
        self._clock = clock
        self._sleep = sleep
        self._max_gap_ns = int(max_gap_s * _NS_PER_S)
        self._origin: tuple[int, float] | None = None  # (stamp_ns, clock seconds) of the anchoring frame
        self._last_stamp_ns: int | None = None
        self.late_s = 0.0  # how late the newest frame was released (0 when on time)
        self.odd_stamps = 0  # frames paced by their arrival because their stamps could not be trusted

    def reset(self) -> None:
        """The next frame is due at once and anchors the pace (a new pass over a recording)."""
        self._origin, self._last_stamp_ns = None, None

    def wait(self, stamp_ns: int | None) -> float:
        """Sleep until the frame stamped ``stamp_ns`` (nanoseconds; None: at once) is due; returns the seconds slept."""
        if stamp_ns is None:
            return 0.0
        stamp_ns = int(stamp_ns)
        if self._last_stamp_ns is not None and not 0 <= stamp_ns - self._last_stamp_ns <= self._max_gap_ns:
            if not self.odd_stamps:
                where = "before" if stamp_ns < self._last_stamp_ns else "far after"
                log.warning("frame stamp %.9f s is %s the previous one (%.9f s); pacing such frames by their "
                            "arrival", stamp_ns / _NS_PER_S, where, self._last_stamp_ns / _NS_PER_S)
            self.odd_stamps += 1
            self._origin = None
        if self._origin is None:
            self._origin = (stamp_ns, self._clock())
        self._last_stamp_ns = stamp_ns
        first_stamp, first_clock = self._origin
        delay = first_clock + (stamp_ns - first_stamp) / _NS_PER_S - self._clock()
        self.late_s = max(0.0, -delay)
        if delay <= 0:
            return 0.0
        self._sleep(delay)
        return delay


def _frames_of(frames: Frames) -> Iterable[Any]:
    return frames() if callable(frames) else frames


def stream(scene: Any, frames: Frames, *, sinks: Sequence[Any] = (), record: Sequence[Any] = (),
           realtime: bool = False, loop: bool = False, resend_s: float = 1.0,
           clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
           now_ns: Callable[[], int] = time.time_ns) -> Iterator[StreamedFrame]:
    """Recognise every frame with ``scene`` (a :class:`~pointfalip.scene.SceneRecognizer`) and hand it to the sinks.

    Args:
        scene: recognises a frame: ``scene.recognize(points, stamp_ns=..., frame_id=...) -> SceneResult``.
        frames: an iterable of frames, or a callable that returns a fresh one (needed to ``loop`` over a reader
            that can be read once, such as a bag).
        sinks: get every frame, repeats included (live views), each as ``log_frame(points, result, stamp_ns=...)``.
        record: get the first pass only and are closed (their ``close()``) when it ends (recordings, so the file is
            complete while a live view goes on looping).
        realtime: release the frames at the pace of their stamps (:class:`RealtimePacer`).
        loop: repeat the input until the caller stops iterating (Ctrl-C). A repeated pass is logged at the time now
            (its result keeps the recording's stamps); its stamps go back, so a tracker starts over. An input of one
            unstamped frame (a file) is not recomputed: its result is sent again every ``resend_s`` seconds.
        resend_s: seconds between two sends of a looping single frame.
        clock, sleep, now_ns: the monotonic clock and sleep of the pacing and of the re-sends, and the wall clock
            (nanoseconds) of a repeat's log time; tests pass fakes.

    Yields:
        A :class:`StreamedFrame` per frame, after the sinks have it. ``result.timings["output"]`` holds the seconds
        the sinks took.

    Raises:
        InputError: the first pass holds no frame.
    """
    if resend_s <= 0:
        raise InputError(f"resend_s must be positive, got {resend_s}")
    if loop and not callable(frames) and iter(frames) is frames:
        raise InputError("loop needs frames that can be read again: pass a list or a function returning them")
    pacer = RealtimePacer(clock, sleep) if realtime else None
    pass_index, last, count = 0, None, 0
    while True:
        seen = 0
        if pacer is not None:
            pacer.reset()  # a repeat's stamps start over: due at once, no warning
        targets = _once_per_channels((*sinks, *(record if pass_index == 0 else ())))
        for frame in _frames_of(frames):
            seen += 1
            if pacer is not None:
                pacer.wait(frame.stamp_ns)
            pose = getattr(frame, "pose", None)  # odometry, when the frame carries it
            result = scene.recognize(frame.points, stamp_ns=frame.stamp_ns, frame_id=frame.frame_id,
                                     **({} if pose is None else {"pose": pose}))
            stamp = None if pass_index == 0 else now_ns()
            t0 = time.perf_counter()
            for sink in targets:
                sink.log_frame(frame.points, result, stamp_ns=stamp)
            result.timings["output"] = time.perf_counter() - t0
            last, count = (frame, result), count + (pass_index == 0)
            yield StreamedFrame(frame.points, result, pass_index, False)
        if pass_index == 0:
            if count == 0:
                raise InputError("the input holds no frame to recognise")
            for sink in record:
                close = getattr(sink, "close", None)
                if callable(close):
                    close()
        if not loop or seen == 0:
            return
        pass_index += 1
        if count == 1 and last[0].stamp_ns is None:
            yield from _resend(last, _once_per_channels(sinks), pass_index, resend_s, clock, sleep, now_ns)
            return


def _once_per_channels(sinks: Sequence[Any]) -> list:
    """The sinks to call for one frame: of the sinks that share one Foxglove channel set (their ``scene``, e.g. a
    live server and a recording on one `foxglove.SceneChannels`), only the first, since one log reaches every
    sink of the set; a frame logged once per sink would appear there twice."""
    from .foxglove import SceneChannels

    chosen, seen = [], set()
    for sink in sinks:
        channels = getattr(sink, "scene", None)
        if isinstance(channels, SceneChannels):
            if id(channels) in seen:
                continue
            seen.add(id(channels))
        chosen.append(sink)
    return chosen


def _resend(last: tuple, sinks: Sequence[Any], pass_index: int, resend_s: float, clock: Callable[[], float],
            sleep: Callable[[float], None], now_ns: Callable[[], int]) -> Iterator[StreamedFrame]:
    """The single frame's result, to the sinks every ``resend_s`` seconds, until the caller stops iterating."""
    frame, result = last
    due = clock()
    while True:
        due += resend_s
        delay = due - clock()
        if delay > 0:
            sleep(delay)
        for sink in sinks:
            sink.log_frame(frame.points, result, stamp_ns=now_ns())
        yield StreamedFrame(frame.points, result, pass_index, True)
        pass_index += 1


class JsonLines:
    """A sink that writes each frame's result as one line of JSON (``SceneResult.to_dict()``) to a text stream.

    Nothing is written for a frame whose numbers are not finite: the line would not be JSON (ValueError)."""

    def __init__(self, out: TextIO):
        self.out = out

    def log_frame(self, points: Any, result: Any, *, stamp_ns: Optional[int] = None) -> None:
        record = result.to_dict()
        if stamp_ns is not None:
            record["stamp"] = stamp_ns / 1e9
        self.out.write(json.dumps(record, allow_nan=False) + "\n")
        self.out.flush()


class FrameQueue:
    """Frames pushed by a callback (a ROS subscriber) read by :func:`stream` in another thread, newest first.

    :meth:`put` never blocks: when ``maxsize`` frames already wait, the oldest is dropped (recognition is slower
    than a sensor's rate; a robot wants the newest frame). Iterating blocks until a frame comes and ends after
    :meth:`close`, once the frames already queued are taken.
    """

    _CLOSED = object()

    def __init__(self, maxsize: int = 1):
        if maxsize < 1:
            raise InputError(f"maxsize must be at least 1, got {maxsize}")
        self._queue: queue.Queue = queue.Queue()
        self._maxsize = maxsize
        self._lock = threading.Lock()
        self._closed = False
        self.dropped = 0  # frames dropped because newer ones came before they were taken

    def put(self, frame: Any) -> None:
        """Queue a frame (dropping the oldest waiting one when full); ignored after :meth:`close`."""
        with self._lock:
            if self._closed:
                return
            while self._queue.qsize() >= self._maxsize:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    break
            self._queue.put(frame)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """End the iteration after the frames already queued."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(self._CLOSED)

    def __iter__(self) -> Iterator[Any]:
        while True:
            frame = self._queue.get()
            if frame is self._CLOSED:
                return
            yield frame


def reopening(open_source: Callable[[], Any]) -> tuple[Any, Callable[[], Iterable[Any]]]:
    """A source opened now (so that it is read and checked before any work) and the ``frames`` callable of
    :func:`stream`: its first call gives this source's frames, each later one (a ``loop`` pass) a fresh source's."""
    source = open_source()
    unread = [source]

    def frames() -> Iterable[Any]:
        return (unread.pop() if unread else open_source()).frames

    return source, frames


class SceneOutputs:
    """The Foxglove outputs of a scene run, entered on ``stack`` (closed with it): a live server (``serve``) opened
    at once, so that a viewer can connect while the model loads, and an MCAP recording (:meth:`record_to`). Both
    share one channel set, which :func:`stream` logs each frame to once; :attr:`sinks` and :attr:`record` are its
    arguments.

    Args:
        stack: the ``ExitStack`` that closes the outputs (also on Ctrl-C or an error).
        labels: the label set (the colours of the boxes); :meth:`record_to` sets the recognizer's own.
        serve, port, host: a live Foxglove WebSocket server on ``host:port``.
        announce: called with one line saying where the live view is.
    """

    def __init__(self, stack: ExitStack, labels: Optional[Sequence[str]] = None, *, serve: bool = False,
                 port: int = 8765, host: str = "127.0.0.1", announce: Callable[[str], None] = print):
        self.stack = stack
        self.labels = labels
        self.channels = None  # made when the first output needs them: Foxglove's channels are process-wide
        self.sinks: list = []
        self.record: list = []
        self.server = None
        if serve:
            from .foxglove import LiveServer

            self.server = stack.enter_context(LiveServer(port, host, scene=self._channels()))
            self.sinks.append(self.server)
            announce(f"Foxglove live view at {self.server.url} (Foxglove: Open connection, Foxglove WebSocket)")

    def _channels(self):
        if self.channels is None:
            from .foxglove import SceneChannels

            self.channels = SceneChannels(labels=self.labels)
        return self.channels

    def record_to(self, path: Any, labels: Sequence[str], metadata: dict) -> None:
        """Record the first pass to the MCAP file ``path`` (checked by the caller), with ``metadata``."""
        from .foxglove import McapRecording

        channels = self._channels()
        channels.labels = list(labels)
        self.record.append(self.stack.enter_context(McapRecording(path, scene=channels, overwrite=True,
                                                                  metadata=metadata)))

    def set_labels(self, labels: Sequence[str]) -> None:
        """The recognizer's label set, once it is known (the live view's box colours)."""
        self.labels = list(labels)
        if self.channels is not None:
            self.channels.labels = list(labels)

    def wait_for_viewer(self, timeout: float) -> bool:
        """Whether a viewer subscribed to the live server within ``timeout`` seconds (True without a server)."""
        return self.server is None or not timeout or self.server.wait_for_subscriber(timeout=timeout)
