"""The REST API and web app of ``dermfm serve`` (FastAPI; OpenAPI at ``/openapi.json``).

Routes are thin: images go through :mod:`dermfm.server.images` (metadata stripped before
anything is stored), inference through one :class:`~dermfm.assistant.Assistant` whose image
embeddings are micro-batched across concurrent requests, cases through
:class:`~dermfm.server.store.SqlCaseStore` (the assistant's case-store interface on SQL), and
every access to a case is written to the audit log. Request bodies are limited while they
stream in, images by a pixel budget read from their headers, image work by a :class:`Gate`;
every response carries the security headers of :mod:`dermfm.server.middleware`. No request value
ever names a file: label sets are packaged names or lists of class names. The contract is in
``docs/server.md``, the threat model in ``docs/security.md``.
"""

import io
import json
import re
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from dermfm import __version__
from dermfm.server.auth import (
    ECHO_LIMIT,
    ApiError,
    LoginThrottle,
    Principal,
    RateLimiter,
    bearer_token,
    echo,
)
from dermfm.server.gates import Gate
from dermfm.server.middleware import BodyLimit, SafeResponses
from dermfm.server.settings import ServerSettings

STATIC = Path(__file__).with_name("static")

#: Swagger UI 5 (``swagger-ui-bundle.js``, ``swagger-ui.css``) as the ``fastapi-offline``
#: package ships it; only its files are used, started by ``static/docs.js``.
SWAGGER_UI = Path(str(resources.files("fastapi_offline") / "static"))
CODES = {
    400: "invalid_input",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "invalid_input",
    409: "conflict",
    413: "too_large",
    415: "unsupported_image",
    422: "invalid_input",
    429: "rate_limited",
    502: "pacs_error",
}

#: Routes that take an image upload (``POST``): their bodies may reach ``max_upload_mb``; every
#: other request body is limited to ``max_body_kb``.
UPLOAD_ROUTES = frozenset({"/api/diagnose", "/api/concepts", "/api/cases"})

#: What a case id looks like (anything else is no case: 404 without a look-up).
CASE_ID = re.compile(r"[0-9a-f-]{1,64}")

#: Longest file name of an upload kept (for messages, the audit log and the case's source).
UPLOAD_NAME_LIMIT = 100

#: Characters a text field may not contain: C0 controls other than tab, newline and carriage
#: return, DEL, and lone surrogates (which no database or UTF-8 encoder accepts).
_FORBIDDEN_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def _plain_text(value: str | None) -> str | None:
    if value is not None and _FORBIDDEN_CHARACTERS.search(value):
        raise ValueError("contains a control character or an unpaired surrogate")
    return value


#: Validation of every text a client sends (with the field's own length limit).
PlainText = AfterValidator(_plain_text)


def _where(loc: tuple[Any, ...] | list[Any]) -> str:
    """A validation error's location, each part cut short and printable (a body's keys are the
    client's)."""
    return ".".join(
        "".join(c if c.isprintable() else "?" for c in str(part))[:ECHO_LIMIT] for part in loc
    )


