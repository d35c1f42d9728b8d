"""`spiritserve chat`: a terminal client for `/v1/realtime` — speak a file to the server, save the answer.

It streams the file as 100 ms input_audio_buffer.append events (as a microphone would), commits the turn,
prints text deltas and timings as they arrive, and writes the streamed answer audio to a WAV file.
Several files make several turns of one conversation.
"""

import argparse
import base64
import json
import sys
import time
from pathlib import Path

CHUNK_SECONDS = 0.1


def _run(args: argparse.Namespace) -> None:
    import numpy as np
    import soundfile
    from websockets.sync.client import connect

    from spiritserve.server.audio_io import SAMPLE_RATE, decode_audio, encode_pcm16

    session = {"output_modality": "text" if args.text else "speech", "max_response_seconds": args.max_seconds}
    session.update({key: value for key, value in (("seed", args.seed), ("speaker", args.speaker)) if value is not None})
    with connect(args.url, max_size=2**24, open_timeout=30) as socket:

        def receive() -> dict:
            event = json.loads(socket.recv(timeout=args.timeout))
            if event["type"] == "error":
                print(f"error: {event['error']['code']}: {event['error']['message']}", file=sys.stderr)
            return event

        receive()  # session.created
        socket.send(json.dumps({"type": "session.update", "session": session}))
        while receive()["type"] != "session.updated":
            pass
        for turn, path in enumerate(args.inputs, start=1):
            audio = decode_audio(path.read_bytes(), max_seconds=600)
            step = int(CHUNK_SECONDS * SAMPLE_RATE)
            for start in range(0, len(audio), step):
                chunk = base64.b64encode(encode_pcm16(audio[start : start + step])).decode()
                socket.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
            socket.send(json.dumps({"type": "input_audio_buffer.commit"}))
            answer: list[bytes] = []
            started = time.perf_counter()
            while (event := receive())["type"] != "response.done":
                if event["type"] == "response.output_audio.delta":
                    answer.append(base64.b64decode(event["delta"]))
                elif event["type"] == "response.output_text.delta":
                    print(event["delta"], end="", flush=True)
            done = event["response"]
            if answer:
                out = args.out if len(args.inputs) == 1 else args.out.with_stem(f"{args.out.stem}-{turn}")
                samples = np.frombuffer(b"".join(answer), dtype="<i2")
                soundfile.write(out, samples, SAMPLE_RATE, subtype="PCM_16")
                print(f"turn {turn}: wrote {len(samples) / SAMPLE_RATE:.2f} s of speech to {out}")
            else:
                print()
            usage, timings = done["usage"], done["timings"]
            print(
                f"turn {turn}: {done['status']}, {usage['input_tokens']} prompt tokens, "
                f"{usage['output_tokens']} generated, first delta after {timings['first_delta_s'] or 0:.3f} s, "
                f"{time.perf_counter() - started:.3f} s in all"
            )
            if done["status"] != "completed":
                sys.exit(1)


def add_parser(commands) -> None:
    parser = commands.add_parser("chat", help="talk to a running server's /v1/realtime with audio files")
    parser.add_argument("inputs", type=Path, nargs="+", help="speech files, one per user turn (any common format)")
    parser.add_argument("--url", default="ws://127.0.0.1:8000/v1/realtime")
    parser.add_argument("--out", type=Path, default=Path("answer.wav"), help="answer WAV (numbered per turn)")
    parser.add_argument("--text", action="store_true", help="ask for a text answer instead of speech")
    parser.add_argument("--max-seconds", type=float, default=10.0, help="speech answer budget per turn")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--speaker", type=int)
    parser.add_argument("--timeout", type=float, default=120.0, help="longest wait for a server event (s)")
    parser.set_defaults(run=_run)
