"""The server's store: users, tokens, the audit log (:class:`Database`) and cases
(:class:`SqlCaseStore`, the database counterpart of
:class:`~dermfm.assistant.conversation.CaseStore`).

Passwords are hashed with argon2id at OWASP's recommended cost (:data:`ARGON2_MEMORY_KIB`,
:data:`ARGON2_TIME_COST`, :data:`ARGON2_PARALLELISM`); hashes of earlier versions (scrypt) still
verify and are replaced by a new hash at the next successful sign-in. Bearer tokens are random and
only their SHA-256 is stored. Accounts are ``active``, ``disabled`` (no sign-in, tokens revoked)
or ``deleted`` (likewise, and the password is gone; the name stays taken so that nobody new
inherits the cases it kept). A case is saved in one transaction that is committed (synced to disk)
before :meth:`SqlCaseStore.save` returns, so a saved case survives a killed server. Images are kept
without metadata in an :class:`~dermfm.server.images.ImageStore`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import re
import secrets
import uuid
import zipfile
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Literal, TypedDict

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import ValidationError
from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from dermfm.assistant.conversation import Case, CaseError
from dermfm.assistant.documents import DOCUMENTS
from dermfm.assistant.report import ConsultReport, Message, PatientDetails, now
from dermfm.errors import DermfmError
from dermfm.io import ImageInput
from dermfm.server.db import (
    SQLITE_BEGIN,
    AuditRow,
    CaseRow,
    MessageRow,
    ReportRow,
    TokenRow,
    UserRow,
    make_engine,
    migrate,
)
from dermfm.server.images import ImageStore

#: Account roles, least to most privileged.
ROLES: tuple[str, ...] = ("clinician", "admin")

#: Account states: only ``active`` accounts sign in and use tokens.
UserStatus = Literal["active", "disabled", "deleted"]

#: Token kinds: ``login`` (from ``POST /api/login``) and long-lived ``api`` tokens.
TokenKind = Literal["login", "api"]

#: Shortest password accepted.
MIN_PASSWORD_LENGTH = 8

#: argon2id cost of new password hashes (OWASP's recommendation: 19 MiB of memory, 2 passes, one
#: lane; about 70 ms on one core). Each hash records its parameters, so they can be raised later:
#: older hashes are replaced at the next successful sign-in.
ARGON2_MEMORY_KIB, ARGON2_TIME_COST, ARGON2_PARALLELISM = 19_456, 2, 1

_HASHER = PasswordHasher(
    time_cost=ARGON2_TIME_COST, memory_cost=ARGON2_MEMORY_KIB, parallelism=ARGON2_PARALLELISM
)

_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")

#: An uploaded image given as its bytes and its file name.
Upload = tuple[bytes, str]


class UserError(DermfmError, ValueError):
    """A user that does not exist, already exists, or cannot be created or changed as asked."""


class NoSuchUser(UserError):
    """There is no (undeleted) account of that name."""


@dataclass(frozen=True)
class User:
    """An account, as the app sees it (never its password hash)."""

    name: str
    role: str


class Account(TypedDict):
    """An account in the list of users (the JSON of ``GET /api/users``)."""

    name: str
    role: str
    status: str
    created: str
    cases: int


class AuditEntry(TypedDict):
    """One line of the audit log (the JSON of ``GET /api/audit``)."""

    time: str
    actor: str
    action: str
    case_id: str | None
    detail: str


class CaseSummary(TypedDict):
    """A case in a list (the JSON of ``GET /api/cases``); the report fields are the latest
    report's, ``None`` before the first report."""

    case_id: str
    created: str
    updated: str
    owner: str
    source: str
    status: str | None
    triage_level: str | None
    top_candidate: str | None
    messages: int
    reports: int


