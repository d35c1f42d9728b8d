"""`spiritserve chat`: a terminal client for `/v1/realtime` — talk through files or a microphone.

Files: each file is one user turn, streamed as 100 ms `input_audio_buffer.append` events, committed, and
answered on `response.create`.
Microphone: audio is captured live through FFmpeg's device layer (ALSA by default; any FFmpeg input
device with `--capture-format`), streamed as it is recorded, and the server's voice-activity detection
ends each turn. Either way, text deltas are printed as they arrive and every spoken answer is written to
a WAV file (numbered per turn), with the timings the server reports. Audio goes both ways as OpenAI's
default format, `audio/pcm` at 24 kHz (the server resamples to and from the model's 16 kHz).
"""

import argparse
import base64
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the models are imported when a session starts: `spiritserve --help` stays light
    from spiritserve.server.realtime_protocol import ResponseDone, ServerEvent

CHUNK_SECONDS = 0.1
QUIET_SECONDS = 1.5  # live mode: after capture and all answers, this long without events ends the session
SAMPLE_RATE = 24_000  # audio/pcm, both ways
PCM = {"type": "audio/pcm", "rate": SAMPLE_RATE}


def capture(source: str, input_format: str | None) -> Iterator[bytes]:
    """PCM16 mono 24 kHz chunks of about 100 ms from a file or a capture device, as FFmpeg reads it."""
    import av

    step = int(CHUNK_SECONDS * SAMPLE_RATE) * 2
    pending = b""
    with av.open(source, format=input_format) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        for frame in container.decode(audio=0):
            for converted in resampler.resample(frame):
                pending += bytes(converted.planes[0])[: converted.samples * 2]
                while len(pending) >= step:
                    yield pending[:step]
                    pending = pending[step:]
        for converted in resampler.resample(None):
            pending += bytes(converted.planes[0])[: converted.samples * 2]
    if pending:
        yield pending


class ChatClient:
    def __init__(self, socket, out: Path, timeout: float) -> None:
        self.socket = socket
        self.out = out
        self.timeout = timeout
        self.turns = 0
        self._audio: list[bytes] = []

    def receive(self, timeout: float | None = None) -> "ServerEvent":
        """The next server event, parsed (and checked) with the server's own event models."""
        from spiritserve.server.realtime_protocol import SERVER_EVENTS

        event = SERVER_EVENTS.validate_json(self.socket.recv(timeout=timeout or self.timeout))
        if event.type == "error":
            print(f"error: {event.error.code}: {event.error.message}", file=sys.stderr)
        return event

    def send_audio(self, chunk: bytes) -> None:
        self.socket.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()}))

    def configure(self, session: dict) -> None:
        self.receive()  # session.created
        self.socket.send(json.dumps({"type": "session.update", "session": session}))
        while self.receive().type != "session.updated":
            pass

    def answer(self) -> str:
        """Read one response to its end; returns its status."""
        while (event := self.receive()).type != "response.done":
            self.on_delta(event)
        return self.finish_turn(event)

    def on_delta(self, event: "ServerEvent") -> None:
        if event.type == "response.output_audio.delta":
            self._audio.append(base64.b64decode(event.delta))
        elif event.type == "response.output_text.delta":
            print(event.delta, end="", flush=True)

    def finish_turn(self, done_event: "ResponseDone") -> str:
        """Save the turn's audio and report it (from its response.done); returns its status."""
        import numpy as np
        import soundfile

        self.turns += 1
        done = done_event.response
        if self._audio:
            path = self.out.with_stem(f"{self.out.stem}-{self.turns}")
            samples = np.frombuffer(b"".join(self._audio), dtype="<i2")
            soundfile.write(path, samples, SAMPLE_RATE, subtype="PCM_16")
            print(f"turn {self.turns}: wrote {len(samples) / SAMPLE_RATE:.2f} s of speech to {path}")
        else:
            print()
        self._audio = []
        usage, timings = done.usage, done.timings
        print(
            f"turn {self.turns}: {done.status}, {usage.input_tokens} prompt tokens, "
            f"{usage.output_tokens} generated, first delta after {timings.first_delta_s or 0:.3f} s, "
            f"{timings.total_s:.3f} s in all",
            flush=True,
        )
        return done.status


def _talk_with_files(client: ChatClient, files: list[Path]) -> bool:
    completed = True
    for path in files:
        for chunk in capture(str(path), None):
            client.send_audio(chunk)
        client.socket.send(json.dumps({"type": "input_audio_buffer.commit"}))
        client.socket.send(json.dumps({"type": "response.create"}))
        completed = client.answer() == "completed" and completed
    return completed


