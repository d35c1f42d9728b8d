"""Streaming vocoding: units arrive a few at a time, audio leaves in chunks that join into the offline waveform.

One ``StreamingDecoder`` per stream (request), opened by ``UnitVocoder.open_stream``; it is synchronous and meant
for the speech worker's thread.
``push(units)`` returns the audio that is final so far (often empty), ``finish()`` flushes the rest. The
concatenation of everything returned equals ``UnitVocoder.decode`` of the same units (same speaker, style,
pitch and style units) up to float rounding, and has exactly ``sum(durations) × hop`` samples.

Many streams at once: ``push`` is ``feed`` (durations and generator input, cheap) then ``emit`` (the generator
forward). ``vocode_streams`` does the ``emit`` of several streams with their windows sharing forwards
(``windows.generate_windows``), equal to emitting each alone; the server's streaming micro-batcher calls it
through ``UnitVocoder.emit_streams``.

Why the seams are exact
-----------------------
Two things look across unit boundaries; everything else (embeddings, duration expansion, the speaker and
style conditioning) is per frame, so the generator input of consecutive unit spans concatenates exactly
(``CodeHiFiGAN.frame_features``).

(a) Durations. The duration predictor has two kernel-3 convs (padding 1), so a unit's duration depends on
    the units two either side (and on the zero padding at the true ends of the sequence). A unit's duration
    is committed only once two units follow it (or at ``finish``, where the right end is the true end), and
    the predictor runs on a window that starts two units before the first uncommitted unit: the conv1 output
    at the window's first position is wrong (zero padding instead of the real left neighbour), but conv2 of
    the first uncommitted unit reads only positions after it. So durations equal the offline ones.

(b) The generator. An output frame f depends only on input frames [f − left, f + right]
    (``windows.receptive_field_frames``), and a window whose first layer reaches that far never touches its
    own zero padding at any layer. So:
    - every chunk is generated from ``left`` context frames before the first sample it emits, which makes its
      left edge exact (the true start, frame 0, pads exactly as offline does);
    - audio is emitted only up to ``lookahead_frames`` before the last frame whose duration is committed. With
      the default lookahead = ``right`` (the full receptive field) every emitted sample is exact; the last
      chunk, at ``finish``, ends at the true end and is exact too.
    The tiny test vocoders reach 6 frames either side (240 ms of audio), confirmed by perturbing single input
    frames; the official-size 25 Hz config reaches 20. Left context only costs compute; the lookahead costs
    latency, so it can be lowered (``lookahead_frames``), making the right edge of each chunk approximate.

Seams. Each chunk holds back its last ``crossfade_samples`` (5 ms by default). The next chunk, generated with
full left context, regenerates that stretch and overlap-adds it with a raised-cosine crossfade (the two fades
sum to 1, so identical signals pass unchanged). With full lookahead both sides are exact and the crossfade is
a no-op; with a shorter lookahead it turns the mismatch at the seam into a 5 ms blend instead of a click.
The held tail never straddles a chunk's end, so no sample is dropped or doubled.

Measured (tests/vocoder/test_streaming.py, tiny base and expressive vocoders, fp32 CPU): max |streamed −
offline| ≤ 7e-7 (float rounding: windowed convs sum in a different order) with the default lookahead, for
pushes of 1, 7 or all units; durations identical. With a shorter lookahead on the tiny vocoders (whose random
weights use all of their receptive field): 5 frames ≈ 3e-4–9e-4, 4 frames ≈ 0.05, 3 frames ≈ 0.25. A trained
vocoder's effective reach is usually shorter than its computed one, so measure before lowering it.
The duration predictor also runs on windows, so in principle a log-duration within float rounding of a
rounding boundary could round the other way than offline; the tests compare durations exactly.

Pitch and style units (expressive vocoder) come one per unit, aligned with the units as parsed from LM output
(compat doc §8.3). Raw-rate resynthesis streams (12.5 Hz pitch, 1 Hz style for undeduplicated units) must be
brought to one per unit by the caller (``repeat_to_length``), with ``predict_durations=False``.
"""

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from spiritserve.vocoder.windows import GeneratorWindow, generate_windows, receptive_field_frames

