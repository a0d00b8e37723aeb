"""/openapi.json: the request bodies of the generation routes (the pydantic models, with their bounds) and the
OpenAI error body of every refusal, so client generators and API fuzzers can build valid requests.

The routes read their bodies by hand (to stop reading at the size limit), so FastAPI cannot see the models;
they are declared here. The operator's limits (prompts, messages, characters) are written into the schema as set,
and once the engine has loaded, its own (context length, vocabulary).
"""

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from inference.server.errors import ERROR_STATUSES, ErrorResponse
from inference.server.protocol import ChatCompletionRequest, CompletionRequest
from inference.server.state import ServerSettings, ServerState

REQUEST_MODELS = (CompletionRequest, ChatCompletionRequest)
SSE_EVENT = {"type": "object", "properties": {
    "data": {"type": "string", "description": "a JSON chunk, `{\"error\": {...}}`, or `[DONE]` last"}}}
GENERATION_RESPONSES = {
    200: {"description": "the completion as one JSON object, or with `stream: true` as Server-Sent Events "
                         "(`data: {chunk}` lines, then `data: [DONE]`; an engine failure mid-stream arrives as "
                         "`data: {\"error\": {...}}`)",
          "content": {"application/json": {"schema": {"type": "object"}},
                      "text/event-stream": {"schema": SSE_EVENT}}},
    **{status: {"model": ErrorResponse, "description": text} for status, text in ERROR_STATUSES.items()},
}


def request_body(model: type[BaseModel]) -> dict:
    """`openapi_extra` declaring a route's JSON body as `model`."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def install_openapi(app: FastAPI, state: ServerState) -> None:
    """Serve a schema with the request models in its components and this server's limits in them."""

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in REQUEST_MODELS:
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
        apply_limits(components, state.settings)
        if state.engine is not None:  # until then the schema is rebuilt on every request
            apply_engine_limits(components, state.engine.max_model_len, state.engine.model_config.vocab_size)
            app.openapi_schema = schema
        return schema

    app.openapi = openapi


def apply_limits(components: dict, settings: ServerSettings) -> None:
    """maxItems / maxLength of the prompt and messages fields as this server enforces them."""
    for variant in components["CompletionRequest"]["properties"]["prompt"]["anyOf"]:
        if variant["type"] == "string":
            variant["maxLength"] = settings.max_prompt_chars
        elif variant["items"].get("type") == "string":
            variant["maxItems"] = settings.max_prompts
            variant["items"]["maxLength"] = settings.max_prompt_chars
        elif variant["items"].get("type") == "array":
            variant["maxItems"] = settings.max_prompts
    components["ChatCompletionRequest"]["properties"]["messages"]["maxItems"] = settings.max_messages


def apply_engine_limits(components: dict, max_model_len: int, vocab_size: int) -> None:
    """Token ids below the vocabulary size; at most max_model_len - 1 new tokens (a prompt has one at least)."""
    completion = components["CompletionRequest"]["properties"]
    for variant in completion["prompt"]["anyOf"]:
        items = variant.get("items", {})
        for integer in (items, items.get("items", {})):
            if integer.get("type") == "integer":
                integer["maximum"] = vocab_size - 1
    for model in ("CompletionRequest", "ChatCompletionRequest"):
        properties = components[model]["properties"]
        _integer_variant(properties["stop_token_ids"])["items"]["maximum"] = vocab_size - 1
        for name in ("max_tokens", "max_completion_tokens"):
            if name in properties:
                _integer_variant(properties[name])["maximum"] = max_model_len - 1


def _integer_variant(field: dict) -> dict:
    """The non-null variant of an optional field's schema."""
    return next(variant for variant in field.get("anyOf", [field]) if variant.get("type") != "null")
