"""The FastAPI application: OpenAI routes, /health, /metrics."""

import asyncio
import hmac
import uuid
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.background import BackgroundTask

from inference.server.errors import APIError, install_error_handlers, validation_error
from inference.server.generation import Generation
from inference.server.openapi import GENERATION_RESPONSES, install_openapi, request_body
from inference.server.protocol import ChatCompletionRequest, CompletionRequest
from inference.server.responses import ChatAPI, CompletionAPI, TokenText, event_stream, full_response
from inference.server.state import ServerState


def server_state(request: Request) -> ServerState:
    return request.app.state.server


def require_api_key(request: Request) -> None:
    """Bearer-token check in constant time (only when the server has a key)."""
    key = server_state(request).settings.api_key
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise APIError(401, "invalid or missing API key; send `Authorization: Bearer <key>`",
                       code="invalid_api_key")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, read chunk by chunk; 413 as soon as it (or its Content-Length) exceeds `limit`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def body_too_large(limit: int) -> APIError:
    return APIError(413, f"request body is larger than {limit} bytes; send fewer or shorter prompts",
                    code="request_too_large")


async def parse_body(request: Request, model: type[BaseModel]):
    """The JSON body (whatever the Content-Type says) validated into `model`; 400 naming the bad param."""
    raw = await read_body(request, server_state(request).settings.max_body_bytes)
    try:  # pydantic's own parser: refuses unpaired surrogates, bounds nesting depth and integer digits
        return model.model_validate_json(raw)
    except ValidationError as error:
        raise validation_error(list(error.errors())) from None


def check_model(state: ServerState, model: str | None) -> None:
    if model not in (None, state.settings.served_model_name):
        raise APIError(404, f"model {model!r} does not exist; GET /v1/models lists the served model",
                       param="model", code="model_not_found")


def tokenize(engine, prompt: str | list[int], add_special_tokens: bool = True) -> list[int]:
    """Text → token ids; token-id prompts are checked against the vocabulary."""
    if isinstance(prompt, str):
        try:
            return engine.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
        except (TypeError, ValueError) as error:  # text the tokenizer cannot take is the caller's problem
            raise APIError(400, f"the prompt cannot be tokenized: {error}", param="prompt",
                           code="invalid_prompt") from None
    vocab_size = engine.model_config.vocab_size
    if any(not 0 <= token_id < vocab_size for token_id in prompt):
        raise APIError(400, f"prompt token ids must be in [0, {vocab_size})", param="prompt", code="invalid_prompt")
    return list(prompt)


def check_prompt_size(texts: list, limit: int, param: str) -> None:
    """400 for a text prompt longer than `limit` characters, before any tokenizing."""
    longest = max((len(text) for text in texts if isinstance(text, str)), default=0)
    if longest > limit:
        raise APIError(400, f"a prompt has {longest} characters; this server takes at most {limit}",
                       param=param, code="prompt_too_long")


def check_count(count: int, limit: int, param: str) -> None:
    if count > limit:
        raise APIError(400, f"the request has {count} items in {param}; this server takes at most {limit} per "
                       "request", param=param, code="too_many_items")


def check_stop_token_ids(engine, body) -> None:
    vocab_size = engine.model_config.vocab_size
    if any(token_id >= vocab_size for token_id in body.stop_token_ids or []):
        raise APIError(400, f"stop_token_ids must be in [0, {vocab_size})", param="stop_token_ids",
                       code="invalid_value")


def check_kv_capacity(engine, body, prompts: list[list[int]], budgets: list[int]) -> None:
    """All choices of one request must fit the KV cache together (else they only evict each other)."""
    lengths = [len(ids) + budget for ids, budget in zip(prompts, budgets) for _ in range(body.n)]
    try:
        engine.check_fits_together(lengths)
    except ValueError as error:
        raise APIError(400, f"{error}; ask for fewer choices or tokens", param="n" if body.n > 1 else "max_tokens",
                       code="kv_cache_exceeded") from None


def output_budget(engine, prompt_len: int, requested: int | None) -> int:
    """max_tokens after checking the context length (None → whatever room the context leaves)."""
    max_model_len = engine.max_model_len
    max_tokens = requested if requested is not None else max_model_len - prompt_len
    if prompt_len + max(max_tokens, 1) > max_model_len:
        raise APIError(400, f"this model's maximum context length is {max_model_len} tokens; the request asks "
                       f"for {prompt_len + max_tokens} ({prompt_len} in the prompt, {max_tokens} to generate)",
                       param="max_tokens" if prompt_len < max_model_len else "prompt",
                       code="context_length_exceeded")
    return max_tokens