if TYPE_CHECKING:  # base builds the streams (``UnitVocoder.open_stream``), so it imports this module
    from spiritserve.vocoder.base import UnitVocoder, VocodeRequest

# A unit's duration depends on this many units either side (two kernel-3 convs in the duration predictor).
DURATION_CONTEXT_UNITS = 2
DEFAULT_FIRST_CHUNK_UNITS = 10
DEFAULT_CHUNK_UNITS = 25
# Later chunks double up to this size. Every chunk recomputes the receptive field on both sides (40 frames on
# the official vocoder), so 25-unit chunks cost ~2.6x the offline decode of raw units and 100-unit ones ~1.4x
# (CPU, 8 s streams one unit per push: 3.9x, 5.2x, 7.0x real time for chunks of 25, 50, 100 units). Once the
# first chunks are playing, the listener has seconds of audio buffered, so later chunks can be long.
DEFAULT_MAX_CHUNK_UNITS = 100
DEFAULT_CROSSFADE_SAMPLES = 80  # 5 ms at 16 kHz


def _raised_cosine(length: int) -> np.ndarray:
    """Fade-in weights for an overlap-add of ``length`` samples; 1 − fade is the matching fade-out."""
    return (0.5 - 0.5 * np.cos(np.pi * (np.arange(length) + 0.5) / length)).astype(np.float32)


