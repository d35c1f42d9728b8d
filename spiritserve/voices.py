"""A request's `voice` → the vocoder speaker that says the answer.

A voice is a speaker's name from the vocoder's speakers.txt, or its index. OpenAI's built-in voice names are
accepted as well, so clients written for OpenAI (whose examples all pass e.g. `voice="alloy"`) work unchanged:
the n-th name of `OPENAI_VOICES` is speaker n modulo the speaker count. A speaker of the same name wins.
"""

# In the order OpenAI's API reference lists them.
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse",
                 "marin", "cedar")  # fmt: skip
VOICE_DESCRIPTION = "a speaker's name from the vocoder's speakers.txt, its index, or an OpenAI voice name (alloy, ...)"


def speaker_for(voice: str | int | None, speakers: list[str]) -> int | None:
    """The speaker index `voice` names (None: the vocoder's default). ValueError names the choices."""
    if voice is None:
        return None
    count = max(len(speakers), 1)  # a vocoder without speakers.txt still has its one speaker, 0
    if isinstance(voice, str) and voice in speakers:
        return speakers.index(voice)
    if isinstance(voice, str) and voice.lower() in OPENAI_VOICES:
        return OPENAI_VOICES.index(voice.lower()) % count
    index = voice if isinstance(voice, int) else int(voice) if voice.isdigit() else None
    if index is not None and 0 <= index < count:
        return index
    raise ValueError(
        f"unknown voice {voice!r}: use a speaker's name {speakers}, its index 0-{count - 1}, or an OpenAI voice name"
    )
