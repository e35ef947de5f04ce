"""The inbox's full-text search (FTS5), its index kept in step, the status counts, and the query plans."""

import re
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from conftest import csrf_token, rows

import db
import db.leads
import db.migrations
import db.search
from app import create_app


def add_leads(path: str, *leads: dict) -> None:
    """Store leads straight in the database, the first one oldest; then trim the recent index as the daily
    housekeeping would (to db.search.FTS_NEWEST_IDS)."""
    database = db.connect(path)
    for i, lead in enumerate(leads):
        row = {"form_id": f"f{i}", "phone": "", "email": "", "message": "", "is_spam": 0, **lead}
        with db.write(database):
            db.leads.add_lead(database, row, db.iso_utc(datetime(2026, 1, 1, 10, tzinfo=UTC) + timedelta(minutes=i)))
    if "search_recent" in database.table_names():  # not in a database from before the recent index
        db.search.trim_recent_index(database, batch=7)
    database.close()


LEADS = [
    {"name": "Jane Roe", "phone": "+19495106333", "email": "jane.roe@example.com", "message": "Migraines for years"},
    {"name": "Bob Smith", "email": "bob@example.org", "message": "My shoulder hurts, can I come in near the weekend?"},
    {"name": "Orla Quinn", "phone": "+17145550123", "message": 'She said "acupuncture works" - no pain since'},
    {"name": "Sam Star", "email": "sam@example.net", "message": "5* service, or so I heard; AND (they) say: great"},
    {"name": "Spam Bot", "email": "bot@spam.example", "message": "Migraine cure SEO backlinks", "is_spam": 1},
]


def names(client, **query) -> list[str]:
    response = client.get("/admin", query_string=query)
    assert response.status_code == 200, query
    return sorted(re.findall(r'class="lead-name" href="/admin/leads/\d+">([^<]*)</a>', response.get_data(as_text=True)))


@pytest.fixture
def inbox(app, owner):
    """The signed-in owner's client, with LEADS stored."""
    add_leads(app.config["DATABASE"], *LEADS)
    return owner


@pytest.mark.parametrize(
    "q, expected",
    [
        ("migraines", ["Jane Roe"]),  # a word
        ("MIGR", ["Jane Roe"]),  # a prefix, in any case
        ("shoulder hurts", ["Bob Smith"]),  # every word must be there
        ("jane.roe@example.com", ["Jane Roe"]),  # an email address
        ("bob@", ["Bob Smith"]),
        ("949-510", ["Jane Roe"]),  # digits anywhere in the phone
        ("5106333", ["Jane Roe"]),
        ("(714) 555", ["Orla Quinn"]),
        ("orla", ["Orla Quinn"]),
        ("xylophone", []),  # a word that is not there
        ("shoulder xylophone", []),
    ],
)
def test_search_finds_by_word_prefix_email_and_phone_digits(inbox, q, expected):
    assert names(inbox, q=q) == expected


@pytest.mark.parametrize(
    "q, expected",
    [
        ('"', ["Orla Quinn"]),  # no letter or digit: looked for as it is
        ('"acupuncture', ["Orla Quinn"]),
        ('"acupuncture works"', ["Orla Quinn"]),
        ("works\"'", ["Orla Quinn"]),
        ("*", ["Sam Star"]),
        ("5*", ["Jane Roe", "Orla Quinn", "Sam Star"]),  # "5" starts a word, or is in a phone
        ("-", ["Orla Quinn"]),
        ("-pain", ["Orla Quinn"]),
        ("NEAR", ["Bob Smith"]),
        ("NEAR(shoulder weekend)", []),  # not FTS5's NEAR: the words "near", "shoulder", "weekend)"
        ("OR", ["Bob Smith", "Orla Quinn", "Sam Star"]),  # the word "or" and words starting with it (.org)
        ("jane OR bob", []),
        ("AND", ["Sam Star"]),
        ("(they)", ["Sam Star"]),
        ("name:jane", []),
        ("message : migraines", []),
        ("^jane", ["Jane Roe"]),
        ("jane +", ["Jane Roe"]),
    ],
)
def test_fts_syntax_in_the_query_is_searched_as_text(inbox, q, expected):
    assert names(inbox, q=q) == expected