async def until_disconnected(request: Request) -> None:
    """Return when the client goes away."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def finish_unless_disconnected(request: Request, generation: Generation) -> None:
    """Run a non-streaming generation; abort it if the client disconnects first."""
    work = asyncio.ensure_future(generation.run_to_end())
    watch = asyncio.ensure_future(until_disconnected(request))
    done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    watch.cancel()
    if work not in done:
        work.cancel()
        raise APIError(499, "client disconnected", code="client_closed")
    work.result()


async def respond(request: Request, state: ServerState, body, api, prompts: list[list[int]], budgets: list[int],
                  logprobs: int | None, prefix: str, release):
    """Start one engine request per choice, and answer whole or as a stream."""
    generation = Generation(state.engine, state.metrics, f"{prefix}-{uuid.uuid4().hex}", release)
    model = state.settings.served_model_name
    try:
        for prompt_ids, budget in zip(prompts, budgets):
            generation.add_prompt(prompt_ids, [body.sampling_params(budget, i, logprobs) for i in range(body.n)])
    except BaseException:
        generation.close()
        raise
    if body.stream:
        stream = event_stream(generation, api, model, body.include_usage)
        return StreamingResponse(stream, media_type="text/event-stream", background=BackgroundTask(generation.close),
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        await finish_unless_disconnected(request, generation)
    finally:
        generation.close()
    return JSONResponse(full_response(generation, api, model))


async def serve(request: Request, body, num_prompts: int, prompts_of, max_tokens: int | None,
                logprobs: int | None, api_class, prefix: str):
    """Shared body of both generation routes: cheap checks and admission first (so a full queue answers 429
    before any tokenizing), then tokenization off the event loop, context budget, response."""
    state = server_state(request)
    engine = state.ready_engine()
    check_model(state, body.model)
    check_stop_token_ids(engine, body)
    release = state.admit(num_prompts * body.n)  # from here on every way out releases (the Generation does, once made)
    try:
        prompts = await asyncio.to_thread(prompts_of, engine)
        budgets = [output_budget(engine, len(ids), max_tokens) for ids in prompts]
        check_kv_capacity(engine, body, prompts, budgets)
        api = api_class(TokenText(engine.tokenizer))
        return await respond(request, state, body, api, prompts, budgets, logprobs, prefix, release)
    except ValueError as error:  # SamplingParams refused a combination pydantic let through
        release()
        raise APIError(400, str(error), code="invalid_value") from None
    except BaseException:
        release()
        raise


def build_router_handlers(app: FastAPI) -> None:
    """Attach every route."""
    v1 = [Depends(require_api_key)]

    @app.post("/v1/completions", dependencies=v1, openapi_extra=request_body(CompletionRequest),
              responses=GENERATION_RESPONSES)
    async def completions(request: Request):
        """OpenAI completions: one or more prompts, `n` choices each, whole or streamed (SSE)."""
        body = await parse_body(request, CompletionRequest)
        limits = server_state(request).settings
        texts = body.prompts()
        check_count(len(texts), limits.max_prompts, "prompt")
        check_prompt_size(texts, limits.max_prompt_chars, "prompt")

        def prompts(engine) -> list[list[int]]:
            return [tokenize(engine, prompt) for prompt in texts]

        return await serve(request, body, len(texts), prompts, body.max_tokens, body.logprobs, CompletionAPI, "cmpl")

    @app.post("/v1/chat/completions", dependencies=v1, openapi_extra=request_body(ChatCompletionRequest),
              responses=GENERATION_RESPONSES)
    async def chat_completions(request: Request):
        """OpenAI chat completions: the conversation rendered by the model's chat template, `n` choices."""
        body = await parse_body(request, ChatCompletionRequest)
        limits = server_state(request).settings
        check_count(len(body.messages), limits.max_messages, "messages")
        check_prompt_size(["".join(message.as_template_input()["content"] for message in body.messages)],
                          limits.max_prompt_chars, "messages")

        def prompts(engine) -> list[list[int]]:
            return [tokenize(engine, chat_prompt(engine, body), add_special_tokens=False)]

        return await serve(request, body, 1, prompts, body.requested_max_tokens, body.num_logprobs, ChatAPI,
                           "chatcmpl")

    @app.get("/v1/models", dependencies=v1)
    async def models(request: Request):
        state = server_state(request)
        name = state.settings.served_model_name
        card = {"id": name, "object": "model", "created": 0, "owned_by": "opslab", "root": name,
                "max_model_len": state.engine.max_model_len if state.engine is not None else None}
        return {"object": "list", "data": [card]}

    @app.get("/health")
    async def health(request: Request):
        healthy, reason = server_state(request).health()
        return JSONResponse({"status": reason}, status_code=200 if healthy else 503)

    @app.get("/metrics")
    async def metrics(request: Request):
        return PlainTextResponse(generate_latest(server_state(request).metrics.registry),
                                 media_type=CONTENT_TYPE_LATEST)


def chat_prompt(engine, body: ChatCompletionRequest) -> str:
    """The conversation rendered by the model's chat template."""
    messages = [message.as_template_input() for message in body.messages]
    try:
        return engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    except Exception as error:  # a template that cannot render these messages is the caller's problem
        raise APIError(400, f"chat template failed: {error}", param="messages", code="invalid_messages") from None


def create_app(state: ServerState) -> FastAPI:
    """The ASGI app; the engine loads in the background after startup (503 until ready)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(state.load())
        yield
        loading.cancel()
        await state.stop()

    app = FastAPI(title="opslab inference server", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = state
    install_error_handlers(app)
    build_router_handlers(app)
    install_openapi(app, state)
    return app
