"""SQLAlchemy 2 models of the sample database as the application wrote them before the
migration (no tenant column on the derived tables), and the ORM form of corpus patterns.

Each form takes a session (the tenant set by :func:`rls_migrate.sqlalchemy
.install_tenant_listener`) and the tenant's facts, and returns plain tuples, compared as a
multiset with the same form's result in the other pass."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Integer,
    Text,
    Uuid,
    delete,
    func,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    joinedload,
    mapped_column,
    relationship,
    selectinload,
)

if TYPE_CHECKING:
    from observe_corpus.database import Tenant

Rows = list[tuple[Any, ...]]


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(BigInteger)
    email: Mapped[str] = mapped_column(Text, unique=True)
    name: Mapped[str | None] = mapped_column(Text)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str | None] = mapped_column(Text)
    issues: Mapped[list[Issue]] = relationship(back_populates="project")


class IssueLabel(Base):
    __tablename__ = "issue_labels"
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id"), primary_key=True)
    label_id: Mapped[int] = mapped_column(ForeignKey("labels.id"), primary_key=True)


class Label(Base):
    __tablename__ = "labels"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str | None] = mapped_column(Text)


class Issue(Base):
    __tablename__ = "issues"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"))
    title: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime | None]
    project: Mapped[Project] = relationship(back_populates="issues")
    comments: Mapped[list[Comment]] = relationship(back_populates="issue")
    labels: Mapped[list[Label]] = relationship(secondary="issue_labels")


class Comment(Base):
    __tablename__ = "comments"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    issue_id: Mapped[int] = mapped_column(ForeignKey("issues.id"))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("comments.id"))
    body: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime | None]
    issue: Mapped[Issue] = relationship(back_populates="comments")
    attachments: Mapped[list[Attachment]] = relationship(back_populates="comment")


class Attachment(Base):
    __tablename__ = "attachments"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    comment_id: Mapped[int] = mapped_column(ForeignKey("comments.id"))
    filename: Mapped[str | None] = mapped_column(Text)
    size_bytes: Mapped[int | None] = mapped_column(Integer)
    comment: Mapped[Comment] = relationship(back_populates="attachments")


class Event(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[Any] = mapped_column(JSONB)


class IssueBoard(Base):
    """The corpus's security_invoker view."""

    __tablename__ = "issue_board"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    title: Mapped[str | None] = mapped_column(Text)
    account_id: Mapped[int] = mapped_column(BigInteger)


def rows(result: Any) -> Rows:
    return [tuple(r) for r in result]


# --------------------------------------------------------------------------- joins (cause A)


def comments_of_project(s: Session, t: Tenant) -> Rows:
    return rows(s.execute(select(Comment.id, Comment.body).join(Comment.issue)
                          .where(Issue.project_id == t.project)))


def comments_of_account(s: Session, t: Tenant) -> Rows:
    return rows(s.execute(select(Comment.id, Issue.title).join(Comment.issue)
                          .join(Issue.project).where(Project.account_id == t.id)))


def attachments_of_project(s: Session, t: Tenant) -> Rows:
    return rows(s.execute(select(Attachment.id, Attachment.filename).join(Attachment.comment)
                          .join(Comment.issue).where(Issue.project_id == t.project)))


def comment_counts(s: Session, t: Tenant) -> Rows:
    return rows(s.execute(select(Issue.id, func.count(Comment.id))
                          .outerjoin(Issue.comments).where(Issue.project_id == t.project)
                          .group_by(Issue.id)))


def labels_of_project(s: Session, t: Tenant) -> Rows:
    return rows(s.execute(select(IssueLabel.issue_id, Label.name)
                          .join(Label, Label.id == IssueLabel.label_id)
                          .join(Issue, Issue.id == IssueLabel.issue_id)
                          .where(Issue.project_id == t.project)))


def selectinload_issue_comments(s: Session, t: Tenant) -> Rows:
    issues = s.scalars(select(Issue).where(Issue.project_id == t.project)
                       .options(selectinload(Issue.comments))).all()
    return [(i.id, c.id) for i in issues for c in i.comments]


def joinedload_issue_comments(s: Session, t: Tenant) -> Rows:
    issues = s.scalars(select(Issue).where(Issue.project_id == t.project)
                       .options(joinedload(Issue.comments))).unique().all()
    return [(i.id, c.id) for i in issues for c in i.comments] + [
        (i.id, None) for i in issues if not i.comments]


def selectinload_nested(s: Session, t: Tenant) -> Rows:
    projects = s.scalars(select(Project).where(Project.account_id == t.id).options(
        selectinload(Project.issues).selectinload(Issue.comments))).all()
    out: Rows = []
    for p in projects:
        for i in p.issues:
            out += [(p.id, i.id, c.id) for c in i.comments] or [(p.id, i.id, None)]
    return out


def joinedload_comment_issue(s: Session, t: Tenant) -> Rows:
    comments = s.scalars(select(Comment).where(Comment.issue_id.in_(
        select(Issue.id).where(Issue.project_id == t.project)))
        .options(joinedload(Comment.issue))).all()
    return [(c.id, c.issue.title) for c in comments]


def lazyload_comments(s: Session, t: Tenant) -> Rows:
    issue = s.get(Issue, t.issue)
    assert issue is not None
    return [(c.id,) for c in issue.comments]  # a lazy load: WHERE comments.issue_id = $1


