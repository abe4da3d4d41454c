"""The REST API and web app of ``dermfm serve`` (FastAPI; OpenAPI at ``/openapi.json``).

Routes are thin: images go through :mod:`dermfm.server.images` (metadata stripped before
anything is stored), inference through one :class:`~dermfm.assistant.Assistant` whose image
embeddings are micro-batched across concurrent requests, cases through
:class:`~dermfm.server.store.SqlCaseStore` (the assistant's case-store interface on SQL), and
every access to a case is written to the audit log. The contract is in ``docs/server.md``.
"""

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from dermfm import __version__
from dermfm.server.auth import ApiError, Principal, RateLimiter, bearer_token
from dermfm.server.settings import ServerSettings

STATIC = Path(__file__).with_name("static")
CODES = {
    400: "invalid_input",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "invalid_input",
    413: "too_large",
    415: "unsupported_image",
    422: "invalid_input",
    429: "rate_limited",
}


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


# --------------------------------------------------------------------------- request bodies


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=1000)


class MessageBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=4000)


class PatientBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    age: int | None = Field(None, ge=0, le=120)
    sex: str | None = None
    site: str | None = Field(None, max_length=100)
    duration: str | None = Field(None, max_length=100)
    skin_type: str | None = Field(None, max_length=10)
    modality: str | None = None


class CaseUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient: PatientBody


class TokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Field(min_length=1, max_length=200)
    days: float = Field(90, gt=0, le=3650)


# --------------------------------------------------------------------------- the service


class Service:
    """What the routes share: database, image store, model, assistant, batcher, rate limiter."""

    def __init__(self, settings: ServerSettings) -> None:
        from dermfm.assistant import Assistant
        from dermfm.models import load_model
        from dermfm.server.batching import embedding_batcher
        from dermfm.server.images import ImageStore
        from dermfm.server.store import Database

        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.database = Database(settings.url)
        self.images = ImageStore(settings.images_dir)
        self.model = load_model(settings.model)
        self.batcher = embedding_batcher(self.model, settings.batch_max, settings.batch_wait_ms)
        self.assistant = Assistant(
            self.model, cases=settings.cases_index, encode=self.batcher.submit
        )
        self.limiter = RateLimiter(settings.rate_per_minute, settings.burst)

    def close(self) -> None:
        """Stop the batcher."""
        self.batcher.close()

    @lru_cache(maxsize=8)  # noqa: B019 - one service per process
    def classifier(self, labels: str) -> Any:
        """A zero-shot classifier per label set (class embeddings built once)."""
        from dermfm.zeroshot import ZeroShotClassifier

        return ZeroShotClassifier(self.model, labels)

    def store(self, principal: Principal) -> Any:
        """The case store acting for ``principal``."""
        from dermfm.server.store import SqlCaseStore

        return SqlCaseStore(self.database, self.images, principal.name)

    def embed_upload(self, data: bytes, name: str) -> tuple[Any, Any]:
        """Decode an upload (pixel limit, orientation) and embed it through the batcher."""
        from dermfm.io import decode_image_bytes

        image = decode_image_bytes(data, name)
        return image, self.batcher.submit(self.model.preprocess(image))


def _read_upload(upload: UploadFile, settings: ServerSettings) -> bytes:
    limit = int(settings.max_upload_mb * 1024 * 1024)
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise ApiError(
            413, "too_large", f"{upload.filename}: larger than {settings.max_upload_mb} MB"
        )
    if not data:
        raise ApiError(422, "unsupported_image", f"{upload.filename}: empty file")
    return data