def test_spam_is_searched_only_under_spam(inbox):
    assert names(inbox, q="migraine") == ["Jane Roe"]
    assert names(inbox, q="migraine", status="spam") == ["Spam Bot"]


def post(client, url: str, data: dict, form_on: str):
    token = csrf_token(client.get(form_on).get_data(as_text=True))
    return client.post(url, data={**data, "csrf_token": token})


def test_search_keeps_in_step_after_a_status_change_a_note_an_edit_and_a_delete(app, inbox):
    response = post(inbox, "/admin/leads/1", {"status": "booked", "note": "Booked for Tuesday"}, "/admin/leads/1")
    assert response.status_code == 303
    assert names(inbox, q="migraines", status="booked") == ["Jane Roe"]
    assert names(inbox, q="migraines", status="new") == []
    assert names(inbox, q="migraines") == ["Jane Roe"]
    page = inbox.get("/admin", query_string={"q": "migraines"}).get_data(as_text=True)
    assert re.search(r'status=booked[^"]*"[^>]*>[^<]*<span class="count">1</span>', page)

    with db.connect(app.config["DATABASE"]) as database, db.write(database):  # no page edits a lead's text
        database.execute("UPDATE leads SET message = 'Insomnia lately', phone = '+13105550000' WHERE id = 1")
    assert names(inbox, q="migraines") == []
    assert names(inbox, q="insomnia") == ["Jane Roe"]
    assert names(inbox, q="310-555") == ["Jane Roe"]
    assert names(inbox, q="949-510") == []

    response = post(inbox, "/admin/leads/1/delete", {}, "/admin/leads/1/delete")
    assert response.status_code == 303
    assert names(inbox, q="insomnia") == []
    assert names(inbox, q="jane") == []
    assert rows(app, "SELECT rowid FROM leads_fts WHERE leads_fts MATCH 'insomnia OR jane'") == []


def test_status_counts_keep_in_step(app, inbox):
    def counts() -> dict:
        with db.connect(app.config["DATABASE"]) as database:
            return db.search.count_by_status(database)

    def counted() -> dict:
        found = dict.fromkeys(db.leads.LEAD_STATUSES, 0)
        stored = rows(app, "SELECT status, count(*) AS n FROM leads GROUP BY status")
        found.update({r["status"]: r["n"] for r in stored})
        return found

    assert counts() == counted() == {"new": 4, "contacted": 0, "booked": 0, "not_interested": 0, "spam": 1}
    post(inbox, "/admin/leads/2", {"status": "contacted", "note": ""}, "/admin/leads/2")
    post(inbox, "/admin/leads/3/spam", {"spam": "1"}, "/admin/leads/3")
    post(inbox, "/admin/leads/4/delete", {}, "/admin/leads/4/delete")
    assert counts() == counted() == {"new": 1, "contacted": 1, "booked": 0, "not_interested": 0, "spam": 2}
    html = inbox.get("/admin").get_data(as_text=True)
    assert re.search(r'All <span class="count">2</span>', html)


def test_migration_builds_the_index_for_a_database_made_before_it(settings, tmp_path):
    path = str(tmp_path / "leads.db")
    old = db.connect(path)
    db.migrations.clinic.apply(old, stop_before=["m004_leads_fts", "m005_inbox_counts"])
    assert "leads_fts" not in old.table_names()
    old.close()
    add_leads(path, *LEADS)

    app = create_app(settings)  # applies the new migrations at start-up
    assert app.config["DATABASE"] == path
    with db.connect(path) as database:
        assert [r["name"] for r in db.search.search_leads(database, q="migr")] == ["Jane Roe"]
        assert [r["name"] for r in db.search.search_leads(database, q="949510")] == ["Jane Roe"]
        assert [r["name"] for r in db.search.search_leads(database, status="spam", q="migr")] == ["Spam Bot"]
        assert db.search.count_by_status(database)["new"] == 4
        assert db.search.count_by_status(database, q="example")["new"] == 3


def plans(database, call) -> list[str]:
    """The query plan of every statement `call` runs on leads, one line per step."""
    statements = []
    with database.tracer(lambda sql, params: statements.append((sql, params))):
        list(call())
    found = []
    for sql, params in statements:
        if "FROM lead" in sql and not sql.lstrip().upper().startswith(("SAVEPOINT", "RELEASE")):
            found += [r[3] for r in database.conn.execute("EXPLAIN QUERY PLAN " + sql, params or ())]
    return found


