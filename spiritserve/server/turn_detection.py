"""Server VAD turn taking for one realtime session: the VAD's speech changes (spiritserve/vad.py) become turn
events on the session's input stream, with the decisions `ServerVad` asks for: where a committed turn starts
(`prefix_padding_ms` before the speech), whether new speech cuts off the running answer (barge-in) and whether
the turn's end starts an answer."""

import asyncio
from dataclasses import dataclass

import numpy as np

from spiritserve.server.realtime_protocol import ServerVad
from spiritserve.vad import VadFactory


@dataclass(frozen=True)
class SpeechStart:
    at_ms: int  # in the session's input stream
    interrupt: bool  # cancel the running response (barge-in)


@dataclass(frozen=True)
class TurnEnd:
    at_ms: int
    turn_start_ms: int  # commit the audio from here on: prefix padding before the speech start
    respond: bool  # start a response once the turn is committed


class TurnDetector:
    """One VAD's state over the input stream, started `offset` samples into it."""

    def __init__(self, make_vad: VadFactory, config: ServerVad, rate: int, offset: int) -> None:
        self.config, self.rate, self.offset = config, rate, offset
        self.vad = make_vad(config.threshold, config.silence_duration_ms, rate)
        self.speech_start_ms: int | None = None

    async def push(self, samples: np.ndarray) -> list[SpeechStart | TurnEnd]:
        """The turn events in the next input samples (float32 at `rate`)."""
        # Off the event loop: a long append is hundreds of Silero windows (docs/measurements.md).
        changes = await asyncio.to_thread(self.vad.push, samples)
        events: list[SpeechStart | TurnEnd] = []
        for change, position in changes:
            at_ms = (self.offset + position) * 1000 // self.rate
            if change == "speech_started":
                self.speech_start_ms = at_ms
                events.append(SpeechStart(at_ms, self.config.interrupt_response))
            else:
                turn_start_ms = (self.speech_start_ms or 0) - self.config.prefix_padding_ms
                events.append(TurnEnd(at_ms, turn_start_ms, self.config.create_response))
        return events