def _talk_live(client: ChatClient, device: str, input_format: str, seconds: float | None, silence_ms: int) -> bool:
    """Stream the device from a second thread while this one reads answers; server VAD ends the turns.

    When capture ends, a little more than `silence_ms` of silence lets VAD close a turn still open; the
    session ends once no turn is open, no response is running, and the server has gone quiet.
    """
    capture_done = threading.Event()

    def stream() -> None:
        started = time.monotonic()
        try:
            for chunk in capture(device, input_format):
                client.send_audio(chunk)
                if seconds is not None and time.monotonic() - started >= seconds:
                    break
            client.send_audio(bytes(int((silence_ms + 200) / 1000 * SAMPLE_RATE) * 2))
        finally:
            capture_done.set()

    threading.Thread(target=stream, name="capture", daemon=True).start()
    statuses: list[str] = []
    turn_open = False
    responses_running = 0
    while True:
        settled = capture_done.is_set() and not turn_open and responses_running == 0
        try:
            event = client.receive(timeout=QUIET_SECONDS if settled else None)
        except TimeoutError:
            if settled:
                break
            raise
        kind = event.type
        if kind == "input_audio_buffer.speech_started":
            turn_open = True
        elif kind == "input_audio_buffer.speech_stopped":
            turn_open = False
        elif kind == "response.created":
            responses_running += 1
        elif kind == "response.done":
            responses_running -= 1
            statuses.append(client.finish_turn(event))
        elif kind != "error":  # errors are printed as they are received
            client.on_delta(event)
    return bool(statuses) and all(status == "completed" for status in statuses[-1:])


def _run(args: argparse.Namespace) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    if bool(args.inputs) == args.microphone:
        sys.exit("give audio files, or --microphone, not both")
    turn_detection = {"type": "server_vad", "silence_duration_ms": args.silence_ms} if args.microphone else None
    output = {"format": PCM} if args.speaker is None else {"format": PCM, "voice": args.speaker}
    session = {
        "type": "realtime",
        "output_modalities": ["text" if args.text else "audio"],
        "audio": {"input": {"format": PCM, "turn_detection": turn_detection}, "output": output},
        "max_response_seconds": args.max_seconds,  # a spiritserve extension
    }
    if args.seed is not None:
        session["seed"] = args.seed
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    try:
        socket = connect(args.url, max_size=2**24, open_timeout=30, additional_headers=headers)
    except InvalidStatus as exc:
        hint = " (check --api-key or SPIRITSERVE_API_KEY)" if exc.response.status_code in (401, 403) else ""
        sys.exit(f"{args.url} refused the connection: HTTP {exc.response.status_code}{hint}")
    with socket:
        client = ChatClient(socket, args.out, args.timeout)
        client.configure(session)
        if args.microphone:
            completed = _talk_live(
                client, args.capture_device, args.capture_format, args.record_seconds, args.silence_ms
            )
        else:
            completed = _talk_with_files(client, args.inputs)
    if not completed:
        sys.exit(1)


def add_parser(commands) -> None:
    parser = commands.add_parser("chat", help="talk to a running server's /v1/realtime (files or microphone)")
    parser.add_argument("inputs", type=Path, nargs="*", help="speech files, one per user turn (any common format)")
    parser.add_argument("--microphone", action="store_true", help="capture live audio; the server detects turns")
    parser.add_argument("--capture-device", default="default", help="FFmpeg input device (ALSA: 'default', 'hw:1')")
    parser.add_argument("--capture-format", default="alsa", help="FFmpeg input format: alsa, pulse, lavfi, ...")
    parser.add_argument("--record-seconds", type=float, help="stop capturing after this long (default: device end)")
    parser.add_argument("--silence-ms", type=int, default=600, help="silence that ends a spoken turn")
    parser.add_argument("--url", default="ws://127.0.0.1:8000/v1/realtime")
    parser.add_argument(
        "--api-key", default=os.environ.get("SPIRITSERVE_API_KEY"), help="sent as a Bearer token (default: env "
        "SPIRITSERVE_API_KEY)"
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("answer.wav"), help="answer WAVs, numbered per turn")
    parser.add_argument("--text", action="store_true", help="ask for text answers instead of speech")
    parser.add_argument("--max-seconds", type=float, default=10.0, help="speech answer budget per turn")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--speaker", help="the answering voice: a speaker name from speakers.txt or its index")
    parser.add_argument("--timeout", type=float, default=120.0, help="longest wait for a server event (s)")
    parser.set_defaults(run=_run)
