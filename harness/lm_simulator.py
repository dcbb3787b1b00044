"""A scripted OpenAI-compatible LM server: deterministic, streaming, fault-injecting.

Tests and benchmarks run the whole real path against it (DSPy's LM client,
the adapter's parsing, streaming) with no model and no network. It answers
`/v1/chat/completions` in DSPy's ChatAdapter format for whatever output
fields the system prompt asks for, derived from the question, so a test
knows the exact answer in advance.

Timing comes from the command line (`--ttft-s`, `--tokens-per-s`). Faults
and per-request timing are scripted inside the question text, so one server
serves every test at once:

    [lm:status=500]          answer HTTP 500 (429 includes Retry-After: 0)
    [lm:fail_times=2,status=429]   fail the first 2 calls for this question
    [lm:delay_s=3]           wait before answering
    [lm:tps=20]              stream this request at 20 tokens/s
    [lm:drop]                close the connection mid-stream
    [lm:garbage]             answer text DSPy cannot parse
    [lm:demo=WORD]           answer wrongly unless the prompt carries a demo whose
                             answer holds WORD: every text field is then "I do not
                             know." (typed fields as usual, so it parses)
    [lm:garbage_with=WORD]   answer garbage when the prompt carries a demo whose
                             answer holds WORD: a version that fails

`[lm:demo=WORD]` is a program whose answers are wrong unless its prompt
carries the right demo: a demo is an assistant turn before the question
(DSPy's adapters write each few-shot demo as a user turn and an assistant
turn), and the right one is an answer that names WORD, as the usual answer
to such a question does (it quotes the question). The wrong answer never
names it, so only a demo whose answer was corrected to the right one makes
the program answer right: the feedback loop's test (tests/test_feedback_loop.py).

Whole-server faults and counters, for capacity tests: `POST /_outage`
(`{"status": 429, "retry_after_s": 2, "for_s": 10}`) answers every request
with that status for that long; `GET /_stats` says how many requests are
open now, the most that were open at once, and when the last one arrived
(`DELETE /_stats` starts counting again).

Every request's model, temperature, max_tokens and stop are kept and served
at `GET /_requests` so tests can check what reached the LM. A streamed
request's entry also gets `chunk_times` and `chunk_texts`: the wall-clock
time (`time.time()`) just before each content chunk was handed to the
server, and the chunk's text, so a benchmark can measure how long a chunk
takes to reach a client.
"""

import argparse
import asyncio
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

FIELD_HEADER = re.compile(r"\[\[ ## (\w+) ## \]\]")
DIRECTIVE = re.compile(r"\[lm:([^\]]*)\]")
COMPLETED = "[[ ## completed ## ]]"


