"""/openapi.json: the request bodies of the generation routes (the pydantic models, with their bounds) and the
OpenAI error body of every refusal, so client generators and API fuzzers can build valid requests.

The routes read their bodies by hand (to stop reading at the size limit), so FastAPI cannot see the models;
they are declared here. The operator's limits (prompts, messages, characters) are written into the schema as set.
"""

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from inference.server.errors import ERROR_STATUSES, ErrorResponse
from inference.server.protocol import ChatCompletionRequest, CompletionRequest
from inference.server.state import ServerSettings

REQUEST_MODELS = (CompletionRequest, ChatCompletionRequest)
ERROR_RESPONSES = {status: {"model": ErrorResponse, "description": text} for status, text in ERROR_STATUSES.items()}


def request_body(model: type[BaseModel]) -> dict:
    """`openapi_extra` declaring a route's JSON body as `model`."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def install_openapi(app: FastAPI, settings: ServerSettings) -> None:
    """Serve a schema with the request models in its components and this server's limits in them."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in REQUEST_MODELS:
                model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            apply_limits(components, settings)
            app.openapi_schema = schema
        return app.openapi_schema

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