def upload_name(upload: UploadFile) -> str:
    """The file name of an upload as dermfm keeps it (messages, the audit log, the case's
    source): its last path part, printable characters only, at most
    :data:`UPLOAD_NAME_LIMIT` characters. Never used as a path."""
    name = (upload.filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    kept = "".join(c for c in name if c.isprintable())[:UPLOAD_NAME_LIMIT]
    return kept or "upload"


def _read_upload(upload: UploadFile, name: str) -> bytes:
    """The bytes of an upload (the body limit has already bounded them)."""
    data = upload.file.read()
    if not data:
        raise ApiError(422, "unsupported_image", f"{name}: empty file")
    return data


def _client(request: Request) -> str | None:
    """The client's address (the proxy's forwarded one when the proxy is trusted)."""
    return request.client.host if request.client else None


# --------------------------------------------------------------------------- request bodies


class LoginBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: Annotated[str, Field(min_length=1, max_length=64), PlainText]
    password: Annotated[str, Field(min_length=1, max_length=1000), PlainText]


class PasswordBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    current_password: Annotated[str, Field(min_length=1, max_length=1000), PlainText]
    new_password: Annotated[str, Field(min_length=1, max_length=1000), PlainText]


class MessageBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: Annotated[str, Field(min_length=1, max_length=4000), PlainText]


class PatientBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    age: int | None = Field(None, ge=0, le=120)
    sex: Annotated[str | None, Field(max_length=20), PlainText] = None
    site: Annotated[str | None, Field(max_length=100), PlainText] = None
    duration: Annotated[str | None, Field(max_length=100), PlainText] = None
    skin_type: Annotated[str | None, Field(max_length=10), PlainText] = None
    modality: Annotated[str | None, Field(max_length=20), PlainText] = None


class CaseUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient: PatientBody


class TokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: Annotated[str, Field(min_length=1, max_length=64), PlainText]
    days: float = Field(90, gt=0, le=3650)


# --------------------------------------------------------------------------- the service


class Service:
    """What the routes share: database, image store, model, assistant, batcher, rate limits,
    sign-in throttle and the gates of expensive work."""

    def __init__(self, settings: ServerSettings) -> None:
        from dermfm.assistant import Assistant
        from dermfm.models import load_model
        from dermfm.server.batching import embedding_batcher
        from dermfm.server.images import ImageStore
        from dermfm.server.private import private_dir
        from dermfm.server.store import Database

        self.settings = settings
        private_dir(settings.data_dir, tighten=False)
        self.database = Database(settings.url)
        self.database.purge_expired_tokens()
        self.images = ImageStore(settings.images_dir, max_pixels=settings.max_pixels)
        self.model = load_model(settings.model)
        self.batcher = embedding_batcher(self.model, settings.batch_max, settings.batch_wait_ms)
        self.assistant = Assistant(
            self.model,
            cases=settings.cases_index,
            encode=self.batcher.submit,
            adapter=settings.adapters.get("assistant", True),
        )
        self.limiter = RateLimiter(settings.rate_per_minute, settings.burst)
        self.throttle = LoginThrottle(
            settings.login_free_failures,
            settings.login_backoff_s,
            settings.login_backoff_max_s,
            settings.address_failures_burst,
            settings.address_failures_per_minute,
        )
        self.image_gate = Gate(settings.image_slots, release=True)
        self.hash_gate = Gate(settings.hash_slots)

    def close(self) -> None:
        """Stop the batcher."""
        self.batcher.close()

    @lru_cache(maxsize=8)  # noqa: B019 - one service per process
    def classifier(self, labels: Any) -> Any:
        """A classifier per label set (class embeddings built once), with the adapter the
        settings name for it, else the model's shipped one for the label set, if any."""
        from dermfm.zeroshot import ZeroShotClassifier

        adapter = self.settings.adapters.get(labels.name, True)
        return ZeroShotClassifier(self.model, labels, adapter=adapter)

    def label_set(self, labels: str) -> Any:
        """The label set a request asks for: a packaged name, or a JSON list of class names
        (``["psoriasis", "eczema"]``) or a comma-separated one. Never a file: the answer does
        not depend on which files exist.

        Raises:
            ApiError: 422 ``invalid_input`` naming what is accepted.
        """
        from dermfm.errors import DermfmError
        from dermfm.knowledge import label_set_names, load_label_set

        spec: str | list[str] = labels
        if labels.lstrip().startswith("["):
            try:
                spec = json.loads(labels)
            except ValueError:
                spec = []
            if not spec or not all(isinstance(n, str) and n.strip() for n in spec):
                raise ApiError(422, "invalid_input", "labels: expected a JSON list of class names")
        try:
            chosen = load_label_set(spec, allow_files=False)
        except DermfmError as exc:
            raise ApiError(422, "invalid_input", str(exc)) from None
        most = self.settings.max_label_classes
        if labels not in label_set_names() and len(chosen) > most:
            raise ApiError(422, "invalid_input", f"labels: at most {most} class names")
        return chosen

    def store(self, principal: Principal) -> Any:
        """The case store acting for ``principal``."""
        from dermfm.server.store import SqlCaseStore

        return SqlCaseStore(self.database, self.images, principal.name)

    def preprocess(self, data: bytes, name: str, frame: int | None = None) -> Any:
        """Decode an upload (within the pixel budget, upright; ``frame``: which frame of a
        multi-frame DICOM upload) into the model's input tensor.

        Raises:
            ApiError: 422 ``unsupported_image`` naming the upload and the problem.
        """
        from dermfm.errors import ImageError
        from dermfm.io import decode_image_bytes

        try:
            image = decode_image_bytes(data, name, max_pixels=self.settings.max_pixels, frame=frame)
        except ImageError as exc:
            raise ApiError(422, "unsupported_image", str(exc)) from None
        return self.model.preprocess(image)

    def frames(self, data: bytes, name: str) -> list[tuple[str, int | None]]:
        """The inputs of an upload: ``[(name, None)]``, or for a multi-frame DICOM object one
        ``(name#frame=N, index)`` per frame (at most ``max_frames``).

        Raises:
            ApiError: 422 ``unsupported_image``: an unreadable DICOM header, too many frames.
        """
        from dermfm.errors import ImageError
        from dermfm.io.dicom import dicom_frames_in_bytes, is_dicom_bytes

        if not is_dicom_bytes(data):
            return [(name, None)]
        try:
            count = dicom_frames_in_bytes(data, name)
        except ImageError as exc:
            raise ApiError(422, "unsupported_image", str(exc)) from None
        if count == 1:
            return [(name, None)]
        if count > self.settings.max_frames:
            raise ApiError(
                422,
                "unsupported_image",
                f"{name}: {count} frames, more than the {self.settings.max_frames} allowed",
            )
        return [(f"{name}#frame={i + 1}", i) for i in range(count)]


def create_app(settings: ServerSettings, service: Service | None = None) -> FastAPI:
    """The FastAPI app of one server process."""
    from dermfm.assistant.conversation import CaseError

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
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service or Service(settings)

    # ------------------------------------------------------------------ errors and limits

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = CODES.get(exc.status_code, "invalid_input")
        return ApiError(exc.status_code, code, str(exc.detail), exc.headers).response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{_where(e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()
        )
        return ApiError(422, "invalid_input", problems or "invalid request").response()

    @app.exception_handler(CaseError)
    async def case_error(_: Request, exc: CaseError) -> JSONResponse:
        message = "the case was changed at the same time or its stored data is incomplete"
        return ApiError(409, "conflict", message).response()

    def body_limit(scope: Scope) -> int:
        upload = scope["method"] == "POST" and scope["path"] in UPLOAD_ROUTES
        return settings.upload_limit if upload else settings.body_limit

    app.add_middleware(BodyLimit, limit_for=body_limit)
    app.add_middleware(SafeResponses)  # outermost: its 500s and the 413s get the headers too

    def principal(request: Request) -> Principal:
        service: Service = request.app.state.service
        token = bearer_token(request.headers.get("authorization"))
        user = service.database.resolve_token(token)
        if user is None:
            raise ApiError(401, "unauthorized", "unknown or expired token")
        service.limiter.take(user.name)  # per user: a new token is no new allowance
        return Principal(user.name, user.role, token)

    User = Annotated[Principal, Depends(principal)]

    def admin(user: User) -> Principal:
        if not user.is_admin:
            raise ApiError(403, "forbidden", "this needs the admin role")
        return user

    Admin = Annotated[Principal, Depends(admin)]

    def svc(request: Request) -> Service:
        return request.app.state.service

    Svc = Annotated[Service, Depends(svc)]

    def own_case(service: Service, user: Principal, case_id: str) -> Any:
        """The case store for a case ``user`` may see; 404 otherwise (another user's case is
        audited as ``denied``, and answered as if it did not exist)."""
        store = service.store(user)
        try:
            owner = store.owner_of(case_id) if CASE_ID.fullmatch(case_id) else None
        except CaseError:
            owner = None
        if owner is not None and owner != user.name and not user.is_admin:
            service.database.audit(user.name, "denied", case_id, "case of another user")
        if owner is None or (owner != user.name and not user.is_admin):
            raise ApiError(404, "not_found", f"no case {echo(case_id)}")
        return store

    def case_json(store: Any, case: Any) -> dict[str, Any]:
        data = case.model_dump(mode="json")
        data.pop("image", None)
        data["owner"] = store.owner_of(case.case_id)
        data["image_url"] = f"/api/cases/{case.case_id}/image"
        return data

    async def embedded_upload(
        service: Service, image: UploadFile, name: str
    ) -> list[tuple[str, Any]]:
        """``(source, embedding)`` of each input of an upload (one per DICOM frame)."""

        def prepare() -> list[tuple[str, Any]]:
            data = _read_upload(image, name)
            return [
                (source, service.preprocess(data, name, frame))
                for source, frame in service.frames(data, name)
            ]

        prepared = await service.image_gate.run(prepare)
        return [
            (source, await run_in_threadpool(service.batcher.submit, pixels))
            for source, pixels in prepared
        ]

    def user_error(exc: Exception) -> ApiError:
        from dermfm.server.store import NoSuchUser

        if isinstance(exc, NoSuchUser):
            return ApiError(404, "not_found", str(exc))
        return ApiError(409, "conflict", str(exc))

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
    async def login(body: LoginBody, request: Request, service: Svc) -> dict[str, Any]:
        """A session token for a user name and password. Failed sign-ins are throttled per
        account and address (429 with ``Retry-After``) and audited."""
        address = _client(request)
        service.throttle.check(body.username, address)
        database = service.database
        user = await service.hash_gate.run(database.verify_password, body.username, body.password)
        if user is None:
            service.throttle.failed(body.username, address)
            await run_in_threadpool(
                database.audit, body.username, "login_failed", None, f"address={address}"
            )
            raise ApiError(401, "unauthorized", "wrong user name or password")
        service.throttle.succeeded(body.username, address)

        def issue() -> tuple[str, Any]:
            database.purge_expired_tokens()
            return database.create_token(
                user.name, hours=service.settings.login_hours, kind="login"
            )

        token, expires = await run_in_threadpool(issue)
        return {
            "token": token,
            "expires_at": expires.isoformat(),
            "user": {"name": user.name, "role": user.role},
        }

    @app.post("/api/logout", status_code=204)
    def logout(user: User, service: Svc) -> Response:
        """Revoke the token of this request (sign out)."""
        service.database.revoke_token(user.token)
        return Response(status_code=204)

    # ------------------------------------------------------------------ the signed-in user

    @app.get("/api/me")
    def me(user: User) -> dict[str, str]:
        """Who the token belongs to."""
        return {"name": user.name, "role": user.role}

    @app.post("/api/me/password")
    async def change_password(
        body: PasswordBody, request: Request, user: User, service: Svc
    ) -> dict[str, int]:
        """Change your own password (the current one is needed, and throttled like a sign-in);
        every other token of yours is revoked, this one stays valid."""
        from dermfm.server.store import UserError

        address = _client(request)
        service.throttle.check(user.name, address)
        database = service.database
        if await service.hash_gate.run(database.verify_password, user.name, body.current_password):
            service.throttle.succeeded(user.name, address)
        else:
            service.throttle.failed(user.name, address)
            await run_in_threadpool(
                database.audit, user.name, "password_failed", None, f"address={address}"
            )
            raise ApiError(403, "forbidden", "the current password is wrong")

        def change() -> int:
            return database.set_password(
                user.name, body.new_password, actor=user.name, keep_token=user.token
            )

        try:
            revoked = await service.hash_gate.run(change)
        except UserError as exc:
            raise ApiError(422, "invalid_input", str(exc)) from None
        return {"tokens_revoked": revoked}

    # ------------------------------------------------------------------ inference

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
    async def diagnose(
        user: User,
        service: Svc,
        image: Annotated[UploadFile, File()],
        labels: Annotated[
            str,
            Query(
                max_length=2000,
                description="A packaged label-set name (e.g. ham7), or the class names as a "
                'JSON list (["psoriasis", "eczema"]) or comma-separated; never a file.',
            ),
            PlainText,
        ] = "assistant",
        top_k: Annotated[int, Query(ge=1, le=50)] = 5,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Zero-shot differential diagnosis of one image (uncalibrated scores); a multi-frame
        DICOM upload gives a list, one result per frame."""
        name = upload_name(image)
        clf = await run_in_threadpool(lambda: service.classifier(service.label_set(labels)))
        inputs = await embedded_upload(service, image, name)
        results = [
            clf.summarise(source, clf.predict_proba(e[None])[0], top_k).to_dict()
            for source, e in inputs
        ]
        return results if len(results) > 1 else results[0]

    @app.post("/api/concepts")
    async def concepts(
        user: User, service: Svc, image: Annotated[UploadFile, File()]
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Clinical concept scores (MONET) of one image; a multi-frame DICOM upload gives a
        list, one result per frame."""
        name = upload_name(image)
        annotator = service.assistant.annotator
        results = [
            annotator.annotation(source, annotator.scores(e[None])[0]).to_dict()
            for source, e in await embedded_upload(service, image, name)
        ]
        return results if len(results) > 1 else results[0]

    @app.get("/api/search")
    def search(
        user: User,
        service: Svc,
        q: Annotated[str, Query(min_length=1, max_length=500), PlainText],
        k: Annotated[int, Query(ge=1, le=100)] = 5,
    ) -> list[dict[str, Any]]:
        """Text search over the case index."""
        index = service.assistant.index
        if index is None:
            raise ApiError(404, "not_configured", "no case index: start the server with --cases")
        return [hit.to_dict() for hit in index.search_text(q, k=k)]

    # ------------------------------------------------------------------ cases

    @app.post("/api/cases", status_code=201)
    async def create_case(
        user: User,
        service: Svc,
        image: Annotated[UploadFile, File()],
        question: Annotated[str | None, Form(max_length=2000), PlainText] = None,
        age: Annotated[int | None, Form(ge=0, le=120)] = None,
        sex: Annotated[str | None, Form(max_length=20), PlainText] = None,
        site: Annotated[str | None, Form(max_length=100), PlainText] = None,
        duration: Annotated[str | None, Form(max_length=100), PlainText] = None,
        skin_type: Annotated[str | None, Form(max_length=10), PlainText] = None,
        modality: Annotated[str | None, Form(max_length=20), PlainText] = None,
        frame: Annotated[
            int | None,
            Form(ge=1, le=10_000, description="Frame (from 1) of a multi-frame DICOM upload."),
        ] = None,
    ) -> dict[str, Any]:
        """Consult: store the (metadata-free) image, run the assistant, open a case. A DICOM
        upload's age, sex, body site and modality (from its SOP class) complete the patient
        details (the form's values win); only its pixels and UIDs are kept."""
        from dermfm.assistant.patient import details_from_fields
        from dermfm.io.dicom import is_dicom_bytes

        name = upload_name(image)
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

        def consult() -> dict[str, Any]:
            data = _read_upload(image, name)
            index = None
            if is_dicom_bytes(data):
                inputs = service.frames(data, name)
                if len(inputs) > 1 and frame is None:
                    raise ApiError(
                        422,
                        "unsupported_image",
                        f"{name}: {len(inputs)} frames: choose one with frame=1..{len(inputs)}",
                    )
                if frame is not None and frame > len(inputs):
                    raise ApiError(422, "invalid_input", f"frame: {name} has {len(inputs)}")
                index = None if frame is None else inputs[frame - 1][1]
            store, chat = open_case(service, user, data, name, index, patient, question)
            return {
                "case": store.summary(chat.case.case_id),
                "report": chat.report.model_dump(mode="json"),
            }

        return await service.image_gate.run(consult)

    def open_case(
        service: Service,
        user: Principal,
        data: bytes,
        name: str,
        frame: int | None,
        patient: Any,
        question: str | None,
    ) -> tuple[Any, Any]:
        """Store an image (its pixels only) and consult it in a new case; a DICOM image's
        patient context and UIDs join the case. Returns ``(store, consultation)``."""
        from dermfm.assistant.conversation import Consultation
        from dermfm.assistant.dicom import dicom_reference, with_dicom
        from dermfm.errors import ImageError
        from dermfm.io.dicom import is_dicom_bytes, read_dicom_context

        context = None
        source = name if frame is None else f"{name}#frame={frame + 1}"
        try:
            if is_dicom_bytes(data):
                context = read_dicom_context(io.BytesIO(data), name)
            # metadata (DICOM tags too) stripped before it is written
            sha = service.images.put(data, name, frame=frame)
        except ImageError as exc:
            raise ApiError(422, "unsupported_image", str(exc)) from None
        store = service.store(user)
        chat = Consultation.start(
            service.assistant,
            service.images.path(sha),
            with_dicom(patient, context),
            question or None,
            store=store,
            source=source,
            dicom=dicom_reference(context, frame),
        )
        service.database.audit(user.name, "create", chat.case.case_id, f"source={source}")
        return store, chat

    @app.post("/api/pacs/studies/{study_uid}", status_code=201)
    async def open_study(
        study_uid: str,
        user: User,
        service: Svc,
        store_back: Annotated[
            bool,
            Query(description="Store each report in the study as a DICOM SR and a PDF."),
        ] = False,
    ) -> dict[str, Any]:
        """Open a study of the configured PACS (DICOMweb): one case per photo (and frame),
        each with the patient context of its DICOM object; ``store_back`` stores each complete
        report in the study as a DICOM SR and an Encapsulated PDF. The PACS is the server's
        (``--pacs``); a request only names a Study Instance UID."""
        from dermfm.interop.dicomweb import (
            Pacs,
            PacsError,
            check_uid,
            encapsulated_pdf,
            structured_report,
        )
        from dermfm.interop.fhir import report_pdf

        if not service.settings.pacs_url:
            raise ApiError(404, "not_configured", "no PACS: start the server with --pacs URL")
        try:
            check_uid(study_uid)
        except PacsError as exc:
            raise ApiError(422, "invalid_input", f"study_uid: {exc}") from None

        def pull() -> dict[str, Any]:
            from pydicom import dcmread

            from dermfm.assistant.report import PatientDetails

            pacs = Pacs(str(service.settings.pacs_url))
            opened: list[dict[str, Any]] = []
            try:
                with pacs.pulled(study_uid) as study:
                    for n, file in enumerate(study.files):
                        data = file.read_bytes()
                        name = f"study-{study_uid[-12:]}-{n + 1}.dcm"
                        for _, frame in service.frames(data, name):
                            store, chat = open_case(
                                service, user, data, name, frame, PatientDetails(), None
                            )
                            stored: list[str] = []
                            report = chat.report
                            if store_back and report.status == "complete":
                                source = dcmread(file, stop_before_pixels=True)
                                made = [
                                    structured_report(report, source),
                                    encapsulated_pdf(report, source, report_pdf(report)),
                                ]
                                pacs.store(made)
                                stored = [str(ds.SOPInstanceUID) for ds in made]
                                service.database.audit(
                                    user.name, "pacs_store", chat.case.case_id, "sr,pdf"
                                )
                            opened.append(
                                {"case": store.summary(chat.case.case_id), "stored": stored}
                            )
            except PacsError as exc:
                raise ApiError(502, "pacs_error", str(exc)) from None
            if not opened:
                raise ApiError(404, "not_found", f"study {study_uid} has no photo to consult")
            return {"study_uid": study_uid, "cases": opened, "skipped": study.skipped}

        return await service.image_gate.run(pull)

    @app.get("/api/cases")
    def list_cases(
        user: User,
        service: Svc,
        q: Annotated[str | None, Query(max_length=200), PlainText] = None,
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
    async def update_case(
        case_id: str, body: CaseUpdate, user: User, service: Svc
    ) -> dict[str, Any]:
        """Change patient details; the report is recomputed when the findings change."""
        from dermfm.assistant.conversation import Consultation
        from dermfm.assistant.patient import details_from_fields

        def update() -> dict[str, Any]:
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

        return await service.image_gate.run(update)

    @app.post("/api/cases/{case_id}/messages")
    async def message(case_id: str, body: MessageBody, user: User, service: Svc) -> dict[str, Any]:
        """One chat turn with the assistant about the case."""
        from dermfm.assistant.conversation import Consultation

        def ask() -> dict[str, Any]:
            store = own_case(service, user, case_id)
            reply = Consultation.resume(service.assistant, case_id, store).ask(body.text)
            service.database.audit(user.name, "message", case_id)
            return {
                "answer": reply.answer,
                "changed": reply.changed,
                "report_updated": reply.report_updated,
                "report": reply.report.model_dump(mode="json") if reply.report else None,
            }

        return await service.image_gate.run(ask)

    @app.get("/api/cases/{case_id}/image")
    def case_image(case_id: str, user: User, service: Svc) -> FileResponse:
        """The stored image (metadata removed on upload)."""
        store = own_case(service, user, case_id)
        path = store.image_path(store.load(case_id))
        if path is None or not path.is_file():
            raise ApiError(404, "not_found", f"case {case_id} has no stored image")
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
                f"no document {echo(name)}: use {'|'.join(DOCUMENTS)} with .md or .pdf",
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

    @app.get("/api/cases/{case_id}/fhir")
    def fhir(case_id: str, user: User, service: Svc) -> Response:
        """The case's latest report as a FHIR R4 Bundle (DiagnosticReport with ICD-10-CM
        conclusion codes and the PDF report, Observations, ImagingStudy or Media, Patient);
        see docs/interop.md."""
        from dermfm.interop.fhir import fhir_bundle

        store = own_case(service, user, case_id)
        bundle = fhir_bundle(store.load(case_id).report)
        service.database.audit(user.name, "document", case_id, "fhir")
        return Response(
            json.dumps(bundle),
            media_type="application/fhir+json",
            headers={"Content-Disposition": f'attachment; filename="{case_id}-fhir.json"'},
        )

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
        user: Admin,
        service: Svc,
        case_id: Annotated[str | None, Query(max_length=64), PlainText] = None,
    ) -> list[dict[str, Any]]:
        """The audit log (admin)."""
        return service.database.audit_entries(case_id)

    @app.post("/api/tokens", status_code=201)
    def new_token(body: TokenBody, user: Admin, service: Svc) -> dict[str, str]:
        """A long-lived API token for a user (admin)."""
        if not service.database.user_exists(body.user):
            raise ApiError(404, "not_found", f"no user {echo(body.user)}")
        token, expires = service.database.create_token(body.user, days=body.days, kind="api")
        service.database.audit(user.name, "token", None, f"for={body.user}")
        return {"token": token, "expires_at": expires.isoformat()}

    @app.get("/api/users")
    def users(user: Admin, service: Svc) -> list[dict[str, Any]]:
        """Every account with its role, status and number of cases (admin)."""
        return list(service.database.users())

    def other_user(user: Principal, name: str) -> str:
        from dermfm.server.store import is_user_name

        if not is_user_name(name):
            raise ApiError(404, "not_found", f"no user {echo(name)}")
        if name == user.name:
            raise ApiError(409, "conflict", "you cannot disable or delete your own account")
        return name

    def set_status(user: Principal, name: str, status: str, service: Service) -> Response:
        from dermfm.server.store import UserError

        try:
            service.database.set_status(other_user(user, name), status, actor=user.name)
        except UserError as exc:
            raise user_error(exc) from None
        return Response(status_code=204)

    @app.post("/api/users/{name}/disable", status_code=204)
    def disable_user(name: str, user: Admin, service: Svc) -> Response:
        """Disable an account: it cannot sign in and its tokens are revoked (admin)."""
        return set_status(user, name, "disabled", service)

    @app.post("/api/users/{name}/enable", status_code=204)
    def enable_user(name: str, user: Admin, service: Svc) -> Response:
        """Enable a disabled account again (admin)."""
        return set_status(user, name, "active", service)

    @app.delete("/api/users/{name}")
    def delete_user(
        name: str,
        user: Admin,
        service: Svc,
        transfer_to: Annotated[
            str | None,
            Query(max_length=64, description="Hand the account's cases to this user."),
            PlainText,
        ] = None,
    ) -> dict[str, int]:
        """Delete an account (admin): it can never sign in again and its name stays taken; its
        cases are kept (admins see them) or handed to ``transfer_to``."""
        from dermfm.server.store import UserError

        try:
            moved = service.database.delete_user(
                other_user(user, name), actor=user.name, transfer_to=transfer_to
            )
        except UserError as exc:
            raise user_error(exc) from None
        return {"cases_transferred": moved}

    # ------------------------------------------------------------------ web app and docs

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/docs/assets", StaticFiles(directory=SWAGGER_UI), name="swagger-ui")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        """Swagger UI from the files of the installed ``fastapi-offline`` package (no CDN)."""
        return FileResponse(STATIC / "docs.html")

    return app


__all__ = ["UPLOAD_ROUTES", "Service", "create_app", "upload_name"]
