"""``GET /kb/files/{token}``: a knowledge base's stored source (a PDF manual) behind a signed, expiring link.

A Sources footer (bot/knowledge/citing.py) links each cited PDF page here: ``{public_url}/kb/files/<token>
#page=12`` — browsers' PDF viewers open the page the fragment names. The token is the file's SHA-256, type
and title, signed with the web chat's key (``adapters.web.session_secret_env``, the same on every replica)
and valid for ``knowledge.link_days``: a link shared in a chat works for that long, and nobody can ask for
another file by changing it. Without ``server.public_url`` there is no address to link to, and sources are
cited by title and page only.
"""

from __future__ import annotations

import re

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from bot.knowledge.base import Passage
from bot.store import Store

ROUTE = "/kb/files/{token}"
_SAFE_NAME = re.compile(r"[^\w.\- ]+")


class SourceFiles:
    """Signs links to stored sources (:meth:`link`, what the knowledge reader's ``links`` is) and serves them."""

    def __init__(self, store: Store, secret: bytes, public_url: str, *, days: float = 30.0) -> None:
        self.store = store
        self.public_url = public_url.rstrip("/")
        self.max_age = int(days * 86400)
        self.signer = URLSafeTimedSerializer(secret, salt="internvl-bot knowledge source")

    def link(self, passage: Passage) -> str:
        """The signed link to ``passage``'s stored file at its page; "" when it has none or no public URL."""
        if not passage.blob or not self.public_url:
            return ""
        token = self.signer.dumps({"b": passage.blob, "m": passage.mime or "application/pdf", "t": passage.title})
        return f"{self.public_url}/kb/files/{token}" + (f"#page={passage.page}" if passage.page else "")

    def router(self) -> APIRouter:
        r = APIRouter()
        r.add_api_route(ROUTE, self.file, methods=["GET"], include_in_schema=False)
        return r

    async def file(self, token: str) -> Response:
        try:
            data = self.signer.loads(token, max_age=self.max_age)
        except SignatureExpired:
            return JSONResponse({"error": "this link has expired: ask the assistant again for a fresh one"},
                                status_code=410)
        except BadSignature:
            return JSONResponse({"error": "not a valid link"}, status_code=404)
        if not isinstance(data, dict) or not isinstance(data.get("b"), str):
            return JSONResponse({"error": "not a valid link"}, status_code=404)
        try:
            content = await self.store.attachment_data(data["b"])
        except (FileNotFoundError, ValueError):
            return JSONResponse({"error": "this document is no longer in the knowledge base"}, status_code=404)
        mime = str(data.get("m") or "application/pdf")
        name = _SAFE_NAME.sub("_", str(data.get("t") or "source"))[:100] or "source"
        if mime == "application/pdf" and not name.lower().endswith(".pdf"):
            name += ".pdf"
        return Response(content, media_type=mime, headers={
            "Content-Disposition": f'inline; filename="{name}"', "Cache-Control": "private, max-age=3600",
            # a PDF from a company's manuals, shown by the browser's viewer: nothing of it may run here
            "Content-Security-Policy": "sandbox; default-src 'none'"})


__all__ = ["ROUTE", "SourceFiles"]
