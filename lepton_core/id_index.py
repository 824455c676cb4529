"""The id index: which accepted day holds each sample id, for the cross-day uniqueness check.

One keyed table in a SQL database (a SQLAlchemy URL): SQLite inside a local artifact store
by default, PostgreSQL (``LEPTON_ID_INDEX_URL``) when steps run on several machines. A day's
check is a B-tree lookup per id of that day, so its cost does not grow with the days before
it; no earlier day's data is read.

Only days whose checks all passed hold ids here: a day refused for repeating another's ids
does not make that other day fail when it is validated again. Validating a day again first
removes that day's own ids, so reruns are idempotent. Two days validated at once that share
an id cannot both get in: the primary key refuses the second, which then reports the id.
"""

from collections.abc import Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

ATTEMPTS = 3
CHUNK = 5_000  # ids per statement: under SQLite's and PostgreSQL's bound-parameter limits

metadata = sa.MetaData()
ids_table = sa.Table(
    "lepton_ids",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("day", sa.Text, nullable=False, index=True),
)
# Set once the index holds every accepted day that existed before it did (see seed()).
seeded_table = sa.Table("lepton_id_index_seeded", metadata, sa.Column("at", sa.Text))


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    return make_url(url).render_as_string(hide_password=True)


def chunks(values: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


def replace_day(conn: sa.Connection, day: str, ids: list[str]) -> None:
    """In one transaction: ``day`` holds exactly ``ids`` (none: the day is removed)."""
    conn.execute(sa.delete(ids_table).where(ids_table.c.day == day))
    if ids:
        conn.execute(sa.insert(ids_table), [{"id": i, "day": day} for i in ids])


class IdIndex:
    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        if parsed.drivername == "postgresql":
            # psycopg2 comes with dagster-postgres; SQLAlchemy would otherwise want psycopg 3.
            parsed = parsed.set(drivername="postgresql+psycopg2")
        connect_args = {"timeout": 60} if parsed.drivername == "sqlite" else {}
        self.engine = sa.create_engine(parsed, connect_args=connect_args)
        metadata.create_all(self.engine)

    def __repr__(self) -> str:
        return f"IdIndex({redacted(self.url)})"

    def owners(self, conn: sa.Connection, day: str, ids: list[str]) -> list[tuple[str, str]]:
        """(id, day) of each of ``ids`` that another day holds, sorted."""
        found: list[tuple[str, str]] = []
        for part in chunks(ids):
            rows = conn.execute(
                sa.select(ids_table.c.id, ids_table.c.day).where(
                    ids_table.c.id.in_(part), ids_table.c.day != day
                )
            )
            found += [(row.id, row.day) for row in rows]
        return sorted(found)

    def held_elsewhere(self, day: str, ids: list[str]) -> list[tuple[str, str]]:
        """(id, day) of each of ``ids`` that a day other than ``day`` holds, sorted."""
        with self.engine.connect() as conn:
            return self.owners(conn, day, sorted(set(ids)))

    def claim(self, day: str, ids: Iterable[str], accept: bool) -> list[tuple[str, str]]:
        """Replace ``day``'s ids: (id, other day) for ids another day holds; the day's ids
        go in only when ``accept`` and none is held elsewhere."""
        mine = sorted(set(ids))
        for attempt in range(ATTEMPTS):
            try:
                with self.engine.begin() as conn:
                    replace_day(conn, day, [])
                    repeated = self.owners(conn, day, mine)
                    if accept and not repeated:
                        replace_day(conn, day, mine)
                    return repeated
            except IntegrityError:
                # A transaction beside this one inserted one of these ids first (another day,
                # or a second validation of this day); it has committed now: look again.
                if attempt == ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def days(self) -> dict[str, int]:
        """Each day in the index with its number of ids."""
        with self.engine.connect() as conn:
            query = sa.select(ids_table.c.day, sa.func.count()).group_by(ids_table.c.day)
            return {row[0]: row[1] for row in conn.execute(query)}

    def is_seeded(self) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(seeded_table.c.at)).first() is not None

    def seed(self, days: Iterable[tuple[str, list[str]]], at: str) -> None:
        """Load the ids of the accepted days that predate the index, once."""
        with self.engine.begin() as conn:
            for day, ids in days:
                replace_day(conn, day, ids)
            conn.execute(sa.insert(seeded_table), [{"at": at}])

    def dispose(self) -> None:
        self.engine.dispose()
