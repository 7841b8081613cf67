"""The HTTP server: OpenAI-compatible speech, a music API and a web UI over the library (`cadenza serve`)."""

from cadenza.serve.app import create_app
from cadenza.serve.state import ServerConfig

__all__ = ["ServerConfig", "create_app"]
