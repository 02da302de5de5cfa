"""The website at ``/ui/``: server-rendered pages over the same library calls and checks as the API."""

from .routes import Website
from .sessions import WebSessions

__all__ = ["WebSessions", "Website"]