class StreamingDecoder:
    """Incremental ``UnitVocoder.decode`` for one stream: ``push`` units as they come, then ``finish``.

    Opened by ``UnitVocoder.open_stream``, which validates ``request``: speaker, style and predict_durations
    (False vocodes every unit as one frame, raw 25 Hz units) as for ``decode``; its units are ignored.
    first_chunk_units / chunk_units / max_chunk_units: a chunk is generated once this many units have committed
    durations and are past the lookahead: ``first_chunk_units`` for the first chunk, ``chunk_units`` for the
    second, then twice the previous size up to ``max_chunk_units``; everything ready then goes in that chunk.
    lookahead_frames: committed frames kept after the last emitted one as right context; None: the
    generator's full right receptive field (exact). crossfade_samples: overlap-add length at seams (≤ hop).
    """

    def __init__(
        self,
        vocoder: "UnitVocoder",
        request: "VocodeRequest",
        *,
        first_chunk_units: int = DEFAULT_FIRST_CHUNK_UNITS,
        chunk_units: int = DEFAULT_CHUNK_UNITS,
        max_chunk_units: int = DEFAULT_MAX_CHUNK_UNITS,
        lookahead_frames: int | None = None,
        crossfade_samples: int = DEFAULT_CROSSFADE_SAMPLES,
    ):
        model = vocoder.model
        predict_durations = request.predict_durations
        if predict_durations and model.dur_predictor is None:
            raise ValueError("this vocoder has no duration predictor; use predict_durations=False")
        if first_chunk_units < 1 or chunk_units < 1 or max_chunk_units < chunk_units:
            raise ValueError(
                f"chunk sizes must be >= 1 unit and max_chunk_units >= chunk_units, got {first_chunk_units}, "
                f"{chunk_units} and {max_chunk_units}"
            )
        left, right = receptive_field_frames(model.config)
        if lookahead_frames is None:
            lookahead_frames = right
        if lookahead_frames < 0:
            raise ValueError(f"lookahead_frames must be >= 0, got {lookahead_frames}")
        if not 0 <= crossfade_samples <= vocoder.hop:
            raise ValueError(f"crossfade_samples must be in 0..{vocoder.hop}, got {crossfade_samples}")

        self.vocoder = vocoder
        self._request = request
        self.predict_durations = predict_durations
        self.first_chunk_units = first_chunk_units
        self.chunk_units = chunk_units
        self.max_chunk_units = max_chunk_units
        self.lookahead_frames = lookahead_frames
        self.crossfade_samples = crossfade_samples
        self.left_context_frames = left
        self._hop = vocoder.hop
        self._needs_pitch = model.f0_dict is not None
        self._needs_style_units = model.style_dict is not None
        # Opening a stream (on the event loop) makes no tensor: device work starts at the first feed, on the speech
        # worker, and each feed sends its ids (speaker and style among them) to the device in one copy.
        self._fade_in = _raised_cosine(crossfade_samples)

        # Units whose durations are not committed yet, after up to DURATION_CONTEXT_UNITS committed ones.
        self._units: list[int] = []
        self._pitch: list[int] = []
        self._style_units: list[int] = []
        self._context_units = 0  # how many leading entries of the lists above are already committed
        self._durations: list[int] = []
        # Generator input from frame _features_start on: (model_in_dim, frames), None until the first units are
        # committed; frames past _frames_committed (dropped by end_within) are never read.
        self._features: torch.Tensor | None = None
        self._features_start = 0
        self._frames_committed = 0
        self._unemitted_unit_ends: list[int] = []  # end frames of committed units past the last chunk's end
        self._chunk_end = 0  # frame where the last chunk ended (its held tail ends there)
        self._tail = np.zeros(0, dtype=np.float32)  # held last crossfade_samples of the last chunk
        self._samples_emitted = 0
        self._chunks = 0
        self._closing = False  # the last units are in: the next emit flushes everything
        self._finished = False

    @property
    def durations(self) -> list[int]:
        """Frames per unit for the units committed so far (all of them after ``finish``)."""
        return list(self._durations)

    @property
    def committed_frames(self) -> int:
        """Frames of the units whose durations are committed: audio that this stream will produce for sure."""
        return self._frames_committed

    @property
    def samples_emitted(self) -> int:
        return self._samples_emitted

    def end_within(self, max_frames: int) -> int:
        """Close the stream after the longest run of committed units that fits in ``max_frames`` (a speech
        budget), also after the final ``feed``; later and uncommitted units are dropped, and the next emit flushes
        the rest. The kept units
        keep their committed durations (predicted with what followed), so the audio equals ``UnitVocoder.decode``
        of those units with those durations. Call between ``feed`` and ``emit``: the audio emitted so far then
        ends at least the lookahead before the cut, so none of it saw the dropped units. Returns the units kept.
        Touches no tensor (the pipeline calls it on the event loop)."""
        if self._finished:
            raise RuntimeError("end_within after the last audio: this stream is closed")
        kept, end_frame = 0, 0
        for duration in self._durations:
            if end_frame + duration > max_frames:
                break
            kept, end_frame = kept + 1, end_frame + duration
        if end_frame < self._chunk_end:
            raise RuntimeError(f"audio up to frame {self._chunk_end} was emitted; cannot end at frame {end_frame}")
        self._durations = self._durations[:kept]
        self._frames_committed = end_frame
        self._unemitted_unit_ends = [end for end in self._unemitted_unit_ends if end <= end_frame]
        self._units, self._pitch, self._style_units, self._context_units = [], [], [], 0
        self._closing = True
        return kept

    @property
    def finished(self) -> bool:
        return self._finished

    @torch.inference_mode()
    def push(
        self, units: list[int], pitch: list[int] | None = None, style_units: list[int] | None = None
    ) -> np.ndarray:
        """Add units (with their aligned pitch and style units on the expressive vocoder); return the audio
        that became final, float32 mono at the vocoder's rate, possibly empty."""
        self.feed(units, pitch, style_units)
        return self.emit()

    @torch.inference_mode()
    def finish(self) -> np.ndarray:
        """Commit the remaining durations and return the rest of the audio; the stream is closed after."""
        if self._finished:
            raise RuntimeError("finish called twice: this stream is closed")
        self.feed([], final=True)
        return self.emit()

    @torch.inference_mode()
    def feed(
        self,
        units: list[int],
        pitch: list[int] | None = None,
        style_units: list[int] | None = None,
        *,
        final: bool = False,
    ) -> None:
        """Add units and commit the durations that can no longer change (``final``: these are the last units,
        commit all). Generates no audio: ``emit`` or ``vocode_streams`` does. Invalid units raise ValueError
        and leave the stream as it was."""
        if self._closing:
            raise RuntimeError("push after finish: this stream is closed")
        if units or pitch or style_units:
            self._append(units, pitch, style_units)
        self._commit(final)
        self._closing = final

    @property
    def ready(self) -> bool:
        """Whether ``emit`` has audio to give: a chunk's worth of exact units, or the end of the stream."""
        if self._finished:
            return False
        if self._closing:
            return True
        end_frame = self._end_frame()
        ready = sum(end <= end_frame for end in self._unemitted_unit_ends)
        return ready >= self._next_chunk_units()

    @torch.inference_mode()
    def emit(self) -> np.ndarray:
        """The audio that is ready (empty when not ``ready``), generated on its own."""
        return vocode_streams([self])[0]

    def next_window(self) -> GeneratorWindow | None:
        """What the generator must run for the next chunk (None: nothing new to generate). No state changes, so
        a failed forward can be retried."""
        end_frame = self._end_frame()
        if end_frame <= self._chunk_end:
            return None
        hop = self._hop
        first_sample = self._chunk_end * hop - len(self._tail)  # the held tail is regenerated and crossfaded
        window_start = max(0, first_sample // hop - self.left_context_frames)
        assert window_start >= self._features_start, "generator input dropped too early"
        start = self._features_start
        features = self._features[:, window_start - start : self._frames_committed - start]  # (model_in_dim, frames)
        return GeneratorWindow(features, first_sample - window_start * hop, (end_frame - window_start) * hop)

    def take(self, audio: np.ndarray | None) -> np.ndarray:
        """Accept the kept audio of ``next_window()`` (None when it was None) and return what is now final:
        crossfade the held tail in, hold the new tail back (unless this is the end), drop unneeded input."""
        final = self._closing
        if audio is None:  # nothing new was generated; at the end the held tail is final as it is
            out = self._tail if final else np.zeros(0, dtype=np.float32)
            self._tail = self._tail[len(out) :]
            self._samples_emitted += len(out)
            self._finished = final
            return out
        hop, end_frame = self._hop, self._end_frame()
        audio = audio.copy()
        if len(self._tail):
            overlap = len(self._tail)
            audio[:overlap] = self._tail * (1 - self._fade_in) + audio[:overlap] * self._fade_in
        hold = 0 if final else self.crossfade_samples
        self._tail = audio[len(audio) - hold :].copy()
        out = audio[: len(audio) - hold]

        self._chunk_end = end_frame
        self._chunks += 1
        self._samples_emitted += len(out)
        self._unemitted_unit_ends = [end for end in self._unemitted_unit_ends if end > end_frame]
        # drop generator input that no later window reaches back to
        next_window_start = max(0, (end_frame * hop - hold) // hop - self.left_context_frames)
        drop = next_window_start - self._features_start
        if drop > 0:
            self._features = self._features[:, drop:]
            self._features_start = next_window_start
        assert self._samples_emitted + len(self._tail) == self._chunk_end * hop, "streamed length drifted"
        self._finished = final
        return out

    def _next_chunk_units(self) -> int:
        if self._chunks == 0:
            return self.first_chunk_units
        return min(self.chunk_units * 2 ** (self._chunks - 1), self.max_chunk_units)

    def _end_frame(self) -> int:
        """The frame the next chunk ends at: all committed frames at the end, else the lookahead before them."""
        return self._frames_committed if self._closing else self._frames_committed - self.lookahead_frames

    def _append(self, units: list[int], pitch: list[int] | None, style_units: list[int] | None) -> None:
        checked = self.vocoder.validate(replace(self._request, units=units, pitch=pitch, style_units=style_units))
        units, pitch, style_units = checked.units, checked.pitch, checked.style_units
        for name, values, needed in (
            ("pitch", pitch, self._needs_pitch),
            ("style_units", style_units, self._needs_style_units),
        ):
            if needed and (values is None or len(values) != len(units)):
                got = "none" if values is None else f"{len(values)}"
                raise ValueError(
                    f"this expressive vocoder needs {name} one per unit when streaming: {len(units)} units, {got} "
                    f"{name} (bring raw-rate streams to the unit rate with repeat_to_length first)"
                )
        self._units += units
        self._pitch += pitch or []
        self._style_units += style_units or []

    def _commit(self, final: bool) -> None:
        """Fix the durations that can no longer change and append those units' generator input frames."""
        total = len(self._units)
        start = self._context_units
        stop = total if final or not self.predict_durations else max(start, total - DURATION_CONTEXT_UNITS)
        if stop == start:
            return
        if self.predict_durations:  # on the host: Python ints, no wait for the device
            durations = self.vocoder.predict_durations(self._units)[start:stop]
        else:
            durations = [1] * (stop - start)

        def span(values: list[int]) -> list[int] | None:
            return values[start:stop] if values else None

        request = self._request
        assert request.speaker is not None, "validated by open_stream"
        features = self.vocoder.generator_input(
            self._units[start:stop], durations, request.speaker, request.style,
            span(self._pitch), span(self._style_units),
        )  # fmt: skip
        self._features = features if self._features is None else torch.cat([self._features, features], dim=1)
        for duration in durations:
            self._durations.append(duration)
            self._frames_committed += duration
            self._unemitted_unit_ends.append(self._frames_committed)
        # keep only the committed units the duration predictor still needs as left context
        keep_from = max(0, stop - DURATION_CONTEXT_UNITS)
        self._units = self._units[keep_from:]
        self._pitch = self._pitch[keep_from:]
        self._style_units = self._style_units[keep_from:]
        self._context_units = stop - keep_from


@torch.inference_mode()
def vocode_streams(decoders: list[StreamingDecoder]) -> list[np.ndarray]:
    """``emit`` for several streams of one vocoder, their generator windows sharing forwards; equal to each
    stream's own ``emit``. A stream that is not ``ready`` gets empty audio. Raises without changing any stream
    when the forward fails, so the batch can be retried."""
    if not decoders:
        return []
    model = decoders[0].vocoder.model
    if any(decoder.vocoder.model is not model for decoder in decoders):
        raise ValueError("vocode_streams: every stream must use the same vocoder")
    ready = [decoder.ready for decoder in decoders]
    windows = [decoder.next_window() if is_ready else None for decoder, is_ready in zip(decoders, ready)]
    fixed = decoders[0].vocoder.fixed_shapes  # the vocoder's fixed-shape forwards (CUDA graphs), if it uses them
    generated = iter(generate_windows(model, [window for window in windows if window is not None], fixed))
    return [
        decoder.take(None if window is None else next(generated)) if is_ready else np.zeros(0, dtype=np.float32)
        for decoder, is_ready, window in zip(decoders, ready, windows, strict=True)
    ]


@dataclass(frozen=True)
class StreamFeed:
    """What one stream receives in ``vocode_in_lockstep``: its units (with pitch and style units on the
    expressive vocoder), ``step_units`` of them per step, from step ``start_step`` on."""

    units: list[int]
    pitch: list[int] | None = None
    style_units: list[int] | None = None
    step_units: int = 1
    start_step: int = 0


def vocode_in_lockstep(decoders: list[StreamingDecoder], feeds: list[StreamFeed]) -> list[list[np.ndarray]]:
    """Concurrent streams as the server sees them: each step every started stream is fed its next units (the
    last ones with ``final``), then all of them go through one ``vocode_streams`` call. Returns the audio
    pieces of each stream (empty ones included); used by the benchmark and ``check-batching``."""
    pieces: list[list[np.ndarray]] = [[] for _ in decoders]
    step = 0
    while not all(decoder.finished for decoder in decoders):
        fed = []
        for index, (decoder, feed) in enumerate(zip(decoders, feeds, strict=True)):
            position = (step - feed.start_step) * feed.step_units
            if decoder.finished or position < 0:
                continue
            span = slice(position, position + feed.step_units)
            decoder.feed(
                feed.units[span],
                feed.pitch[span] if feed.pitch else None,
                feed.style_units[span] if feed.style_units else None,
                final=position + feed.step_units >= len(feed.units),
            )
            fed.append(index)
        for index, audio in zip(fed, vocode_streams([decoders[index] for index in fed]), strict=True):
            pieces[index].append(audio)
        step += 1
    return pieces
