"""OpenAI-compatible HTTP server for the inference engine (FastAPI + uvicorn).

`python -m inference.server --engine DIR` serves /v1/completions, /v1/chat/completions, /v1/models,
/health and /metrics; see inference/server/app.py for the routes and state.py for health and drain rules.
"""