def is_user_name(name: str) -> bool:
    """Whether ``name`` is a valid user name (letters, digits, ``. _ @ -``, up to 64
    characters, starting with a letter or digit)."""
    return _USER_NAME.fullmatch(name) is not None


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` with a random salt (PHC string format,
    ``$argon2id$v=19$m=...,t=...,p=...$salt$hash``)."""
    return _HASHER.hash(password)


def _check_scrypt(password: str, stored: str) -> bool:
    """A hash of dermfm 0.1 (``scrypt$n$r$p$salt$hash``)."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest, validate=True)
        actual = hashlib.scrypt(
            password.encode("utf-8"),
            salt=base64.b64decode(salt, validate=True),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
        )
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def check_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a stored hash: an argon2id hash of :func:`hash_password` or
    a scrypt hash of an earlier version (constant-time comparison); ``False`` for a malformed
    or empty hash."""
    if not stored.startswith("$argon2"):
        return _check_scrypt(password, stored)
    try:
        return _HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    """Whether a stored hash is of an older scheme or cost than :func:`hash_password` makes."""
    try:
        return not stored.startswith("$argon2") or _HASHER.check_needs_rehash(stored)
    except InvalidHashError:
        return True


@cache
def _dummy_hash() -> str:
    """Checked for unknown users so that a login takes as long whether the user exists or not."""
    return hash_password(secrets.token_urlsafe(16))


def token_sha256(raw: str) -> str:
    """The stored form of a bearer token."""
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def _now_utc() -> str:
    """Now, in the format of token expiry times (UTC, whole seconds), which sort as text."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


class Database:
    """The server's database at ``url`` (created or upgraded by the migrations on open), with
    its users, tokens and audit log. Cases go through :class:`SqlCaseStore`."""

    def __init__(self, url: str) -> None:
        migrate(url)
        self.url = url
        self.engine = make_engine(url)
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = sessionmaker(
            self.engine.execution_options(**{SQLITE_BEGIN: "IMMEDIATE"}), expire_on_commit=False
        )

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def ping(self) -> str:
        """``"ok"`` when the database answers a query (else the driver's error is raised)."""
        with self.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
        return "ok"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session for reading."""
        with self._reader() as session:
            yield session

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work is committed when the block ends (rolled back on an error).
        On SQLite it holds the write lock from the start, so writers queue instead of failing."""
        with self._writer.begin() as session:
            yield session

    # --- users ------------------------------------------------------------------------------

    def create_user(self, name: str, role: str, password: str) -> User:
        """Add an account.

        Raises:
            UserError: the name is taken (also by a deleted account) or not a valid user name
                (:func:`is_user_name`), the role unknown or the password too short.
        """
        if not is_user_name(name):
            raise UserError(
                f"user name {name[:100]!r}: use 1-64 letters, digits or . _ @ - (starting with "
                "a letter or digit)"
            )
        if role not in ROLES:
            raise UserError(f"user {name}: role {role!r} is not one of {', '.join(ROLES)}")
        _check_new_password(name, password)
        try:
            with self.transaction() as session:
                if session.get(UserRow, name) is not None:
                    raise UserError(f"user {name} already exists")
                session.add(
                    UserRow(
                        name=name,
                        role=role,
                        password_hash=hash_password(password),
                        created=now(),
                        status="active",
                    )
                )
        except IntegrityError as exc:
            raise UserError(f"user {name} already exists") from exc
        return User(name=name, role=role)

    def user_exists(self, name: str) -> bool:
        """Whether there is an active account called ``name``."""
        with self.session() as session:
            row = session.get(UserRow, name)
            return row is not None and row.status == "active"

    def users(self) -> list[Account]:
        """Every account (deleted ones included, with their status), by name, with the number
        of cases each owns."""
        owned = (
            select(CaseRow.owner, func.count().label("cases")).group_by(CaseRow.owner).subquery()
        )
        query = (
            select(UserRow, func.coalesce(owned.c.cases, 0))
            .outerjoin(owned, owned.c.owner == UserRow.name)
            .order_by(UserRow.name)
        )
        with self.session() as session:
            return [
                Account(
                    name=row.name,
                    role=row.role,
                    status=row.status,
                    created=row.created,
                    cases=int(cases),
                )
                for row, cases in session.execute(query)
            ]

    def verify_password(self, name: str, password: str) -> User | None:
        """The user when ``password`` is theirs and the account is active, else ``None`` (also
        for unknown users, after the same amount of work). A hash of an older scheme or cost is
        replaced by a new one."""
        with self.session() as session:
            row = session.get(UserRow, name)
        if row is None or not row.password_hash:  # unknown or deleted: the same work
            check_password(password, _dummy_hash())
            return None
        if not check_password(password, row.password_hash) or row.status != "active":
            return None
        if needs_rehash(row.password_hash):
            with self.transaction() as session:
                session.execute(
                    update(UserRow)
                    .where(UserRow.name == name, UserRow.password_hash == row.password_hash)
                    .values(password_hash=hash_password(password))
                )
        return User(name=row.name, role=row.role)

    def _active(self, session: Session, name: str) -> UserRow:
        row = session.get(UserRow, name, with_for_update=True)
        if row is None or row.status == "deleted":
            raise NoSuchUser(f"no user {name}")
        return row

    def _check_keeps_an_admin(self, session: Session, row: UserRow) -> None:
        """Refuse to disable or delete the last active admin (nobody could manage users)."""
        if row.role != "admin" or row.status != "active":
            return
        others = session.scalar(
            select(func.count())
            .select_from(UserRow)
            .where(UserRow.role == "admin", UserRow.status == "active", UserRow.name != row.name)
        )
        if not others:
            raise UserError(f"user {row.name} is the last active admin; add another admin first")

    def set_password(
        self, name: str, password: str, *, actor: str, keep_token: str | None = None
    ) -> int:
        """Give user ``name`` a new password and revoke their tokens (all but ``keep_token``,
        the raw token of the request that asked, if any); audited as ``password`` by ``actor``.

        Returns:
            How many tokens were revoked.

        Raises:
            UserError: no such user, or the password is too short.
        """
        _check_new_password(name, password)
        digest = hash_password(password)
        with self.transaction() as session:
            row = self._active(session, name)
            row.password_hash = digest
            revoked = self._revoke(session, name, keep_token)
            self._audit(session, actor, "password", None, f"user={name} tokens_revoked={revoked}")
        return revoked

    def set_status(self, name: str, status: Literal["active", "disabled"], *, actor: str) -> None:
        """Enable or disable an account; disabling revokes every token of it. Audited as
        ``user_enable`` / ``user_disable`` by ``actor``.

        Raises:
            UserError: no such user, or it is the last active admin.
        """
        with self.transaction() as session:
            row = self._active(session, name)
            if status == "disabled":
                self._check_keeps_an_admin(session, row)
                revoked = self._revoke(session, name)
            else:
                revoked = 0
            row.status = status
            action = "user_enable" if status == "active" else "user_disable"
            self._audit(session, actor, action, None, f"user={name} tokens_revoked={revoked}")

    def delete_user(self, name: str, *, actor: str, transfer_to: str | None = None) -> int:
        """Delete an account: its tokens and password are removed and it can never sign in
        again; the name stays taken. Its cases are kept (admins still see them) or, with
        ``transfer_to``, handed over to that active user. Audited as ``user_delete``.

        Returns:
            How many cases were handed over.

        Raises:
            UserError: no such user, ``transfer_to`` is not another active user, or ``name`` is
                the last active admin.
        """
        with self.transaction() as session:
            row = self._active(session, name)
            self._check_keeps_an_admin(session, row)
            moved = 0
            if transfer_to is not None:
                target = session.get(UserRow, transfer_to)
                if transfer_to == name or target is None or target.status != "active":
                    raise UserError(f"cannot hand the cases of {name} to {transfer_to}")
                moved = session.execute(
                    update(CaseRow).where(CaseRow.owner == name).values(owner=transfer_to)
                ).rowcount
            revoked = self._revoke(session, name)
            row.status = "deleted"
            row.password_hash = ""
            detail = f"user={name} cases_to={transfer_to or name} cases={moved}"
            self._audit(session, actor, "user_delete", None, f"{detail} tokens_revoked={revoked}")
        return moved

    # --- tokens -----------------------------------------------------------------------------

    def create_token(
        self,
        name: str,
        *,
        days: float | None = None,
        hours: float | None = None,
        kind: TokenKind = "login",
    ) -> tuple[str, datetime]:
        """A new bearer token for user ``name`` valid for ``days`` or ``hours`` (give one).

        Returns:
            The token (shown once; only its SHA-256 is stored) and when it expires (UTC, whole
            seconds).

        Raises:
            UserError: no such active user.
            ValueError: not exactly one positive duration, or an unknown kind.
        """
        if (days is None) == (hours is None):
            raise ValueError("give the token's lifetime as either days or hours")
        lifetime = timedelta(days=days) if days is not None else timedelta(hours=hours or 0)
        if lifetime <= timedelta(0):
            raise ValueError(f"token lifetime must be positive, got {lifetime}")
        if kind not in ("login", "api"):
            raise ValueError(f"token kind {kind!r} is not 'login' or 'api'")
        raw = secrets.token_urlsafe(32)
        expires_at = (datetime.now(UTC) + lifetime).replace(microsecond=0)
        with self.transaction() as session:
            row = session.get(UserRow, name)
            if row is None or row.status != "active":
                raise NoSuchUser(f"no user {name}")
            session.add(
                TokenRow(
                    user_name=name,
                    token_sha256=token_sha256(raw),
                    kind=kind,
                    created=now(),
                    expires_at=expires_at.isoformat(),
                )
            )
        return raw, expires_at

    def resolve_token(self, raw: str) -> User | None:
        """The user a bearer token belongs to; ``None`` when it is unknown or expired, or the
        account is not active."""
        with self.session() as session:
            found = session.execute(
                select(UserRow.name, UserRow.role, UserRow.status, TokenRow.expires_at)
                .join(TokenRow, TokenRow.user_name == UserRow.name)
                .where(TokenRow.token_sha256 == token_sha256(raw))
            ).first()
        if (
            found is None
            or found.status != "active"
            or datetime.fromisoformat(found.expires_at) <= datetime.now(UTC)
        ):
            return None
        return User(name=found.name, role=found.role)

    def revoke_token(self, raw: str) -> bool:
        """Delete a token (sign-out); ``False`` when it was not known."""
        with self.transaction() as session:
            row = session.execute(
                select(TokenRow).where(TokenRow.token_sha256 == token_sha256(raw))
            ).scalar_one_or_none()
            if row is None:
                return False
            session.delete(row)
        return True

    @staticmethod
    def _revoke(session: Session, name: str, keep: str | None = None) -> int:
        """Delete the tokens of ``name`` (but the raw token ``keep``); how many there were."""
        statement = delete(TokenRow).where(TokenRow.user_name == name)
        if keep is not None:
            statement = statement.where(TokenRow.token_sha256 != token_sha256(keep))
        return session.execute(statement).rowcount

    def purge_expired_tokens(self) -> int:
        """Delete every expired token; returns how many there were."""
        with self.transaction() as session:
            return session.execute(
                delete(TokenRow).where(TokenRow.expires_at <= _now_utc())
            ).rowcount

    # --- audit log --------------------------------------------------------------------------

    @staticmethod
    def _audit(session: Session, actor: str, action: str, case_id: str | None, detail: str) -> None:
        session.add(
            AuditRow(time=now(), actor=actor[:64], action=action, case_id=case_id, detail=detail)
        )

    def audit(self, actor: str, action: str, case_id: str | None, detail: str = "") -> None:
        """Record that ``actor`` did ``action`` (create, view, update, message, export, delete,
        document, denied, login_failed, ...) to a case (``None`` for actions on no case)."""
        with self.transaction() as session:
            self._audit(session, actor, action, case_id, detail)

    def audit_entries(self, case_id: str | None = None) -> list[AuditEntry]:
        """The audit log, oldest first; only one case's entries when ``case_id`` is given."""
        query = select(AuditRow).order_by(AuditRow.id)
        if case_id is not None:
            query = query.where(AuditRow.case_id == case_id)
        with self.session() as session:
            return [
                AuditEntry(
                    time=r.time, actor=r.actor, action=r.action, case_id=r.case_id, detail=r.detail
                )
                for r in session.scalars(query)
            ]


def _check_new_password(name: str, password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(
            f"user {name}: the password needs at least {MIN_PASSWORD_LENGTH} characters"
        )


def _search_text(case: Case) -> str:
    """What case search matches, lowercased: the id, the image's name, the patient details,
    the top candidate of every report version and every message."""
    parts = [case.case_id, case.source, *case.patient.context_phrases(), *case.patient.notes]
    parts += [
        r.differential.candidates[0].name
        for r in case.reports
        if r.differential and r.differential.candidates
    ]
    parts += [m.content for m in case.messages]
    return "\n".join(parts).lower()


def _like(term: str) -> str:
    """A LIKE pattern matching ``term`` anywhere (its wildcards escaped with ``\\``)."""
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class SqlCaseStore:
    """Cases in the database, with the methods of
    :class:`~dermfm.assistant.conversation.CaseStore` (so a
    :class:`~dermfm.assistant.conversation.Consultation` can use it) plus search, delete and
    export. New cases belong to ``owner``; access control is the caller's business."""

    def __init__(self, database: Database, images: ImageStore, owner: str) -> None:
        self.db = database
        self.images = images
        self.owner = owner

    def new_id(self) -> str:
        """A fresh case id."""
        return uuid.uuid4().hex[:12]

    def store_image(self, case_id: str, image: ImageInput | Upload) -> str | None:
        """Store an image without its metadata (an image file, or ``(bytes, file name)``);
        returns the stored file's name (``<sha256>.jpg`` or ``.png``) for :attr:`Case.image`,
        or ``None`` for an in-memory PIL image (as :class:`CaseStore` does). A file already in
        the image store is used as it is (not re-encoded). Images are shared by content, so
        ``case_id`` does not change where it goes.

        Raises:
            ImageError: not a usable image (the message names the upload).
        """
        if isinstance(image, tuple):
            data, name = image
        elif isinstance(image, str | Path) and self.images.sha_of(image) is not None:
            return Path(image).name
        elif isinstance(image, str | Path) and Path(image).is_file():
            data, name = Path(image).read_bytes(), str(image)
        else:
            return None
        stored = self.images.path(self.images.put(data, name))
        if stored is None:  # deleted with another case between the two calls
            raise CaseError(f"case {case_id}: image {name} was removed while being stored")
        return stored.name

    def image_path(self, case: Case) -> Path | None:
        """The stored (metadata-free) image of a case, ``None`` when it has none."""
        return self.images.path(Path(case.image).stem) if case.image else None

    def save(self, case: Case) -> None:
        """Write a case: its row, its new messages and new report versions in one transaction,
        committed before returning. A stored case may only grow: its source and image must be
        the same and its messages and reports a prefix of ``case``'s, else :class:`CaseError`
        (nothing is written). A new case belongs to this store's owner."""
        try:
            with self.db.transaction() as session:
                self._write(session, case)
        except IntegrityError as exc:
            raise CaseError(
                f"case {case.case_id}: changed by someone else while being saved; reload it"
            ) from exc

    def _write(self, session: Session, case: Case) -> None:
        changing = {
            "updated": now(),
            "patient": case.patient.model_dump_json(),
            "search_text": _search_text(case),
        }
        row = session.get(CaseRow, case.case_id, with_for_update=True)
        if row is None:
            if session.get(UserRow, self.owner) is None:
                raise CaseError(f"case {case.case_id}: no user {self.owner} to own it")
            session.add(
                CaseRow(
                    case_id=case.case_id,
                    owner=self.owner,
                    created=case.created,
                    source=case.source,
                    image=case.image,
                    image_sha256=self._image_sha(case),
                    **changing,
                )
            )
            session.flush()  # the case row before the rows referring to it
            stored_messages, stored_reports = 0, 0
        else:
            stored_messages, stored_reports = self._check_grows(session, row, case)
            for column, value in changing.items():
                setattr(row, column, value)
        session.add_all(
            MessageRow(
                case_id=case.case_id, position=i, role=m.role, content=m.content, time=m.time
            )
            for i, m in enumerate(case.messages[stored_messages:], start=stored_messages)
        )
        session.add_all(
            ReportRow(
                case_id=case.case_id, version=i + 1, created=r.created, body=r.model_dump_json()
            )
            for i, r in enumerate(case.reports[stored_reports:], start=stored_reports)
        )

    def _image_sha(self, case: Case) -> str | None:
        """The SHA-256 of a case's image, checking that the image store has it."""
        if case.image is None:
            return None
        sha = Path(case.image).stem
        try:
            stored = self.images.path(sha)
        except ValueError:
            stored = None
        if stored is None or stored.name != case.image:
            raise CaseError(
                f"case {case.case_id}: image {case.image} is not in {self.images.root} "
                "(store it with store_image first)"
            )
        return sha

    def _check_grows(self, session: Session, row: CaseRow, case: Case) -> tuple[int, int]:
        """The stored message and report counts, after checking that ``case`` extends them."""
        messages = [
            Message(role=m.role, content=m.content, time=m.time)
            for m in session.scalars(
                select(MessageRow)
                .where(MessageRow.case_id == row.case_id)
                .order_by(MessageRow.position)
            )
        ]
        bodies = session.scalars(
            select(ReportRow.body)
            .where(ReportRow.case_id == row.case_id)
            .order_by(ReportRow.version)
        ).all()
        grows = (
            row.source == case.source
            and row.image == case.image
            and case.messages[: len(messages)] == messages
            and [r.model_dump_json() for r in case.reports[: len(bodies)]] == list(bodies)
        )
        if not grows:
            raise CaseError(
                f"case {case.case_id}: a different case is stored under this id (a stored "
                f"case may only grow: same image, its {len(messages)} messages and "
                f"{len(bodies)} reports first)"
            )
        return len(messages), len(bodies)

    def _cases(self, session: Session, rows: Sequence[CaseRow]) -> list[Case]:
        """Whole cases for rows (two queries for all their messages and reports)."""
        ids = [r.case_id for r in rows]
        messages: dict[str, list[Message]] = defaultdict(list)
        for m in session.scalars(
            select(MessageRow)
            .where(MessageRow.case_id.in_(ids))
            .order_by(MessageRow.case_id, MessageRow.position)
        ):
            messages[m.case_id].append(Message(role=m.role, content=m.content, time=m.time))
        bodies: dict[str, list[str]] = defaultdict(list)
        for r in session.scalars(
            select(ReportRow)
            .where(ReportRow.case_id.in_(ids))
            .order_by(ReportRow.case_id, ReportRow.version)
        ):
            bodies[r.case_id].append(r.body)
        cases = []
        for row in rows:
            try:
                cases.append(
                    Case(
                        case_id=row.case_id,
                        created=row.created,
                        source=row.source,
                        image=row.image,
                        patient=PatientDetails.model_validate_json(row.patient),
                        messages=messages[row.case_id],
                        reports=[ConsultReport.model_validate_json(b) for b in bodies[row.case_id]],
                    )
                )
            except ValidationError as exc:
                raise CaseError(
                    f"case {row.case_id}: stored data in {self.db.engine.url} is not a valid "
                    f"case ({exc})"
                ) from exc
        return cases

    def _row(self, session: Session, case_id: str) -> CaseRow:
        row = session.get(CaseRow, case_id)
        if row is None:
            raise CaseError(f"case {case_id}: no such case")
        return row

    def load(self, case_id: str) -> Case:
        """A stored case (of any owner); :class:`CaseError` when there is none."""
        with self.db.session() as session:
            return self._cases(session, [self._row(session, case_id)])[0]

    def owner_of(self, case_id: str) -> str:
        """The user a stored case belongs to; :class:`CaseError` when there is no such case."""
        with self.db.session() as session:
            return self._row(session, case_id).owner

    def summary(self, case_id: str) -> CaseSummary:
        """A stored case in brief (for lists); :class:`CaseError` when there is none."""
        with self.db.session() as session:
            row = self._row(session, case_id)
            messages, reports = (
                session.scalar(select(func.count()).where(table.case_id == case_id)) or 0
                for table in (MessageRow, ReportRow)
            )
            body = session.scalar(
                select(ReportRow.body)
                .where(ReportRow.case_id == case_id)
                .order_by(ReportRow.version.desc())
                .limit(1)
            )
        report = ConsultReport.model_validate_json(body) if body is not None else None
        candidates = report.allowed_diagnoses() if report else []
        return CaseSummary(
            case_id=row.case_id,
            created=row.created,
            updated=row.updated,
            owner=row.owner,
            source=row.source,
            status=report.status if report else None,
            triage_level=report.triage.level if report else None,
            top_candidate=candidates[0].name if candidates else None,
            messages=messages,
            reports=reports,
        )

    def _matching(self, query: str | None, owner: str | None) -> Select[CaseRow]:
        statement = select(CaseRow)
        if owner is not None:
            statement = statement.where(CaseRow.owner == owner)
        for term in (query or "").lower().split():
            statement = statement.where(CaseRow.search_text.like(_like(term), escape="\\"))
        return statement

    def list(self) -> list[Case]:
        """Every case of this store's owner, newest first."""
        with self.db.session() as session:
            rows = session.scalars(
                self._matching(None, self.owner).order_by(
                    CaseRow.created.desc(), CaseRow.case_id.desc()
                )
            ).all()
            return self._cases(session, rows)

    def search(
        self, query: str | None = None, limit: int = 50, offset: int = 0, owner: str | None = None
    ) -> tuple[int, list[Case]]:
        """Cases whose id, image name, patient details, top candidates or messages contain
        every word of ``query`` (case-insensitive), newest first.

        Args:
            query: words to look for (``None`` or empty: every case).
            limit: at most this many cases.
            offset: skip this many first.
            owner: only this user's cases (``None``: everyone's).

        Returns:
            The number of matching cases, and the page of them.
        """
        if limit < 0 or offset < 0:
            raise ValueError(f"limit and offset must not be negative (got {limit}, {offset})")
        statement = self._matching(query, owner)
        with self.db.session() as session:
            total = session.scalar(select(func.count()).select_from(statement.subquery())) or 0
            rows = session.scalars(
                statement.order_by(CaseRow.created.desc(), CaseRow.case_id.desc())
                .limit(limit)
                .offset(offset)
            ).all()
            return total, self._cases(session, rows)

    def delete(self, case_id: str) -> None:
        """Remove a case with its messages and reports (one transaction), then its image file
        unless another case has the same image. The audit log is kept."""
        with self.db.transaction() as session:
            row = self._row(session, case_id)
            sha = row.image_sha256
            session.delete(row)
            session.flush()
            shared = sha is not None and bool(
                session.scalar(
                    select(func.count()).select_from(CaseRow).where(CaseRow.image_sha256 == sha)
                )
            )
        if sha is not None and not shared:
            self.images.delete(sha)

    def export(self, case_id: str) -> bytes:
        """A zip of a case: ``case.json``, its image (``image.jpg`` or ``.png``), the documents
        of its latest report as Markdown (``report.md``, ``soap.md``, ``handout.md``,
        ``referral.md``) and its audit entries (``audit.json``)."""
        case = self.load(case_id)
        image = self.image_path(case)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("case.json", case.model_dump_json(indent=2))
            if image is not None:
                archive.write(image, "image" + image.suffix, zipfile.ZIP_STORED)
            if case.reports:
                for kind, document in DOCUMENTS.items():
                    archive.writestr(f"{kind}.md", document(case.report))
            entries = self.db.audit_entries(case_id)
            archive.writestr("audit.json", json.dumps(entries, indent=2))
        return buffer.getvalue()


__all__ = [
    "ARGON2_MEMORY_KIB",
    "ARGON2_PARALLELISM",
    "ARGON2_TIME_COST",
    "MIN_PASSWORD_LENGTH",
    "ROLES",
    "Account",
    "AuditEntry",
    "CaseSummary",
    "Database",
    "NoSuchUser",
    "SqlCaseStore",
    "TokenKind",
    "Upload",
    "User",
    "UserError",
    "UserStatus",
    "check_password",
    "hash_password",
    "is_user_name",
    "needs_rehash",
    "token_sha256",
]
