"""Engine output (ChoiceDelta) to OpenAI's completion and chat response shapes."""

from __future__ import annotations

from collections.abc import AsyncIterator

from server.engine.service import ChoiceDelta, GenerationJob, TokenLogprob
from server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    TokenLogprobEntry,
    TopLogprob,
)


def completion_response(job: GenerationJob, choices: list[ChoiceDelta]) -> CompletionResponse:
    return CompletionResponse(
        id=job.request_id,
        model=job.model,
        choices=[
            CompletionChoice(
                index=choice.index,
                text=choice.text,
                logprobs=_completion_logprobs(choice.logprobs, 0),
                finish_reason=choice.finish_reason,
            )
            for choice in choices
        ],
        usage=job.usage,
    )


async def completion_chunks(
    job: GenerationJob, deltas: AsyncIterator[ChoiceDelta], include_usage: bool
) -> AsyncIterator[CompletionResponse]:
    text_offsets: dict[int, int] = {}
    async for delta in deltas:
        offset = text_offsets.get(delta.index, 0)
        text_offsets[delta.index] = offset + len(delta.text)
        choice = CompletionChoice(
            index=delta.index,
            text=delta.text,
            logprobs=_completion_logprobs(delta.logprobs, offset),
            finish_reason=delta.finish_reason,
        )
        yield CompletionResponse(id=job.request_id, model=job.model, choices=[choice])
    if include_usage:
        yield CompletionResponse(id=job.request_id, model=job.model, choices=[], usage=job.usage)


def chat_response(job: GenerationJob, choices: list[ChoiceDelta]) -> ChatCompletionResponse:
    return ChatCompletionResponse(
        id=job.request_id,
        model=job.model,
        choices=[
            ChatChoice(
                index=choice.index,
                message=AssistantMessage(content=choice.text),
                logprobs=_chat_logprobs(choice.logprobs),
                finish_reason=choice.finish_reason,
            )
            for choice in choices
        ],
        usage=job.usage,
    )


async def chat_chunks(
    job: GenerationJob, deltas: AsyncIterator[ChoiceDelta], include_usage: bool
) -> AsyncIterator[ChatCompletionChunk]:
    started: set[int] = set()
    async for delta in deltas:
        role = None if delta.index in started else "assistant"
        started.add(delta.index)
        choice = ChatChunkChoice(
            index=delta.index,
            delta=ChatDelta(role=role, content=delta.text),
            logprobs=_chat_logprobs(delta.logprobs),
            finish_reason=delta.finish_reason,
        )
        yield ChatCompletionChunk(id=job.request_id, model=job.model, choices=[choice])
    if include_usage:
        yield ChatCompletionChunk(id=job.request_id, model=job.model, choices=[], usage=job.usage)


def _completion_logprobs(logprobs: list[TokenLogprob] | None, text_offset: int) -> CompletionLogprobs | None:
    if logprobs is None:
        return None
    result = CompletionLogprobs()
    for entry in logprobs:
        result.tokens.append(entry.token)
        result.token_logprobs.append(entry.logprob)
        result.top_logprobs.append(dict(entry.top))
        result.text_offset.append(text_offset)
        text_offset += len(entry.token)
    return result


def _chat_logprobs(logprobs: list[TokenLogprob] | None) -> ChatLogprobs | None:
    if logprobs is None:
        return None
    return ChatLogprobs(
        content=[
            TokenLogprobEntry(
                token=entry.token,
                logprob=entry.logprob,
                bytes=list(entry.token.encode()),
                top_logprobs=[TopLogprob(token=token, logprob=lp, bytes=list(token.encode())) for token, lp in entry.top],
            )
            for entry in logprobs
        ]
    )
