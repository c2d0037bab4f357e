"""Tests for sbio.sa (SQLAlchemy helpers) and the db fixture, on SQLite and PostgreSQL."""
# psycopg picks its (blocking or cooperative) wait function when it is
# imported: gevent must patch select/socket before that. The sbio pytest
# plugin is meant to patch at import; until it does, patch here.
import os

from gevent import monkey

if (os.environ.get("SBIO_MONKEY_PATCH", "1").lower() not in ("0", "false", "no")
        and not monkey.is_module_patched("select")):  # pragma: no cover - the plugin did
    monkey.patch_all()

import datetime
import enum
import logging
import sys
import types
import uuid
from decimal import Decimal
from typing import ClassVar

import gevent
import pytest
import sqlalchemy
from sqlalchemy import (
    Boolean,
    Column,
    Enum,
    ForeignKey,
    Integer,
    Numeric,
    String,
    Table,
    Text,
    delete,
    select,
    text,
    update,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Mapped, mapped_column, relationship

import sbio.sa
import sbio.testing
from sbio._fixtures_db import DbFixture, temporary_database
from sbio.channels import row_channel
from sbio.errors import RpcError
from sbio.sa import (
    JSON,
    UUID,
    SessionManager,
    UTCDateTime,
    ValidationError,
    create_engine,
    declarative_base,
    model_channel,
    snake_case,
)

UTC = datetime.timezone.utc


def utcnow():
    return datetime.datetime.now(UTC)


# --------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------


class Color(enum.Enum):
    red = "r"
    green = "g"


@declarative_base
class Base:
    id = Column(UUID(), primary_key=True, default=uuid.uuid4)

    def describe(self):
        return f"{type(self).__name__} {self.id}"


website_tag = Table(
    "website_tag",
    Base.metadata,
    Column("website_id", ForeignKey("website.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", ForeignKey("tag.id", ondelete="CASCADE"), primary_key=True),
)


class Website(Base):
    url = Column(Text(), nullable=False, unique=True)
    title = Column(String(20))
    score = Column(Integer, nullable=False, default=0)
    status = Column(String(10), default="new")  # the scalar default Sideboard crashed on
    created = Column(UTCDateTime, nullable=False, default=utcnow)
    meta = Column(JSON, default={})
    doubled = Column(Integer, default=lambda ctx: ctx.get_current_parameters()["score"] * 2)
    pages = relationship("WebPage", back_populates="website", cascade="all, delete-orphan",
                         order_by="WebPage.path")
    tags = relationship("Tag", secondary=website_tag, order_by="Tag.name")

    @property
    def page_count(self):
        return len(self.pages)

    @property
    def nickname(self):
        return self.title

    @nickname.setter
    def nickname(self, value):
        self.title = value


class WebPage(Base):
    website_id = Column(UUID(), ForeignKey("website.id"), nullable=False)
    path = Column(Text(), nullable=False)
    website = relationship("Website", back_populates="pages")


class Tag(Base):
    name = Column(String(30), nullable=False, unique=True)


class Sample(Base):
    flag = Column(Boolean)
    amount = Column(Numeric(10, 2))
    color = Column(Enum(Color))
    when = Column(UTCDateTime)
    count = Column(Integer)
    doc = Column(JSON)


class HTTPRequestLog(Base):
    _repr_attr_names: ClassVar[list[str]] = ["id", "method"]
    method = Column(String(8))


class Session(SessionManager):
    engine = None  # bound by the db fixture

    class SessionMixin:
        def website(self, url):
            return self.scalars(select(Website).filter_by(url=url)).one()


class QuietSession(SessionManager):
    base = Base
    notify_changes = False


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


@pytest.fixture
def sbio_session_manager():
    return Session


@pytest.fixture(params=["sqlite", "postgres"])
def sbio_db_backend(request):
    return request.param


@pytest.fixture
def notified(monkeypatch):
    """Every change notification of ``Session``, as a list of channel lists."""
    calls = []
    monkeypatch.setattr(Session, "notifier", calls.append)
    return calls


def tables(channels):
    """The table channels of one notification (row channels such as ``website:<id>`` left out)."""
    return [c for c in channels if ":" not in c]


def one_site(sbio_db, **kwargs):
    kwargs.setdefault("url", "https://example.org")
    return sbio_db.add(Website(**kwargs))


# --------------------------------------------------------------------------
# declarative_base
# --------------------------------------------------------------------------


def test_snake_case_table_names():
    assert snake_case("Website") == "website"
    assert snake_case("WebPage") == "web_page"
    assert snake_case("HTTPRequestLog") == "http_request_log"
    assert snake_case("Page2Thing") == "page2_thing"
    assert Website.__tablename__ == "website"
    assert WebPage.__table__.name == "web_page"
    assert HTTPRequestLog.__table__.name == "http_request_log"
    assert model_channel(Website) == "website"
    assert model_channel(Website(url="x")) == "website"


def test_base_class_columns_and_methods_are_inherited():
    site = Website(url="x")
    assert isinstance(site, Base)
    assert "id" in Website.__table__.c and "id" in Tag.__table__.c
    assert site.describe() == f"Website {site.id}"


def test_single_table_inheritance_keeps_parent_table():
    @declarative_base
    class B:
        __module__ = "sti_example"  # keep this module's only base unambiguous for Session
        id = Column(Integer, primary_key=True)

    class Animal(B):
        kind = Column(String(10))
        __mapper_args__: ClassVar[dict[str, str]] = {"polymorphic_on": "kind",
                                                     "polymorphic_identity": "animal"}

    class Dog(Animal):
        __mapper_args__: ClassVar[dict[str, str]] = {"polymorphic_identity": "dog"}

    class Cat(Animal):
        id = Column(Integer, ForeignKey("animal.id"), primary_key=True)
        __mapper_args__: ClassVar[dict[str, str]] = {"polymorphic_identity": "cat"}

    assert Dog.__table__ is Animal.__table__
    assert model_channel(Dog) == "animal"
    assert Cat.__table__.name == "cat"  # own primary key column: joined inheritance


def test_mapped_column_style_and_set_collections():
    @declarative_base
    class B:
        __module__ = "mapped_example"
        id: Mapped[int] = mapped_column(primary_key=True)

    class Owner(B):
        name: Mapped[str] = mapped_column(String(10), default="anon")
        items: Mapped[set["Item"]] = relationship(back_populates="owner")

    class Item(B):
        owner_id: Mapped[int | None] = mapped_column(ForeignKey("owner.id"))
        label: Mapped[str]
        owner: Mapped[Owner | None] = relationship(back_populates="items")

    class SpecialItem(Item):  # no own primary key: single-table inheritance
        pass

    class JoinedItem(Item):
        id: Mapped[int] = mapped_column(ForeignKey("item.id"), primary_key=True)

    assert SpecialItem.__table__ is Item.__table__
    assert JoinedItem.__table__.name == "joined_item"
    owner = Owner.from_dict({"id": 1, "items": [{"id": 2, "label": "a"}, {"id": 3, "label": "b"}]})
    assert owner.name == "anon"
    assert isinstance(owner.items, set) and {i.label for i in owner.items} == {"a", "b"}
    assert repr(owner) == "<Owner id=1>"
    item = Item.from_dict({"label": "c", "owner": None})  # nullable many-to-one
    assert item.owner is None


def test_defaults_applied_at_construction():
    site = Website(url="x")
    assert isinstance(site.id, uuid.UUID)
    assert site.score == 0  # scalar
    assert site.status == "new"  # scalar string (Sideboard's TypeError)
    assert site.created.tzinfo is UTC  # zero-argument callable
    assert site.meta == {}
    assert site.doubled is None  # context-taking default: left to the flush
    other = Website(url="y")
    assert other.id != site.id
    assert other.meta is not site.meta  # mutable scalar default copied per instance
    site.meta["k"] = 1
    assert Website(url="z").meta == {}


def test_explicit_values_beat_defaults_and_unknown_kwargs_fail():
    ident = uuid.uuid4()
    site = Website(url="x", id=ident, score=5, status=None, _model="Website")
    assert (site.id, site.score, site.status) == (ident, 5, None)
    with pytest.raises(TypeError, match="bogus"):
        Website(url="x", bogus=1)


def test_context_default_runs_at_flush(sbio_db):
    site = one_site(sbio_db, score=4)
    with Session() as s:
        assert s.get(Website, site.id).doubled == 8


def test_repr_shows_primary_and_unique_columns():
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    site = Website(id=ident, url="https://a", title="A")
    assert repr(site) == "<Website id='12345678-1234-5678-1234-567812345678' url='https://a'>"
    assert repr(HTTPRequestLog(id=ident, method="GET")) == (
        "<HTTPRequestLog id='12345678-1234-5678-1234-567812345678' method='GET'>"
    )


def test_repr_never_loads(sbio_db):
    site = one_site(sbio_db)
    with Session() as s:
        loaded = s.get(Website, site.id)
        s.expire(loaded, ["url"])
    assert repr(loaded) == f"<Website id='{site.id}'>"  # detached + expired: no error


# --------------------------------------------------------------------------
# column types
# --------------------------------------------------------------------------


def test_uuid_round_trip(sbio_db):
    site = one_site(sbio_db)
    with Session() as s:
        loaded = s.get(Website, site.id)
        assert isinstance(loaded.id, uuid.UUID) and loaded.id == site.id
        # the string form works in queries too
        assert s.scalars(select(Website).where(Website.id == str(site.id))).one() is loaded
        raw = s.execute(text("SELECT id FROM website")).scalar_one()
    columns = {c["name"]: c["type"] for c in sa_inspect(sbio_db.engine).get_columns("website")}
    if sbio_db.backend == "postgresql":
        assert isinstance(columns["id"], sqlalchemy.Uuid)  # native uuid
        assert raw == site.id
    else:
        assert str(columns["id"]) == "CHAR(32)"
        assert raw == site.id.hex


def test_uuid_rejects_garbage(sbio_db):
    with pytest.raises(StatementError, match="not a UUID"), Session() as s:
        s.execute(select(Website).where(Website.id == "nope")).all()


def test_json_round_trip(sbio_db):
    doc = {"a": [1, 2.5, "x", None, True], "b": {"c": {}}}
    site = one_site(sbio_db, meta=doc)
    sample, empty = sbio_db.add(Sample(doc=[doc, "s", 3]), Sample(doc=None))
    defaulted = sbio_db.add(Website(url="https://none", meta=None))  # None means "use the default"
    with Session() as s:
        assert s.get(Website, site.id).meta == doc
        assert s.get(Sample, sample.id).doc == [doc, "s", 3]
        assert s.get(Sample, empty.id).doc is None
        assert s.get(Website, defaulted.id).meta == {}
        # None is SQL NULL, not JSON null
        nulls = s.execute(text("SELECT count(*) FROM sample WHERE doc IS NULL")).scalar_one()
        assert nulls == 1
    columns = {c["name"]: c["type"] for c in sa_inspect(sbio_db.engine).get_columns("website")}
    expected = "JSONB" if sbio_db.backend == "postgresql" else "JSON"
    assert type(columns["meta"]).__name__ == expected


def test_utcdatetime_round_trip_is_aware_utc(sbio_db):
    paris = datetime.timezone(datetime.timedelta(hours=2))
    moment = datetime.datetime(2024, 5, 1, 14, 30, 15, 123456, tzinfo=paris)
    site = one_site(sbio_db, created=moment)
    assert site.created.tzinfo is UTC and site.created.hour == 12  # normalized on assignment
    with Session() as s:
        loaded = s.get(Website, site.id)
        s.refresh(loaded)
        assert loaded.created == moment
        assert loaded.created.tzinfo == UTC
        assert loaded.created.utcoffset() == datetime.timedelta(0)
        assert loaded.created.hour == 12
        later = moment + datetime.timedelta(seconds=1)
        assert s.scalars(select(Website).where(Website.created < later)).one() is loaded
        assert s.scalars(select(Website).where(Website.created > later)).all() == []


def test_utcdatetime_rejects_naive(sbio_db):
    naive = datetime.datetime(2024, 5, 1, 12, 0)
    with pytest.raises(ValueError, match="naive datetime 2024-05-01T12:00:00"):
        Website(url="x", created=naive)
    site = Website(url="x")
    with pytest.raises(ValueError, match=r"Website\.created refuses the naive"):
        site.created = naive
    with pytest.raises(StatementError, match="refuses the naive"), Session() as s:
        s.execute(select(Website).where(Website.created < naive)).all()


# --------------------------------------------------------------------------
# to_dict / from_dict
# --------------------------------------------------------------------------


@pytest.fixture
def site_with_pages(sbio_db):
    tag_b, tag_a = Tag(name="b"), Tag(name="a")
    site = Website(url="https://s", title="S", tags=[tag_b, tag_a])
    site.pages = [WebPage(path="/2"), WebPage(path="/1")]
    sbio_db.add(site)
    with Session() as s:
        site = s.get(Website, site.id)
        for page in site.pages:  # load while attached
            page.website  # noqa: B018 (reading the attribute loads it)
        site.tags  # noqa: B018 (reading the attribute loads it)
        return site


def test_to_dict_default(site_with_pages):
    site = site_with_pages
    d = site.to_dict()
    assert list(d)[:2] == ["_model", "id"]
    assert d["_model"] == "Website"
    assert d["id"] == site.id and d["url"] == "https://s" and d["score"] == 0
    assert set(d) == {"_model", "id", "url", "title", "score", "status", "created", "meta",
                      "doubled"}


def test_to_dict_spec_follows_relationships(site_with_pages):
    site = site_with_pages
    assert site.to_dict(["url", {"pages": ["path"]}, "page_count"]) == {
        "url": "https://s",
        "pages": [{"path": "/1"}, {"path": "/2"}],
        "page_count": 2,
    }
    nested = site.to_dict({"url": True, "tags": ["name"],
                           "pages": {"path": True, "website": ["url"]}})
    assert nested == {
        "url": "https://s",
        "tags": [{"name": "a"}, {"name": "b"}],
        "pages": [{"path": "/1", "website": {"url": "https://s"}},
                  {"path": "/2", "website": {"url": "https://s"}}],
    }
    default_nested = site.to_dict(["pages"])["pages"][0]
    assert default_nested["_model"] == "WebPage" and default_nested["path"] == "/1"
    with pytest.raises(AttributeError, match="nope"):
        site.to_dict(["nope"])
    with pytest.raises(ValueError, match="not a relationship"):
        site.to_dict({"url": ["x"]})


def test_to_dict_jsonable(site_with_pages):
    d = site_with_pages.to_dict(jsonable=True)
    assert d["id"] == str(site_with_pages.id)
    assert d["created"] == site_with_pages.created.isoformat() and d["created"].endswith("+00:00")
    sample = Sample(amount=Decimal("1.50"), color=Color.red)
    assert sample.to_dict(["amount", "color"], jsonable=True) == {"amount": "1.50", "color": "red"}


def test_from_dict_creates_and_ignores_underscore_keys():
    site = Website.from_dict({"_model": "Website", "_secret": 1, "url": "https://n", "score": 3})
    assert isinstance(site, Website)
    assert (site.url, site.score, site.status) == ("https://n", 3, "new")  # defaults still applied
    assert site.from_dict({"title": "T"}) is site and site.title == "T"


def test_from_dict_validates_types_all_at_once():
    site = Website(url="x", score=1)
    with pytest.raises(ValidationError) as info:
        site.from_dict(
            {"url": None, "score": "3", "title": "x" * 21, "created": "2024-01-01T00:00:00",
             "bogus": 1, "title2": 2}
        )
    errors = info.value.errors
    assert errors == {
        "url": "may not be null",
        "score": "expected an integer, got str",
        "title": "longer than 20 characters",
        "created": errors["created"],
        "bogus": "Website has no attribute 'bogus'",
        "title2": "Website has no attribute 'title2'",
    }
    assert "naive" in errors["created"]
    assert (site.url, site.score, site.title) == ("x", 1, None)  # nothing was changed
    assert isinstance(info.value, RpcError) and info.value.code == "bad_request"
    assert isinstance(info.value, ValueError)
    assert "score: expected an integer, got str" in info.value.message


def test_from_dict_coerces_json_forms():
    ident = uuid.uuid4()
    sample = Sample.from_dict(
        {
            "id": str(ident),
            "flag": True,
            "amount": "2.25",
            "color": "green",
            "when": "2024-05-01T12:00:00Z",
            "count": 4,
        }
    )
    assert sample.id == ident
    assert sample.amount == Decimal("2.25")
    assert sample.color is Color.green
    assert sample.when == datetime.datetime(2024, 5, 1, 12, tzinfo=UTC)
    with pytest.raises(ValidationError) as info:
        Sample.from_dict({"id": "zzz", "flag": 1, "count": True, "color": "blue", "amount": "x"})
    assert set(info.value.errors) == {"id", "flag", "count", "color", "amount"}
    assert Sample.from_dict({"color": "r"}).color is Color.red  # enum value accepted too


def test_from_dict_settable_properties_and_restriction():
    site = Website.from_dict({"url": "u", "nickname": "N"})
    assert site.title == "N"
    with pytest.raises(ValidationError, match="page_count"):
        site.from_dict({"page_count": 3})  # read-only property
    with pytest.raises(ValidationError) as info:
        site.from_dict({"title": "ok", "score": 99}, attrs=["title"])
    assert info.value.errors == {"score": "not allowed"}
    site.from_dict({"title": "ok"}, attrs=["title"])
    assert site.title == "ok"


def test_to_dict_from_dict_round_trip(site_with_pages):
    data = site_with_pages.to_dict(jsonable=True)
    copy = Website.from_dict(data)
    assert copy.to_dict(jsonable=True) == data


def test_from_dict_merges_relationships(sbio_db, site_with_pages, notified):
    site = site_with_pages
    page1, page2 = site.pages
    with Session() as s:
        site = s.get(Website, site.id)
        site.from_dict(
            {
                "title": "New",
                "pages": [
                    {"id": str(page1.id), "path": "/1-renamed"},  # existing, by primary key
                    {"path": "/3"},  # new
                ],  # page2 is not listed: removed (delete-orphan)
                "tags": [{"name": "a"}, {"name": "c"}],  # "a" found by unique column, "c" new
            }
        )
        assert site.pages[0] is s.get(WebPage, page1.id)
    with Session() as s:
        site = s.get(Website, site.id)
        assert site.title == "New"
        assert [p.path for p in site.pages] == ["/1-renamed", "/3"]
        assert s.get(WebPage, page2.id) is None
        assert [t.name for t in site.tags] == ["a", "c"]
        assert len(s.scalars(select(Tag)).all()) == 3  # "a" was reused, not duplicated
        tag_c = s.scalars(select(Tag).filter_by(name="c")).one()
        page3 = s.scalars(select(WebPage).filter_by(path="/3")).one()
    assert len(notified) == 1
    assert tables(notified[0]) == ["tag", "web_page", "website", "website_tag"]
    assert [c for c in notified[0] if ":" in c] == sorted(  # the rows written, not tag "a"
        row_channel(obj) for obj in (site, page1, page2, page3, tag_c))


def test_from_dict_relationship_by_primary_key(sbio_db, site_with_pages):
    site = site_with_pages
    with Session() as s:
        page = s.get(WebPage, site.pages[0].id)
        other = Website(url="https://other")
        s.add(other)
        s.flush()
        page.from_dict({"website": str(other.id)})
        assert page.website is other
        with pytest.raises(ValidationError) as info:
            page.from_dict({"website": str(uuid.uuid4())})
        assert info.value.errors["website"].startswith("no Website with id=")
        with pytest.raises(ValidationError) as info:
            page.from_dict({"website": None, "path": 5})
        assert info.value.errors == {"website": "may not be null",
                                     "path": "expected a string, got int"}
        with pytest.raises(ValidationError) as info:
            page.from_dict({"website": {"url": None}})
        assert info.value.errors == {"website.url": "may not be null"}
        with pytest.raises(ValidationError) as info:
            other.from_dict({"pages": [{"path": 1}]})
        assert info.value.errors == {"pages[0].path": "expected a string, got int"}


def test_from_dict_refuses_primary_key_change(sbio_db):
    site = one_site(sbio_db)
    with Session() as s:
        site = s.get(Website, site.id)
        site.from_dict({"id": str(site.id), "title": "same id is fine"})
        with pytest.raises(ValidationError, match="cannot be changed"):
            site.from_dict({"id": str(uuid.uuid4())})


def test_from_dict_nested_restriction():
    site = Website(url="x")
    site.from_dict({"pages": [{"path": "/a"}]}, attrs=["pages"])
    assert [p.path for p in site.pages] == ["/a"]
    with pytest.raises(ValidationError) as info:
        site.from_dict({"pages": [{"path": "/a", "website": {"url": "evil"}}]}, attrs=["pages"])
    assert info.value.errors == {"pages[0].website": "not allowed"}
    with pytest.raises(ValidationError) as info:
        site.from_dict({"pages": [{"path": "/a", "id": str(uuid.uuid4())}]},
                       attrs={"pages": ["path"]})
    assert info.value.errors == {"pages[0].id": "not allowed"}


# --------------------------------------------------------------------------
# SessionManager
# --------------------------------------------------------------------------


def test_with_session_commits_and_closes(sbio_db):
    with Session() as s:
        site = Website(url="https://c")
        s.add(site)
        assert s.website("https://c") is site  # SessionMixin method bound onto the session
    assert sa_inspect(site).detached
    assert not s.in_transaction()
    assert sbio_db.engine.pool.checkedout() == 0
    assert site.url == "https://c"  # expire_on_commit=False: still usable
    with Session() as s:
        assert s.get(Website, site.id).url == "https://c"


def test_with_session_rolls_back_on_error(sbio_db, notified):
    with pytest.raises(RuntimeError, match="boom"), Session() as s:
        s.add(Website(url="https://r"))
        s.flush()
        raise RuntimeError("boom")
    assert not s.in_transaction()
    assert sbio_db.engine.pool.checkedout() == 0
    with Session() as s:
        assert s.scalars(select(Website)).all() == []
    assert notified == []


def test_failed_commit_rolls_back_and_closes(sbio_db, notified):
    one_site(sbio_db, url="dup")
    with pytest.raises(sqlalchemy.exc.IntegrityError), Session() as s:
        s.add(Website(url="dup"))
    assert sbio_db.engine.pool.checkedout() == 0
    assert notified == []


def test_session_mixin_and_manager_instance():
    assert issubclass(Session.session_class, Session.SessionMixin)
    assert issubclass(Session.session_class, sbio.sa.SbioSession)
    assert not hasattr(QuietSession.session_class, "website")
    manager = Session()
    with pytest.raises(RuntimeError, match="engine is not set"):
        QuietSession.new_session()
    assert manager.session is None


def test_initialize_db_is_explicit(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/x.db")

    class Lazy(SessionManager):
        base = Base

    Lazy.engine = engine
    assert sa_inspect(engine).get_table_names() == []  # nothing happened at class creation
    Lazy.initialize_db()
    assert "website" in sa_inspect(engine).get_table_names()
    engine.dispose()


def test_initialize_db_drop(sbio_db):
    one_site(sbio_db)
    Session.initialize_db()  # idempotent: existing tables and rows stay
    with Session() as s:
        assert len(s.scalars(select(Website)).all()) == 1
    Session.initialize_db(drop=True)
    with Session() as s:
        assert s.scalars(select(Website)).all() == []
    one_site(sbio_db)  # the tables are back


def test_get_base_resolution():
    assert Session.get_base() is Base  # the only base in this module
    assert QuietSession.get_metadata() is Base.metadata


@pytest.mark.parametrize("sbio_db_backend", ["sqlite"])
def test_sqlite_foreign_keys_enforced(sbio_db):
    with pytest.raises(sqlalchemy.exc.IntegrityError), Session() as s:
        s.add(WebPage(path="/orphan", website_id=uuid.uuid4()))


# --------------------------------------------------------------------------
# change notifications
# --------------------------------------------------------------------------


def test_notifies_changed_tables_once_per_commit(sbio_db, notified):
    with Session() as s:
        site = Website(url="https://n")
        s.add(site)
        s.flush()
        site.pages.append(WebPage(path="/"))
        s.flush()
        site.title = "T"
    page = site.pages[0]
    assert notified == [sorted(["web_page", "website", f"web_page:{page.id}",
                                f"website:{site.id}"])]
    with Session() as s:
        s.get(Website, site.id).title = "T2"
    assert notified[-1] == ["website", f"website:{site.id}"]
    with Session() as s:
        s.delete(s.get(Website, site.id))  # cascades to the page and the tag links
    assert notified[-1] == sorted(["web_page", "website", "website_tag", f"web_page:{page.id}",
                                   f"website:{site.id}"])
    assert len(notified) == 3


def test_no_notification_on_rollback_or_without_changes(sbio_db, notified):
    site = one_site(sbio_db)
    with pytest.raises(ZeroDivisionError), Session() as s:
        s.get(Website, site.id).title = "x"
        s.flush()
        1 / 0  # noqa: B018 (the exception inside the session is the point)
    with Session() as s:
        loaded = s.get(Website, site.id)
        loaded.title = loaded.title  # a no-op change
    with Session() as s:
        s.add(Website(url="https://r"))
        s.flush()
        s.rollback()
        s.scalars(select(Website)).all()
    assert notified == []


def test_notification_after_explicit_commits(sbio_db, notified):
    s = Session.new_session()
    try:
        site = Website(url="https://a")
        s.add(site)
        s.commit()
        assert notified == [["website", f"website:{site.id}"]]
        tag = Tag(name="t")
        s.add(tag)
        s.commit()
        assert notified == [["website", f"website:{site.id}"], ["tag", f"tag:{tag.id}"]]
        s.commit()  # nothing changed
        assert len(notified) == 2
    finally:
        s.close()


def test_savepoints(sbio_db, notified):
    with Session() as s:
        s.add(Website(url="https://kept"))
        s.flush()
        with pytest.raises(ValueError), s.begin_nested():
            s.add(Tag(name="lost"))
            s.flush()
            raise ValueError
        with s.begin_nested():
            s.add(WebPage(path="/", website=s.website("https://kept")))
    # not "tag" nor its row: that savepoint rolled back
    assert tables(notified[0]) == ["web_page", "website"]
    assert [c.split(":")[0] for c in notified[0] if ":" in c] == ["web_page", "website"]


def test_m2m_and_bulk_statements_notify(sbio_db, notified, site_with_pages):
    with Session() as s:
        s.get(Website, site_with_pages.id).tags = []
    # the link table by its name; the website's row, whose collection changed
    assert notified == [["website", f"website:{site_with_pages.id}", "website_tag"]]
    with Session() as s:  # a bulk statement: every row of its table
        s.execute(update(Tag).values(name=Tag.name + "!"))
    assert notified[-1] == ["tag", "tag:*"]
    with Session() as s:
        s.execute(delete(WebPage))
    assert notified[-1] == ["web_page", "web_page:*"]


def test_notify_on_commit(sbio_db, notified):
    with Session() as s:
        s.execute(text("UPDATE website SET title = 'raw'"))
        s.notify_on_commit(Website, "custom")
    assert notified == [["custom", "website"]]
    with pytest.raises(KeyError), Session() as s:
        s.notify_on_commit("custom")
        raise KeyError
    assert len(notified) == 1


def test_opt_out_per_manager(sbio_db, notified, monkeypatch):
    quiet_calls = []
    monkeypatch.setattr(QuietSession, "engine", sbio_db.engine)
    monkeypatch.setattr(QuietSession, "notifier", quiet_calls.append)
    with QuietSession() as s:
        s.add(Website(url="https://q"))
    assert quiet_calls == [] and notified == []
    monkeypatch.setattr(Session, "notify_changes", False)
    with Session() as s:
        s.add(Website(url="https://q2"))
    assert notified == []


def test_notifier_failure_is_logged_and_commit_stands(sbio_db, monkeypatch, caplog):
    def broken(channels):
        raise RuntimeError("bus down")

    monkeypatch.setattr(Session, "notifier", broken)
    site = Website(url="https://f")
    with caplog.at_level(logging.ERROR, logger="sbio.sa"), Session() as s:
        s.add(site)
    assert f"change notification for ['website', 'website:{site.id}'] failed" in caplog.text
    with Session() as s:
        assert s.website("https://f")


def test_default_notifier_is_sbio_live_notify(sbio_db, monkeypatch):
    calls = []
    fake_live = types.ModuleType("sbio.live")
    fake_live.notify = lambda channels, delay=False, trigger=None: calls.append(
        (channels, delay, trigger))
    monkeypatch.setitem(sys.modules, "sbio.live", fake_live)
    assert Session.notifier is None
    site = Website(url="https://l")
    with Session() as s:
        s.add(site)
    assert calls == [(["website", f"website:{site.id}"], False, "commit")]


# per-row channels, on their own models and an in-memory SQLite database: what
# a commit names does not depend on the backend (test_sa_live.py runs the
# subscriptions on both)


def _rows_models(parents=("poll_id",), **vote_attrs):
    """A base with Poll (integer key), Vote (naming its poll) and Ballot (composite key)."""

    @declarative_base
    class RowBase:
        __module__ = "per_row_models"  # not this module's base (Session.get_base() finds Base)

    class Poll(RowBase):
        id = Column(Integer, primary_key=True, autoincrement=False)
        title = Column(Text())

    vote_ns = {"__notify_parents__": parents,
               "id": Column(Integer, primary_key=True),
               "poll_id": Column(Integer, ForeignKey("poll.id")),
               "note": Column(Text()), "poll": relationship("Poll"), **vote_attrs}
    Vote = type("Vote", (RowBase,), vote_ns)

    class Ballot(RowBase):
        poll_id = Column(Integer, primary_key=True)
        voter = Column(String(20), primary_key=True)

    calls = []

    class RowSession(SessionManager):
        engine = create_engine("sqlite://")
        base = RowBase
        notifier = calls.append

    sqlalchemy.orm.configure_mappers()
    RowSession.initialize_db()
    return types.SimpleNamespace(Session=RowSession, Poll=Poll, Vote=Vote, Ballot=Ballot,
                                 calls=calls)


def test_row_channel_names():
    m = _rows_models()
    Poll, Ballot = m.Poll, m.Ballot
    assert row_channel("poll", 17) == row_channel(Poll, 17) == row_channel(Poll(id=17)) == "poll:17"
    assert row_channel(Ballot, (17, "ann")) == row_channel(Ballot(poll_id=17, voter="ann")) \
        == "ballot:17:ann"  # composite: in primary-key column order
    key = uuid.UUID(int=5)
    assert row_channel("website", key) == f"website:{key}"
    assert sbio.channels.row_wildcard(Poll) == "poll:*"
    assert sbio.channels.wildcard_prefix("poll:*") == "poll:"
    assert sbio.channels.wildcard_prefix("poll:17") is None
    assert sbio.channels.wildcard_prefix(":*") is None
    for bad in [("poll",), ("poll", None), ("poll", (1, None)), ("poll", ())]:
        with pytest.raises(ValueError):
            row_channel(*bad)


def test_a_commit_names_rows_parents_and_composite_keys():
    m = _rows_models()
    RowSession, Poll, Vote, Ballot, calls = m.Session, m.Poll, m.Vote, m.Ballot, m.calls
    with RowSession() as s:
        s.add_all([Poll(id=1), Poll(id=2)])
    assert calls[-1] == ["poll", "poll:1", "poll:2"]
    with RowSession() as s:
        s.add(Vote(id=7, poll_id=1))
        s.add(Ballot(poll_id=2, voter="ann"))
    assert calls[-1] == ["ballot", "ballot:2:ann", "poll:1", "vote", "vote:7"]
    with RowSession() as s:  # moved through the relationship: the old and the new parent
        s.get(Vote, 7).poll = s.get(Poll, 2)
    assert calls[-1] == ["poll:1", "poll:2", "vote", "vote:7"]
    with RowSession() as s:  # a changed primary key: the old row and the new one
        s.get(Poll, 1).id = 3
    assert calls[-1] == ["poll", "poll:1", "poll:3"]
    with RowSession() as s:
        s.delete(s.get(Vote, 7))
    assert calls[-1] == ["poll:2", "vote", "vote:7"]
    with RowSession() as s:  # a child without a parent names no parent row
        s.add(Vote(id=8))
    assert calls[-1] == ["vote", "vote:8"]
    with RowSession() as s:  # raw SQL: name the rows yourself
        s.execute(text("UPDATE poll SET title = 'raw' WHERE id = 2"))
        s.notify_on_commit(row_channel(Poll, 2))
    assert calls[-1] == ["poll:2"]


def test_notify_parents_by_relationship_and_opting_out_of_rows():
    m = _rows_models(parents=("poll",), __notify_rows__=False)
    RowSession, Poll, Vote, calls = m.Session, m.Poll, m.Vote, m.calls
    with RowSession() as s:
        s.add(Poll(id=1))
        s.flush()
        s.add(Vote(id=7, poll_id=1))
    assert calls[-1] == ["poll", "poll:1", "vote"]  # no "vote:7": Vote opted out


def test_a_parent_that_is_not_loaded_names_every_row_of_the_parent_table():
    m = _rows_models()
    RowSession, Poll, Vote, calls = m.Session, m.Poll, m.Vote, m.calls
    with RowSession() as s:
        s.add(Poll(id=1))
        s.flush()
        s.add(Vote(id=7, poll_id=1))
    with RowSession() as s:
        vote = s.scalars(select(Vote).options(sqlalchemy.orm.defer(Vote.poll_id))).one()
        vote.note = "changed"
    assert calls[-1] == ["poll:*", "vote", "vote:7"]


def test_too_many_rows_in_one_transaction_name_the_table_wildcard(monkeypatch):
    m = _rows_models()
    RowSession, Poll, calls = m.Session, m.Poll, m.calls
    monkeypatch.setattr(RowSession, "max_row_channels", 3)
    with RowSession() as s:
        s.add_all(Poll(id=i) for i in range(3))
    assert calls[-1] == ["poll", "poll:0", "poll:1", "poll:2"]
    with RowSession() as s:
        s.add_all(Poll(id=i) for i in range(10, 12))
        with s.begin_nested():  # the bound holds across a released savepoint too
            s.add_all(Poll(id=i) for i in range(20, 22))
    assert calls[-1] == ["poll", "poll:*"]


@pytest.mark.parametrize("parents, message", [
    (("nope",), "is not an attribute"),
    (("id",), "exactly one foreign key"),
    (5, "must be a tuple of attribute names"),
])
def test_a_wrong_notify_parents_fails_when_the_model_is_configured(parents, message):
    with pytest.raises(Exception, match=message):
        _rows_models(parents=parents)


# --------------------------------------------------------------------------
# the db fixture
# --------------------------------------------------------------------------


def test_db_fixture_binds_a_fresh_database(sbio_db):
    assert isinstance(sbio_db, DbFixture)
    assert Session.engine is sbio_db.engine
    assert sbio_db.backend in ("sqlite", "postgresql")
    with sbio_db.session() as s:
        assert s.scalars(select(Website)).all() == []  # clean, tables created
    site, tag = sbio_db.add(Website(url="https://d"), Tag(name="d"))
    assert site.id and tag.id
    if sbio_db.backend == "postgresql":
        assert sbio_db.schema.startswith("sbio_test_")
        with sbio_db.engine.connect() as conn:
            assert conn.execute(text("SELECT current_schema()")).scalar_one() == sbio_db.schema


def test_temporary_database_restores_engine(tmp_path):
    sentinel = create_engine("sqlite://")
    Session.engine = sentinel
    try:
        with temporary_database(Session, "sqlite", directory=tmp_path) as database:
            assert Session.engine is database.engine is not sentinel
            assert "website" in sa_inspect(database.engine).get_table_names()
        assert Session.engine is sentinel
        second = tmp_path / "second"
        second.mkdir()
        with pytest.raises(ZeroDivisionError), \
                temporary_database(Session, "sqlite", directory=second):
            1 / 0  # noqa: B018 (the exception inside the block is the point)
        assert Session.engine is sentinel
    finally:
        Session.engine = None
        sentinel.dispose()


def test_temporary_postgres_schema_is_dropped(sbio_postgres_url):
    with temporary_database(Session, "postgres", postgres_url=sbio_postgres_url) as database:
        schema = database.schema
        with Session() as s:
            s.add(Website(url="https://pg"))
    assert Session.engine is None
    admin = sqlalchemy.create_engine(sbio_postgres_url)
    try:
        with admin.connect() as conn:
            found = conn.execute(
                text("SELECT count(*) FROM information_schema.schemata WHERE schema_name = :s"),
                {"s": schema}
            ).scalar_one()
    finally:
        admin.dispose()
    assert found == 0


class TestSeeding:
    @pytest.fixture
    def sbio_db_seed(self):
        def websites(s):
            s.add_all([Website(url="https://1"), Website(url="https://2")])

        def tags(s):
            s.add(Tag(name="seeded"))

        return [websites, tags]

    def test_seed_is_applied(self, sbio_db, notified):
        with Session() as s:
            assert sorted(w.url for w in s.scalars(select(Website))) == ["https://1", "https://2"]
            assert s.scalars(select(Tag)).one().name == "seeded"
        assert notified == []  # seeding does not notify
        assert "notify_changes" not in vars(Session)

    def test_each_test_gets_a_fresh_copy(self, sbio_db):
        with Session() as s:
            s.execute(delete(Website))
            assert s.scalars(select(Website)).all() == []

    def test_still_seeded(self, sbio_db):
        with Session() as s:
            assert len(s.scalars(select(Website)).all()) == 2


# --------------------------------------------------------------------------
# gevent: PostgreSQL work in many greenlets is cooperative
# --------------------------------------------------------------------------


@pytest.mark.parametrize("sbio_db_backend", ["postgres"])
def test_fifty_greenlets_do_not_block_each_other(sbio_db):
    import psycopg.waiting

    if not monkey.is_module_patched("select"):
        pytest.skip("gevent monkey-patching is off (SBIO_MONKEY_PATCH=0)")
    assert psycopg.waiting.wait is not getattr(psycopg.waiting, "wait_c", None), (
        "psycopg was imported before gevent monkey-patching: its waits block the hub"
    )
    workers = 50
    # pool_size + max_overflow >= greenlets using the database at once
    sbio_db.rebind(sbio_db.make_engine(pool_size=5, max_overflow=workers, pool_timeout=30))
    state = {"ticks": 0, "ticks_during_sleep": 0, "in_flight": 0, "max_in_flight": 0, "stop": False}

    def ticker():
        while not state["stop"]:
            state["ticks"] += 1
            if state["in_flight"]:
                state["ticks_during_sleep"] += 1
            gevent.sleep(0.01)

    def work():
        with Session() as s:
            s.execute(text("SELECT 1"))
            state["in_flight"] += 1
            state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
            s.execute(text("SELECT pg_sleep(0.2)"))
            state["in_flight"] -= 1
            s.add(Tag(name=f"t{uuid.uuid4().hex[:12]}"))

    tick = gevent.spawn(ticker)
    jobs = [gevent.spawn(work) for _ in range(workers)]
    gevent.joinall(jobs, timeout=60, raise_error=True)
    state["stop"] = True
    tick.join()
    assert all(job.successful() for job in jobs)
    assert state["max_in_flight"] >= workers // 2  # the sleeps overlapped
    assert state["ticks_during_sleep"] >= 5  # the ticker kept running meanwhile
    with Session() as s:
        assert len(s.scalars(select(Tag)).all()) == workers