@pytest.mark.parametrize(
    "call",
    [
        lambda d: db.search.count_by_status(d).items(),
        lambda d: db.search.count_by_status(d, since="2026-01-01", until="2026-02-01").items(),
        lambda d: db.search.count_by_status(d, q="migraine", since="2026-01-01").items(),
        lambda d: db.search.search_leads(d, limit=25),
        lambda d: db.search.search_leads(d, "booked", limit=25),
        lambda d: db.search.search_leads(d, since="2026-01-01", until="2026-02-01", limit=25),
        lambda d: db.search.search_leads(d, "new", since="2026-01-01", limit=25),
        lambda d: db.search.search_leads(d, q="migraine", limit=25),
        lambda d: db.search.search_leads(d, "spam", q="migraine", since="2026-01-01", limit=25),
        lambda d: db.search.iter_leads_for_export(d, q="migraine"),
        lambda d: db.search.leads_per_period(d, ["2026-01-01", "2026-01-02", "2026-01-03"]),
        lambda d: db.search.lead_sources_since(d, "2026-01-01").items(),
    ],
)
def test_inbox_queries_read_through_indexes_not_every_lead(app, call):
    # Enough leads that SQLite's planner weighs its choices as it would on a real inbox.
    add_leads(app.config["DATABASE"], *({**LEADS[i % 5], "name": f"Lead {i}"} for i in range(300)))
    with db.connect(app.config["DATABASE"]) as database:
        steps = plans(database, lambda: call(database))
    assert steps
    full_scans = [s for s in steps if re.match(r"SCAN leads\b(?! USING (COVERING )?INDEX)", s)]
    assert full_scans == [], steps
    assert not [s for s in steps if "TEMP B-TREE FOR ORDER BY" in s and "leads_fts" not in " ".join(steps)], steps


def test_fts_query_quotes_every_word():
    assert db.search.fts_query('jane "OR" -pain* NEAR(') == '"jane"* AND """OR"""* AND "-pain*"* AND "NEAR("*'
    assert db.search.fts_query("") == db.search.fts_query(' " * - ( ') == ""
    assert db.search.fts_query("949-510") == '("949-510"*) OR phone : "949510"*'
    with sqlite3.connect(":memory:") as conn:
        conn.execute("CREATE VIRTUAL TABLE t USING fts5(name, phone)")
        for q in ['"', "a AND", "OR OR", "NEAR(a b, 2)", "x:y", "(a", "a)", "^a", "a*b", "*", "-a", "a - b", "'"]:
            if db.search.fts_query(q):
                conn.execute("SELECT * FROM t WHERE t MATCH ?", [db.search.fts_query(q)]).fetchall()


@pytest.fixture(params=[12, 1000])
def small_bound(request, monkeypatch):
    """A bound of 5 instead of 10,000, so a few leads show what a million would; the matches fetched first
    among the 12 newest ids (a page is then found past them) or among all of them."""
    monkeypatch.setattr(db.search, "COUNT_LIMIT", 5)
    monkeypatch.setattr(db.search, "FTS_MANY_MATCHES", 5)
    monkeypatch.setattr(db.search, "FTS_FEW_MATCHES", 2)
    monkeypatch.setattr(db.search, "FTS_NEWEST_IDS", request.param)


def page_names(client, **query) -> tuple[list[str], str]:
    page = client.get("/admin", query_string=query).get_data(as_text=True)
    return re.findall(r'class="lead-name" href="/admin/leads/\d+">([^<]*)</a>', page), page