def selectinload_labels(s: Session, t: Tenant) -> Rows:
    issues = s.scalars(select(Issue).where(Issue.project_id == t.project)
                       .options(selectinload(Issue.labels))).all()
    return [(i.id, label.id) for i in issues for label in i.labels]


def thread_of_issue(s: Session, t: Tenant) -> Rows:
    top = (select(Comment.id, literal(1).label("depth")).where(Comment.issue_id == t.issue,
                                                          Comment.parent_id.is_(None))
           .cte("thread", recursive=True))
    reply = select(Comment.id, top.c.depth + 1).join(top, Comment.parent_id == top.c.id)
    thread = top.union_all(reply)
    return rows(s.execute(select(thread.c.id, thread.c.depth)))


# --------------------------------------------------------------------------- EXISTS / IN


def exists_issue_of_project(s: Session, t: Tenant) -> Rows:
    return rows(s.execute(select(func.count()).select_from(Comment)
                          .where(Comment.issue.has(Issue.project_id == t.project))))


def in_subquery_issues(s: Session, t: Tenant) -> Rows:
    return rows(s.execute(select(Comment.id).where(Comment.issue_id.in_(
        select(Issue.id).where(Issue.project_id == t.project)))))


def not_exists_uncommented(s: Session, t: Tenant) -> Rows:
    return rows(s.execute(select(Issue.id).where(Issue.project_id == t.project,
                                                 ~Issue.comments.any())))


# --------------------------------------------------------------------------- filters, arrays


def latest_issues_of_project(s: Session, t: Tenant) -> Rows:
    return rows(s.execute(select(Issue.id, Issue.title).where(Issue.project_id == t.project)
                          .order_by(Issue.id.desc()).limit(5)))


def users_of_account(s: Session, t: Tenant) -> Rows:
    return rows(s.execute(select(User.id, User.email).where(User.account_id == t.id)
                          .order_by(User.id)))


def issue_get(s: Session, t: Tenant) -> Rows:
    issue = s.scalars(select(Issue).where(Issue.id == t.issue,
                                          Issue.project_id == t.project)).one()
    return [(issue.id, issue.title, issue.status)]


def user_by_lower_email(s: Session, t: Tenant) -> Rows:
    return rows(s.execute(select(User.id, User.name).where(
        func.lower(User.email) == func.lower(t.email.upper()))))


def users_by_domain(s: Session, t: Tenant) -> Rows:
    return rows(s.execute(select(User.id).where(
        User.email.ilike("%@" + t.email.split("@", 1)[1]))))


def comment_search(s: Session, t: Tenant) -> Rows:
    return rows(s.execute(select(Comment.id).join(Comment.issue).where(
        Issue.project_id == t.project, Comment.body.ilike("%fix%"))))


def issues_by_ids(s: Session, t: Tenant) -> Rows:
    return rows(s.execute(select(Issue.id, Issue.title).where(Issue.id.in_(t.issues))))


def board_of_account(s: Session, t: Tenant) -> Rows:
    return rows(s.execute(select(IssueBoard.id, IssueBoard.title)
                          .where(IssueBoard.account_id == t.id)))


def events_of_march(s: Session, t: Tenant) -> Rows:
    return rows(s.execute(select(Event.id, Event.kind).where(
        Event.account_id == t.id, Event.created_at >= dt.datetime(2026, 3, 1, tzinfo=dt.UTC),
        Event.created_at < dt.datetime(2026, 4, 1, tzinfo=dt.UTC))))


# --------------------------------------------------------------------------- writes


def upsert_user(s: Session, t: Tenant) -> Rows:
    stmt = insert(User).values(account_id=t.id, email=t.email, name=t.user_name)
    stmt = stmt.on_conflict_do_update(index_elements=[User.email],
                                      set_={"name": stmt.excluded.name})
    return rows(s.execute(stmt.returning(User.email, User.name)))


def update_from_comments(s: Session, t: Tenant) -> Rows:
    return rows(s.execute(update(Comment).where(Comment.issue_id == Issue.id,
                                                Issue.project_id == t.project)
                          .values(body=Comment.body).returning(Comment.id)))


def update_issue_by_id(s: Session, t: Tenant) -> Rows:
    return rows(s.execute(update(Issue).where(Issue.id == t.issue)
                          .values(title=Issue.title).returning(Issue.id, Issue.title)))


def delete_using_parent(s: Session, t: Tenant) -> Rows:
    s.add(Comment(issue_id=t.issue, body="corpus-temp",
                  created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)))
    s.flush()
    return rows(s.execute(delete(Comment).where(Comment.issue_id == Issue.id,
                                                Issue.project_id == t.project,
                                                Comment.body == "corpus-temp")
                          .returning(Comment.body)))


def insert_comment(s: Session, t: Tenant) -> Rows:
    comment = Comment(issue_id=t.issue, body="corpus-one",
                      created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    s.add(comment)
    s.flush()
    tenant = s.execute(text("SELECT tenant_id FROM comments WHERE id = :id"),
                       {"id": comment.id}).scalar_one()
    s.execute(delete(Comment).where(Comment.id == comment.id))
    return [(comment.issue_id, comment.body, tenant)]
