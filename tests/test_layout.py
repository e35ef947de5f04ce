"""The layout: no module of ours imports another in a circle, `db` imports nothing of ours, nothing imports `app`."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE = {"tests", "bench", "node_modules", "data", "content", "static", "templates", "deploy"}


def our_modules() -> dict[str, Path]:
    """Every module of the site by dotted name (`db.leads`, `admin`), tests, benchmarks and server settings left out."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).parts
        if parts[0] in OUTSIDE or parts[0].startswith(".") or path.name == "gunicorn.conf.py":
            continue
        name = ".".join(parts)[: -len(".py")].removesuffix(".__init__")
        found[name] = path
    return found


def imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ours that `path` imports, wherever in the file (a deferred import counts too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from outbox import email` imports outbox.email; `from db import write` imports db
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """Each module of ours and the modules of ours it imports."""
    modules = our_modules()
    return {name: imports(path, modules) - {name} for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import circle found by a depth-first walk, as the modules along it."""
    found, done, path = [], set(), []

    def visit(name: str) -> None:
        if name in path:
            found.append([*path[path.index(name) :], name])
            return
        if name in done:
            return
        path.append(name)
        for imported in sorted(graph[name]):
            visit(imported)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
    return found


def test_no_module_imports_another_in_a_circle():
    assert circles(import_graph()) == []


def test_the_check_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c", "a"]]


def in_db(name: str) -> bool:
    return name == "db" or name.startswith("db.")


def test_db_imports_nothing_of_ours():
    outside = {name: sorted(n for n in imported if not in_db(n)) for name, imported in import_graph().items()}
    assert {name: found for name, found in outside.items() if in_db(name) and found} == {}


def test_nothing_imports_the_app():
    assert [name for name, imported in import_graph().items() if "app" in imported] == []


def test_every_lead_status_has_its_code_in_the_search_index():
    import db.leads
    import db.search

    assert list(db.search.FTS_STATUS_CODES) == list(db.leads.LEAD_STATUSES)


def test_every_channel_has_one_label_and_one_sender():
    import outbox.addresses
    import outbox.sender

    assert set(outbox.addresses.CHANNEL_LABELS) == set(outbox.sender.CHANNELS)
    claimed = [channel for sender in outbox.sender.SENDERS.values() for channel in sender.channels]
    assert sorted(claimed) == sorted(outbox.sender.CHANNELS)