@pytest.mark.parametrize("status", [None, "booked"])
def test_a_search_matching_more_than_the_bound_says_so_and_pages_newest_first(app, owner, small_bound, status):
    # 120 leads, oldest first; "migraine" in two of every three, "booked" every other one, spam every fifth.
    leads = [
        {"name": f"Lead {i}", "message": "migraine and pain" if i % 3 else "back pain", "is_spam": int(i % 5 == 0)}
        for i in range(120)
    ]
    add_leads(app.config["DATABASE"], *leads)
    database = db.connect(app.config["DATABASE"])
    for lead_id in range(2, 121, 2):
        if lead_id % 5 != 1:  # not spam
            db.leads.set_status(database, lead_id, "booked", db.utcnow())
    database.close()
    shown = [f"Lead {i}" for i in reversed(range(120)) if i % 3 and i % 5 and (status is None or (i + 1) % 2 == 0)]
    assert len(shown) > 25
    first, html = page_names(owner, q="migr", **({"status": status} if status else {}))
    assert first == shown[:25]
    summary = re.search(r'<p class="summary">([^<]*)<a', html)[1]
    assert summary.startswith("More than 5 requests") and "matching “migr”" in summary
    current = re.search(r'aria-current="page">([^<]*)<span class="count">([^<]*)</span>', html)
    assert current[2] == "5+"
    assert "Page 1</span>" in html and 'rel="next">Older</a>' in html
    second, html = page_names(owner, q="migr", page=2, **({"status": status} if status else {}))
    assert second == shown[25:50]
    assert 'rel="prev">Newer</a>' in html


def test_a_narrower_search_is_counted_exactly(app, owner, small_bound):
    add_leads(
        app.config["DATABASE"], *({"name": f"Lead {i}", "message": "shoulder" if i < 4 else "knee"} for i in range(30))
    )
    names_found, html = page_names(owner, q="shoulder")
    assert names_found == ["Lead 3", "Lead 2", "Lead 1", "Lead 0"]
    assert re.search(r'<p class="summary">4 requests matching “shoulder”', html)
    assert re.search(r'All <span class="count">4</span>', html)
    assert re.search(r'New <span class="count">4</span>', html)
    assert re.search(r'Booked <span class="count">0</span>', html)
    assert "Page 1 of" not in html and "Older" not in html
    with db.connect(app.config["DATABASE"]) as database:
        assert db.search.count_by_status(database, q="knee")["new"] is None  # 26: past the bound of 5
        assert (
            db.search.count_by_status(database, q="knee", since="2026-01-01")["new"] == 26
        )  # with a date: always exact
        assert db.search.count_matches(database, "knee") == 6  # counted as far as the bound


def test_the_recent_index_holds_exactly_the_newest_leads_through_trims_edits_and_deletes(app, monkeypatch):
    monkeypatch.setattr(db.search, "FTS_NEWEST_IDS", 10)
    leads = [{"name": f"Lead {i}", "message": ["migraine", "back pain", "sleep"][i % 3]} for i in range(40)]
    add_leads(app.config["DATABASE"], *leads)  # trims to the 10 newest, 7 ids a write
    database = db.connect(app.config["DATABASE"])
    db.leads.set_status(database, 35, "booked", db.utcnow())  # in the recent index
    db.leads.set_status(database, 3, "booked", db.utcnow())  # not in it any more
    with db.write(database):
        database.execute("UPDATE leads SET message = 'insomnia' WHERE id IN (5, 38)")
        database.execute("DELETE FROM leads WHERE id IN (6, 36)")
    for i in range(5):
        later = {"form_id": f"later{i}", "name": f"Later {i}", "phone": "", "email": "", "message": "migraine"}
        with db.write(database):
            db.leads.add_lead(database, {**later, "is_spam": 0}, db.utcnow())
    db.search.trim_recent_index(database, batch=3)
    from_id = database.execute("SELECT from_id FROM search_recent").fetchone()[0]
    assert from_id == 45 - 10 + 1  # the 10 newest ids: 36 to 45

    def matches(table: str, q: str) -> list[int]:
        sql = f"SELECT rowid FROM {table} WHERE {table} MATCH ? AND rowid >= ? ORDER BY rowid"
        return [row[0] for row in database.execute(sql, [db.search.fts_query(q), from_id * 8])]

    for q in ("migraine", "migr", "pain", "sleep", "insomnia", "lead", "later", "booked"):
        assert matches("leads_fts_recent", q) == matches("leads_fts", q), q
    assert database.execute("SELECT count(*) FROM leads_fts_recent WHERE rowid < ?", [from_id * 8]).fetchone() == (0,)
    assert len(matches("leads_fts_recent", "lead")) == 4  # ids 37 to 40 (Lead 36 to 39); 36 was deleted
    database.close()