def create_app(settings: ServerSettings, service: Service | None = None) -> FastAPI:
    """The FastAPI app of one server process."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        app.state.service.close()

    app = FastAPI(
        title="dermfm",
        version=__version__,
        description="Dermatology vision-language models: zero-shot differential diagnosis, "
        "concepts, retrieval and a grounded assistant. Decision support for clinicians, not a "
        "diagnosis.",
        lifespan=lifespan,
    )
    app.state.service = service or Service(settings)

    # ------------------------------------------------------------------ errors and limits

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, CODES.get(exc.status_code, "invalid_input"), str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()
        )
        return _error(422, "invalid_input", problems or "invalid request")

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        return _error(500, "internal", f"internal error ({type(exc).__name__})")

    @app.middleware("http")
    async def body_limit(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        limit = settings.max_upload_mb * 1024 * 1024
        if length and length.isdigit() and int(length) > limit:
            return _error(413, "too_large", f"request body over {settings.max_upload_mb} MB")
        return await call_next(request)

    def principal(request: Request) -> Principal:
        service: Service = request.app.state.service
        token = bearer_token(request.headers.get("authorization"))
        user = service.database.resolve_token(token)
        if user is None:
            raise ApiError(401, "unauthorized", "unknown or expired token")
        from dermfm.server.store import token_sha256

        found = Principal(user.name, user.role, token_sha256(token))
        service.limiter.take(found.token_hash)
        return found

    User = Annotated[Principal, Depends(principal)]

    def admin(user: User) -> Principal:
        if not user.is_admin:
            raise ApiError(403, "forbidden", "this needs the admin role")
        return user

    Admin = Annotated[Principal, Depends(admin)]

    def svc(request: Request) -> Service:
        return request.app.state.service

    Svc = Annotated[Service, Depends(svc)]

    def image_error(exc: Exception) -> ApiError:
        return ApiError(422, "unsupported_image", str(exc))

    def own_case(service: Service, user: Principal, case_id: str) -> Any:
        from dermfm.assistant.conversation import CaseError

        store = service.store(user)
        try:
            owner = store.owner_of(case_id)
        except CaseError:
            owner = None
        if owner is None or (owner != user.name and not user.is_admin):
            raise ApiError(404, "not_found", f"no case {case_id!r}")
        return store

    def case_json(store: Any, case: Any) -> dict[str, Any]:
        data = case.model_dump(mode="json")
        data.pop("image", None)
        data["owner"] = store.owner_of(case.case_id)
        data["image_url"] = f"/api/cases/{case.case_id}/image"
        return data

    # ------------------------------------------------------------------ public

    @app.get("/api/health")
    def health(service: Svc) -> dict[str, Any]:
        """Liveness: the model and the database answer."""
        return {
            "status": "ok",
            "version": __version__,
            "model": service.model.name,
            "database": service.database.ping(),
            "batching": {
                "max_batch": service.settings.batch_max,
                "batches": service.batcher.stats.batches,
                "mean_batch_size": round(service.batcher.stats.mean_batch_size, 2),
            },
        }

    @app.post("/api/login")
    def login(body: LoginBody, service: Svc) -> dict[str, Any]:
        """A session token for a user name and password."""
        user = service.database.verify_password(body.username, body.password)
        if user is None:
            raise ApiError(401, "unauthorized", "wrong user name or password")
        token, expires = service.database.create_token(
            user.name, hours=service.settings.login_hours, kind="login"
        )
        return {
            "token": token,
            "expires_at": expires.isoformat(),
            "user": {"name": user.name, "role": user.role},
        }

    @app.post("/api/logout", status_code=204)
    def logout(request: Request, user: User, service: Svc) -> Response:
        """Revoke the token of this request (sign out)."""
        service.database.revoke_token(bearer_token(request.headers.get("authorization")))
        return Response(status_code=204)

    # ------------------------------------------------------------------ inference

    @app.get("/api/me")
    def me(user: User) -> dict[str, str]:
        """Who the token belongs to."""
        return {"name": user.name, "role": user.role}

    @app.get("/api/models")
    def models(user: User) -> list[dict[str, Any]]:
        """The model registry."""
        from dermfm.models import list_models

        return [
            {
                "name": m.name,
                "backend": m.backend,
                "licence": m.licence,
                "description": m.description,
                "default": m.default,
            }
            for m in list_models()
        ]

    @app.post("/api/diagnose")
    def diagnose(
        user: User,
        service: Svc,
        image: Annotated[UploadFile, File()],
        labels: Annotated[str, Query(max_length=200)] = "assistant",
        top_k: Annotated[int, Query(ge=1, le=50)] = 5,
    ) -> dict[str, Any]:
        """Zero-shot differential diagnosis of one image (uncalibrated scores)."""
        from dermfm.errors import DermfmError, ImageError

        data = _read_upload(image, service.settings)
        try:
            clf = service.classifier(labels)
        except DermfmError as exc:
            raise ApiError(422, "invalid_input", str(exc)) from None
        try:
            _, embedding = service.embed_upload(data, image.filename or "upload")
        except ImageError as exc:
            raise image_error(exc) from None
        probs = clf.predict_proba(embedding[None])[0]
        return clf.summarise(image.filename or "upload", probs, top_k).to_dict()

    @app.post("/api/concepts")
    def concepts(user: User, service: Svc, image: Annotated[UploadFile, File()]) -> dict[str, Any]:
        """Clinical concept scores (MONET) of one image."""
        from dermfm.errors import ImageError

        data = _read_upload(image, service.settings)
        try:
            _, embedding = service.embed_upload(data, image.filename or "upload")
        except ImageError as exc:
            raise image_error(exc) from None
        annotator = service.assistant.annotator
        return annotator.annotation(
            image.filename or "upload", annotator.scores(embedding[None])[0]
        ).to_dict()

    @app.get("/api/search")
    def search(
        user: User,
        service: Svc,
        q: Annotated[str, Query(min_length=1, max_length=500)],
        k: Annotated[int, Query(ge=1, le=100)] = 5,
    ) -> list[dict[str, Any]]:
        """Text search over the case index."""
        index = service.assistant.index
        if index is None:
            raise ApiError(404, "not_configured", "no case index: start the server with --cases")
        return [hit.to_dict() for hit in index.search_text(q, k=k)]

    # ------------------------------------------------------------------ cases

    @app.post("/api/cases", status_code=201)
    def create_case(
        user: User,
        service: Svc,
        image: Annotated[UploadFile, File()],
        question: Annotated[str | None, Form(max_length=2000)] = None,
        age: Annotated[int | None, Form(ge=0, le=120)] = None,
        sex: Annotated[str | None, Form(max_length=20)] = None,
        site: Annotated[str | None, Form(max_length=100)] = None,
        duration: Annotated[str | None, Form(max_length=100)] = None,
        skin_type: Annotated[str | None, Form(max_length=10)] = None,
        modality: Annotated[str | None, Form(max_length=20)] = None,
    ) -> dict[str, Any]:
        """Consult: store the (metadata-free) image, run the assistant, open a case."""
        from dermfm.assistant.conversation import Consultation
        from dermfm.assistant.patient import details_from_fields
        from dermfm.errors import ImageError

        data = _read_upload(image, service.settings)
        name = image.filename or "upload"
        try:
            patient = details_from_fields(
                age=age,
                sex=sex,
                site=site,
                duration=duration,
                skin_type=skin_type,
                modality=modality,
            )
        except ValueError as exc:
            raise ApiError(422, "invalid_input", str(exc)) from None
        try:
            sha = service.images.put(data, name)  # metadata stripped before it is written
        except ImageError as exc:
            raise image_error(exc) from None
        store = service.store(user)
        chat = Consultation.start(
            service.assistant,
            service.images.path(sha),
            patient,
            question or None,
            store=store,
            source=Path(name).name,
        )
        service.database.audit(user.name, "create", chat.case.case_id, f"source={name}")
        return {
            "case": store.summary(chat.case.case_id),
            "report": chat.report.model_dump(mode="json"),
        }

    @app.get("/api/cases")
    def list_cases(
        user: User,
        service: Svc,
        q: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    ) -> dict[str, Any]:
        """Cases of the user (all cases for an admin), newest first; ``q`` searches them."""
        store = service.store(user)
        total, cases = store.search(q, limit, offset, owner=None if user.is_admin else user.name)
        return {"total": total, "cases": [store.summary(c.case_id) for c in cases]}

    @app.get("/api/cases/{case_id}")
    def read_case(case_id: str, user: User, service: Svc) -> dict[str, Any]:
        """A case: patient details, every message and every report version."""
        store = own_case(service, user, case_id)
        case = store.load(case_id)
        service.database.audit(user.name, "view", case_id)
        return case_json(store, case)

    @app.patch("/api/cases/{case_id}")
    def update_case(case_id: str, body: CaseUpdate, user: User, service: Svc) -> dict[str, Any]:
        """Change patient details; the report is recomputed when the findings change."""
        from dermfm.assistant.conversation import Consultation
        from dermfm.assistant.patient import details_from_fields

        store = own_case(service, user, case_id)
        chat = Consultation.resume(service.assistant, case_id, store)
        fields = body.patient.model_dump(exclude_none=True)
        try:
            patient = details_from_fields(**fields, previous=chat.case.patient)
        except ValueError as exc:
            raise ApiError(422, "invalid_input", str(exc)) from None
        updated = chat.update(patient)
        service.database.audit(
            user.name, "update", case_id, f"fields={sorted(fields)} report_updated={updated}"
        )
        return case_json(store, chat.case)

    @app.post("/api/cases/{case_id}/messages")
    def message(case_id: str, body: MessageBody, user: User, service: Svc) -> dict[str, Any]:
        """One chat turn with the assistant about the case."""
        from dermfm.assistant.conversation import Consultation

        store = own_case(service, user, case_id)
        reply = Consultation.resume(service.assistant, case_id, store).ask(body.text)
        service.database.audit(user.name, "message", case_id)
        return {
            "answer": reply.answer,
            "changed": reply.changed,
            "report_updated": reply.report_updated,
            "report": reply.report.model_dump(mode="json") if reply.report else None,
        }

    @app.get("/api/cases/{case_id}/image")
    def case_image(case_id: str, user: User, service: Svc) -> FileResponse:
        """The stored image (metadata removed on upload)."""
        store = own_case(service, user, case_id)
        path = store.image_path(store.load(case_id))
        if path is None or not path.is_file():
            raise ApiError(404, "not_found", f"case {case_id!r} has no stored image")
        return FileResponse(path)

    @app.get("/api/cases/{case_id}/documents/{name}")
    def document(case_id: str, name: str, user: User, service: Svc) -> Response:
        """``report|soap|handout|referral`` as ``.md`` or ``.pdf``, from the latest report."""
        from dermfm.assistant.documents import DOCUMENTS, markdown_to_pdf

        kind, _, fmt = name.partition(".")
        if kind not in DOCUMENTS or fmt not in ("md", "pdf"):
            raise ApiError(
                404,
                "not_found",
                f"no document {name!r}: use {'|'.join(DOCUMENTS)} with .md or .pdf",
            )
        store = own_case(service, user, case_id)
        markdown = DOCUMENTS[kind](store.load(case_id).report)
        service.database.audit(user.name, "document", case_id, name)
        headers = {"Content-Disposition": f'attachment; filename="{case_id}-{name}"'}
        if fmt == "md":
            return Response(markdown, media_type="text/markdown; charset=utf-8", headers=headers)
        with tempfile.TemporaryDirectory() as tmp:
            data = markdown_to_pdf(markdown, Path(tmp) / "doc.pdf").read_bytes()
        return Response(data, media_type="application/pdf", headers=headers)

    @app.get("/api/cases/{case_id}/export")
    def export(case_id: str, user: User, service: Svc) -> Response:
        """Everything about the case as a zip (case, image, documents, audit entries)."""
        store = own_case(service, user, case_id)
        service.database.audit(user.name, "export", case_id)
        return Response(
            store.export(case_id),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="case-{case_id}.zip"'},
        )

    @app.delete("/api/cases/{case_id}", status_code=204)
    def delete(case_id: str, user: User, service: Svc) -> Response:
        """Delete the case and everything derived from it (the audit entry stays)."""
        store = own_case(service, user, case_id)
        store.delete(case_id)
        service.database.audit(user.name, "delete", case_id)
        return Response(status_code=204)

    # ------------------------------------------------------------------ admin

    @app.get("/api/audit")
    def audit(
        user: Admin, service: Svc, case_id: Annotated[str | None, Query(max_length=64)] = None
    ) -> list[dict[str, Any]]:
        """The audit log (admin)."""
        return service.database.audit_entries(case_id)

    @app.post("/api/tokens", status_code=201)
    def new_token(body: TokenBody, user: Admin, service: Svc) -> dict[str, str]:
        """A long-lived API token for a user (admin)."""
        if not service.database.user_exists(body.user):
            raise ApiError(404, "not_found", f"no user {body.user!r}")
        token, expires = service.database.create_token(body.user, days=body.days, kind="api")
        service.database.audit(user.name, "token", None, f"for={body.user}")
        return {"token": token, "expires_at": expires.isoformat()}

    # ------------------------------------------------------------------ web app

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        @app.get("/", include_in_schema=False)
        def index() -> FileResponse:
            return FileResponse(STATIC / "index.html")

    return app


__all__ = ["Service", "create_app"]