def _directives(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for block in DIRECTIVE.findall(text):
        for part in block.split(","):
            name, _, value = part.partition("=")
            found[name.strip()] = value.strip() or "1"
    return found


def _output_fields(system: str) -> list[str]:
    """The output fields a ChatAdapter system prompt asks for, in order."""
    _, _, after = system.partition("Your output fields are:")
    names = re.findall(r"^\d+\. `(\w+)`", after.split("All interactions will be structured")[0], re.M)
    return names or ["answer"]


def _question(user: str) -> str:
    parts = FIELD_HEADER.split(user)
    # parts = [pre, name1, value1, name2, value2, ...]
    for name, value in zip(parts[1::2], parts[2::2], strict=False):
        if name != "completed":
            return value.strip().split("\n\n")[0].strip()
    return user.strip()


_NOTE = re.compile(r"^\[\[ ## (\w+) ## \]\]\n\{\1\}\s+# note: the value you produce (.*)$", re.M)


def _field_notes(system: str) -> dict[str, str]:
    """What the adapter says each typed output field must be (`must be a single int value`, ...)."""
    return {name: note for name, note in _NOTE.findall(system)}


def _instance(schema: dict[str, Any]) -> Any:
    """A small value that fits a JSON Schema (what DSPy asks of list, dict and pydantic fields)."""
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object":
        return {name: _instance(prop) for name, prop in schema.get("properties", {}).items()}
    if kind == "array":
        return [_instance(schema.get("items", {"type": "string"}))]
    return {"integer": 1, "number": 0.5, "boolean": True}.get(str(kind), "scripted")


def typed_value(name: str, note: str, question: str) -> str:
    """The scripted value of a typed field, from the adapter's note on it."""
    if note.startswith("must exactly match (no extra characters) one of: "):
        return note.rsplit(": ", 1)[1].split("; ")[0]
    if note == "must be a single int value":
        return "3"
    if note == "must be a single float value":
        return "0.5"
    if note == "must be True or False":
        return "True"
    if note.startswith("must adhere to the JSON schema: "):
        return json.dumps(_instance(json.loads(note.split(": ", 1)[1])))
    return f"{name} for {question}"


def scripted_answer(question: str, fields: list[str], notes: dict[str, str] | None = None) -> str:
    """The exact completion for a question: tests compute it the same way.

    Fields of the qa program get fixed texts; other typed fields a value of
    their type (`typed_value`); other text fields `<name> for <question>`.
    """
    values = {
        "reasoning": f"Thinking step by step about: {question}",
        "answer": f"The answer to '{question}' is 42.",
        "key_concepts": json.dumps(["scripting", "determinism"]),
        "question_type": "factual",
    }
    notes = notes or {}
    lines = []
    for name in fields:
        value = values.get(name) or typed_value(name, notes.get(name, ""), question)
        lines += [f"[[ ## {name} ## ]]", value, ""]
    lines.append(COMPLETED)
    return "\n".join(lines)


WRONG = "I do not know."


def wrong_answer(question: str, fields: list[str], notes: dict[str, str] | None = None) -> str:
    """The answer to a `[lm:demo=WORD]` question without its demo: every text field `WRONG`."""
    notes = notes or {}
    lines = []
    for name in fields:
        value = typed_value(name, notes[name], question) if notes.get(name) else WRONG
        lines += [f"[[ ## {name} ## ]]", value, ""]
    lines.append(COMPLETED)
    return "\n".join(lines)


def _carries_demo(messages: list[dict[str, Any]], word: str | None) -> bool:
    """Whether an assistant turn (a few-shot demo's answer) names `word`."""
    if not word:
        return False
    return any(m.get("role") == "assistant" and word in str(m.get("content", "")) for m in messages)


def _tokens(text: str) -> list[str]:
    """Split into word-sized chunks that concatenate back to the text."""
    return re.findall(r"\s*\S+|\s+", text)


class Simulator:
    def __init__(self, ttft_s: float, tokens_per_s: float) -> None:
        self.ttft_s = ttft_s
        self.tokens_per_s = tokens_per_s
        self.requests: list[dict[str, Any]] = []
        self.calls: Counter[str] = Counter()
        self.open = 0
        self.max_open = 0
        self.outage: dict[str, float] = {}

    def app(self) -> FastAPI:
        app = FastAPI()
        app.post("/v1/chat/completions")(self.chat)
        app.get("/v1/models")(self.models)
        app.get("/_requests")(self.list_requests)
        app.delete("/_requests")(self.clear_requests)
        app.get("/health")(lambda: {"status": "ok"})
        app.get("/_stats")(self.stats)
        app.delete("/_stats")(self.reset_stats)
        app.post("/_outage")(self.start_outage)
        return app

    async def stats(self) -> dict[str, Any]:
        last = max((r["at"] for r in self.requests), default=None)
        return {"open": self.open, "max_open": self.max_open, "requests": len(self.requests), "last_at": last}

    async def reset_stats(self) -> dict[str, int]:
        self.max_open = self.open
        return {"open": self.open}

    async def start_outage(self, request: Request) -> dict[str, float]:
        body = await request.json()
        self.outage = {
            "status": float(body["status"]),
            "retry_after_s": float(body.get("retry_after_s", 0)),
            "until": time.time() + float(body["for_s"]),
        }
        return self.outage

    async def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "simulated", "object": "model"}]}

    async def list_requests(self) -> list[dict[str, Any]]:
        return self.requests

    async def clear_requests(self) -> dict[str, int]:
        n = len(self.requests)
        self.requests.clear()
        self.calls.clear()
        return {"cleared": n}

    async def chat(self, request: Request) -> Response:
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            response = await self._chat(request)
        except BaseException:
            self.open -= 1
            raise
        if isinstance(response, StreamingResponse):
            # Open until its last chunk is sent.
            response.body_iterator = self._closing(response.body_iterator)
        else:
            self.open -= 1
        return response

    async def _closing(self, chunks: AsyncIterable[Any]) -> AsyncIterator[Any]:
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            self.open -= 1

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        messages = body.get("messages", [])
        system = next((m["content"] for m in messages if m.get("role") == "system"), "")
        user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        if isinstance(user, list):
            user = "".join(part.get("text", "") for part in user)
        question = _question(user)
        directives = _directives(question)
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        entry: dict[str, Any] = {
            "question": question,
            "model": body.get("model"),
            "temperature": body.get("temperature"),
            "max_tokens": body.get("max_tokens"),
            "max_completion_tokens": body.get("max_completion_tokens"),
            "stop": body.get("stop"),
            "stream": bool(body.get("stream")),
            "at": time.time(),
            "chunk_times": [],
            "chunk_texts": [],
        }
        self.requests.append(entry)
        self.calls[question] += 1
        if self.outage and time.time() < self.outage["until"]:
            entry["outage"] = True
            status = int(self.outage["status"])
            headers = {"Retry-After": f"{self.outage['retry_after_s']:g}"} if status == 429 else {}
            return JSONResponse(
                {"error": {"message": f"scripted outage {status}", "type": "scripted", "code": status}},
                status_code=status,
                headers=headers,
            )

        if "delay_s" in directives:
            await asyncio.sleep(float(directives["delay_s"]))
        status = int(directives.get("status", "0"))
        if status and self.calls[question] <= int(directives.get("fail_times", "1000000")):
            headers = {"Retry-After": "0"} if status == 429 else {}
            return JSONResponse(
                {"error": {"message": f"scripted failure {status}", "type": "scripted", "code": status}},
                status_code=status,
                headers=headers,
            )

        if "garbage" in directives or _carries_demo(messages, directives.get("garbage_with")):
            text = "I am not going to follow the format at all."
        elif "demo" in directives and not _carries_demo(messages, directives["demo"]):
            text = wrong_answer(question, _output_fields(system), _field_notes(system))
        else:
            text = scripted_answer(question, _output_fields(system), _field_notes(system))
        text = _apply_stop(text, body.get("stop"))
        tokens = _tokens(text)
        finish = "stop"
        if isinstance(max_tokens, int) and len(tokens) > max_tokens:
            tokens, finish = tokens[:max_tokens], "length"
        usage = {
            "prompt_tokens": sum(len(str(m.get("content", ""))) for m in messages) // 4,
            "completion_tokens": len(tokens),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        model = body.get("model", "simulated")
        if body.get("stream"):
            tokens_per_s = float(directives.get("tps", self.tokens_per_s))
            return StreamingResponse(
                self._stream(model, tokens, finish, usage, tokens_per_s, drop="drop" in directives, sent=entry),
                media_type="text/event-stream",
            )
        await asyncio.sleep(self.ttft_s + self._generation_s(len(tokens)))
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "".join(tokens)}, "finish_reason": finish}
                ],
                "usage": usage,
            }
        )

    def _generation_s(self, n_tokens: int) -> float:
        return n_tokens / self.tokens_per_s if self.tokens_per_s > 0 else 0.0

    async def _stream(
        self,
        model: str,
        tokens: list[str],
        finish: str,
        usage: dict[str, int],
        tokens_per_s: float,
        drop: bool,
        sent: dict[str, Any],
    ) -> AsyncIterator[bytes]:
        chunk_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        per_token_s = 1 / tokens_per_s if tokens_per_s > 0 else 0.0

        def chunk(delta: dict[str, Any], finish_reason: str | None, **extra: Any) -> bytes:
            body = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
                **extra,
            }
            return f"data: {json.dumps(body)}\n\n".encode()

        await asyncio.sleep(self.ttft_s)
        yield chunk({"role": "assistant", "content": ""}, None)
        for i, token in enumerate(tokens):
            if drop and i == len(tokens) // 2:
                raise ConnectionResetError("scripted drop")
            if per_token_s:
                await asyncio.sleep(per_token_s)
            data = chunk({"content": token}, None)
            sent["chunk_times"].append(time.time())
            sent["chunk_texts"].append(token)
            yield data
        yield chunk({}, finish, usage=usage)
        yield b"data: [DONE]\n\n"


def _apply_stop(text: str, stop: str | list[str] | None) -> str:
    for marker in [stop] if isinstance(stop, str) else stop or []:
        if marker and marker in text:
            text = text[: text.index(marker)]
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--ttft-s", type=float, default=0.0, help="delay before the first token")
    parser.add_argument("--tokens-per-s", type=float, default=0.0, help="0 means as fast as possible")
    args = parser.parse_args()
    app = Simulator(args.ttft_s, args.tokens_per_s).app()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
