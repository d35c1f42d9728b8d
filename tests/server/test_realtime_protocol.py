"""The realtime server's event models and conversation, without a server: every server event model dumps to JSON
the official SDK parses, and the conversation forgets its oldest items to fit the prompt budget."""

from types import SimpleNamespace
from typing import get_args

import pytest
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter

from spiritserve.pipeline import SpiritPipeline
from spiritserve.server.conversation import Conversation, ConversationItem
from spiritserve.server.realtime_protocol import (
    SERVER_EVENTS,
    AudioPart,
    ConversationItemAdded,
    ConversationItemDeleted,
    ConversationItemDone,
    ConversationItemRetrieved,
    ConversationItemTruncated,
    FinishedResponse,
    InputAudioBufferCleared,
    InputAudioBufferCommitted,
    Item,
    OutputTokenDetails,
    PcmuFormat,
    ResponseAudio,
    ResponseAudioOutput,
    ResponseContentPartAdded,
    ResponseContentPartDone,
    ResponseCreated,
    ResponseDone,
    ResponseError,
    ResponseObject,
    ResponseOutputAudioDelta,
    ResponseOutputAudioDone,
    ResponseOutputItemAdded,
    ResponseOutputItemDone,
    ResponseOutputTextDelta,
    ResponseOutputTextDone,
    ServerEvent,
    SessionConfig,
    SessionCreated,
    SessionUpdated,
    SpeechStarted,
    SpeechStopped,
    StatusDetails,
    TextPart,
    Timings,
    Usage,
    describe_session,
    error_event,
)
from spiritserve.tokens import Modality, OutputModality, PromptSegment

SDK_EVENTS = TypeAdapter(RealtimeServerEvent)
SESSION = describe_session(SessionConfig(), "sess_1", "spirit-lm-base-7b", "0")
ANSWER = Item(id="item_2", role="assistant", status="incomplete", content=[AudioPart(type="output_audio")])
USER = Item(
    id="item_1",
    role="user",
    status="completed",
    content=[TextPart(type="input_text", text="hi"), AudioPart(type="input_audio", transcript="hello")],
)
RESPONSE = ResponseObject(
    id="resp_1",
    output_modalities=["audio"],
    max_output_tokens="inf",
    metadata={"turn": "1"},
    conversation_id=None,
    audio=ResponseAudio(output=ResponseAudioOutput(format=PcmuFormat(type="audio/pcmu"), voice="0")),
    status="in_progress",
    output=[],
)
FINISHED = FinishedResponse(
    **{**dict(RESPONSE), "status": "failed", "output": [ANSWER]},
    status_details=StatusDetails(type="failed", reason=None, error=ResponseError(code="X", message="broke")),
    usage=Usage(
        input_tokens=3,
        output_tokens=2,
        total_tokens=5,
        output_audio_seconds=0.5,
        output_token_details=OutputTokenDetails(audio_tokens=2, text_tokens=0),
    ),
    units="[Hu1][Hu2]",
    timings=Timings(first_delta_s=None, total_s=0.1),
)
PLACE = {"response_id": "resp_1", "item_id": "item_2", "output_index": 0, "content_index": 0}
EXAMPLES = [
    SessionCreated(session=SESSION),
    SessionUpdated(session=SESSION, ignored_fields=["tools"]),
    InputAudioBufferCleared(),
    SpeechStarted(audio_start_ms=10, item_id="item_1"),
    SpeechStopped(audio_end_ms=900, item_id="item_1"),
    InputAudioBufferCommitted(item_id="item_1", previous_item_id=None),
    ConversationItemAdded(item=USER, previous_item_id=None),
    ConversationItemDone(item=USER, previous_item_id="item_0"),
    ConversationItemDeleted(item_id="item_1"),
    ConversationItemRetrieved(item=ANSWER),
    ConversationItemTruncated(item_id="item_2", content_index=0, audio_end_ms=300),
    ResponseCreated(response=RESPONSE),
    ResponseOutputItemAdded(
        response_id="resp_1", output_index=0, item=Item(id="item_2", role="assistant", status="in_progress", content=[])
    ),
    ResponseOutputItemDone(response_id="resp_1", output_index=0, item=ANSWER),
    ResponseContentPartAdded(**PLACE, part=AudioPart(type="audio")),
    ResponseContentPartDone(**PLACE, part=TextPart(type="text", text="so")),
    ResponseOutputAudioDelta(**PLACE, delta="AAAA"),
    ResponseOutputAudioDone(**PLACE),
    ResponseOutputTextDelta(**PLACE, delta="so"),
    ResponseOutputTextDone(**PLACE, text="so"),
    ResponseDone(response=FINISHED),
    error_event("invalid_value", "no", "evt_1", "item_id"),
]


def test_the_examples_cover_every_server_event():
    assert {type(event) for event in EXAMPLES} == set(get_args(get_args(ServerEvent)[0]))


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda event: event.type)
def test_server_events_parse_with_the_sdk_types_and_round_trip(event):
    wire = event.model_dump(mode="json")
    assert wire["event_id"].startswith("event_") and list(wire)[:2] == ["event_id", "type"]
    SDK_EVENTS.validate_python(wire)
    assert SERVER_EVENTS.validate_python(wire) == event


def _pipeline_counting_characters() -> SimpleNamespace:
    """A pipeline whose prompt tokens are the prompt's characters."""
    pipeline = SimpleNamespace(tokenizer=SimpleNamespace(encode_prompt=list))
    pipeline.fit_prompt = SpiritPipeline.fit_prompt.__get__(pipeline)
    return pipeline


def _text_item(name: str, text: str) -> ConversationItem:
    return ConversationItem(
        name, "user", [TextPart(type="input_text", text=text)], [PromptSegment(Modality.TEXT, text)]
    )


@pytest.mark.parametrize(("budget", "kept"), [(100, ["a", "b", "c"]), (16, ["b", "c"]), (1, ["c"])])
def test_the_conversation_forgets_its_oldest_items_to_fit_the_budget(budget, kept):
    conversation = Conversation()
    for name in ("a", "b", "c"):
        conversation.insert(_text_item(name, name * 4), len(conversation.items))
    prompt = conversation.prompt(_pipeline_counting_characters(), "", OutputModality.TEXT, budget)
    assert [item.id for item in conversation.items] == kept
    assert prompt == [PromptSegment(Modality.TEXT, name * 4) for name in kept]  # the newest item always stays


def test_a_prompt_of_given_items_leaves_the_conversation_alone():
    conversation = Conversation()
    conversation.insert(_text_item("a", "aaaa"), 0)
    given = [_text_item("x", "xxxx"), _text_item("y", "yyyy")]
    prompt = conversation.prompt(_pipeline_counting_characters(), "be brief", OutputModality.TEXT, 1, given)
    assert prompt == [PromptSegment(Modality.TEXT, "be brief"), PromptSegment(Modality.TEXT, "yyyy")]
    assert [item.id for item in conversation.items] == ["a"]
