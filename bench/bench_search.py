"""Search and the catalog page at 10k and 100k adapters, on SQLite and PostgreSQL.

Seeds each size through the hub's own tables (Core bulk inserts: 50 base
models, 8 methods, ranks 4-256, 2,000 owners, tags and evals, 5 % private,
2 % base models), then times 10 query shapes through the API and the web
catalog page in process (the whole app, no network), and counts the SQL
statements each request runs. Prints p50/p99 per shape and size, and the
100k/10k ratio. SQLite databases are cached in ``--cache`` between runs;
PostgreSQL is seeded afresh in a throwaway cluster (``tests/services.py``).

    flock /tmp/bench.lock python bench/bench_search.py [--sizes 10000,100000] [--backends sqlite,postgres]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

SEED_VERSION = 2  # 2: seeded at schema 0008, through the summary tables' triggers (as production writes)
METHODS = ["LORA", "LORA", "LORA", "LOHA", "LOKR", "IA3", "ADALORA", "VERA", "BOFT"]  # LoRA weighted x3: 8 kinds
WORDS = ["legal", "medical", "chat", "code", "math", "summarize", "translate", "sql", "poetry", "finance",
         "support", "vision", "tiny", "instruct", "qa", "safety", "french", "german", "story", "review"]
#: (name, query string): the same 10 shapes go to /api/adapters and to the catalog page /.
SHAPES = [
    ("browse", ""),
    ("q common", "q=legal"),
    ("q rare", "q=poetry-fin"),
    ("q 2 chars", "q=qa"),
    ("base model", "base_model=org-7/base-model-7"),
    ("method", "method=LOHA"),
    ("owner", "owner=user-1234"),
    ("rank range", "min_rank=16&max_rank=64&sort=rank&order=asc"),
    ("tag", "tag=v1&sort=downloads"),
    ("combined", "q=chat&base_model=org-3/base-model-3&method=LORA&sort=name&order=asc"),
]


def seed(engine, n: int, rng: random.Random) -> None:
    """``n`` repos with revisions, a ``main`` tag each, ``v1`` on a tenth, evals on half."""
    from sqlalchemy import insert

    from peft_hub.hub.models import Adapter, Eval, Namespace, Revision, Tag

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    owners = [f"user-{i}" if i % 10 else f"Org-{i}" for i in range(2000)]
    bases = [f"org-{i}/base-model-{i}" for i in range(50)]
    with engine.begin() as conn:
        conn.execute(insert(Namespace), [{"name": o, "name_key": o.lower(), "kind": "org" if o[0] == "O" else "user",
                                          "is_admin": o == "user-1", "created_at": t0} for o in owners])
        adapters, revisions, tags, evals = [], [], [], []
        for i in range(1, n + 1):
            owner, model = rng.choice(owners), rng.random() < 0.02
            words = rng.sample(WORDS, 2)
            name = f"{words[0]}-{words[1]}-{i}"
            rank = rng.choice([4, 8, 8, 16, 16, 16, 32, 64, 128, 256])
            adapters.append({
                "id": i, "owner": owner, "name": name, "name_key": f"{owner}/{name}".lower(),
                "private": rng.random() < 0.05, "kind": "model" if model else "adapter",
                "downloads": int(rng.paretovariate(1.2)) - 1, "created_at": t0,
                "updated_at": t0 + timedelta(minutes=rng.randrange(500_000)),  # ties happen
                "base_model": None if model else rng.choice(bases), "method": "model" if model else rng.choice(METHODS),
                "rank": None if model else rank, "max_rank": None if model else rank * rng.choice([1, 1, 2]),
                "total_size": rng.randrange(1, 10**9), "target_modules": ["q_proj", "v_proj"],
                "description": f"A {words[0]} adapter for {rng.choice(WORDS)} tasks.",
            })
            revisions.append({"id": i, "adapter_id": i, "sha": f"{i:040x}", "message": "", "author": owner,
                              "created_at": t0, "meta": {}})
            tags.append({"adapter_id": i, "name": "main", "revision_id": i, "updated_at": t0})
            if i % 10 == 0:
                tags.append({"adapter_id": i, "name": "v1", "revision_id": i, "updated_at": t0})
            if i % 2 == 0:
                evals.append({"revision_id": i, "metric": "accuracy", "value": rng.random(), "dataset": "bench",
                              "extra": {}, "added_by": owner, "created_at": t0})
        for table, rows in ((Adapter, adapters), (Revision, revisions), (Tag, tags), (Eval, evals)):
            for start in range(0, len(rows), 5000):
                conn.execute(insert(table), rows[start:start + 5000])
        if conn.dialect.name == "postgresql":
            from sqlalchemy import text

            conn.execute(text("SELECT setval('adapter_id_seq', :n)"), {"n": n})
    if engine.dialect.name == "postgresql":  # the steady state autovacuum reaches: statistics, visibility map
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")


def seeded_sqlite(cache: Path, n: int) -> str:
    """A SQLite database of ``n`` seeded repos, made once per size and seed version."""
    from peft_hub.hub.db import make_engine
    from peft_hub.hub.migrations import upgrade

    path = cache / f"search-{n}-v{SEED_VERSION}.db"
    if not path.exists():
        part = path.with_suffix(".part")
        part.unlink(missing_ok=True)
        engine = make_engine(f"sqlite:///{part}")
        upgrade(engine)
        seed(engine, n, random.Random(n))
        engine.dispose()
        part.rename(path)
    return f"sqlite:///{path}"


def seeded_postgres(pg_url: str, n: int) -> str:
    from conftest import _fresh_pg_database

    from peft_hub.hub.db import make_engine
    from peft_hub.hub.migrations import upgrade

    url = _fresh_pg_database(pg_url)
    engine = make_engine(url)
    upgrade(engine)
    seed(engine, n, random.Random(n))
    engine.dispose()
    return url


@contextmanager
def app_client(db_url: str, tmp: Path):
    """The whole hub app in process, and a list that counts its SQL statements."""
    from fastapi.testclient import TestClient
    from sqlalchemy import event

    from peft_hub.hub import Settings, create_app

    tmp.mkdir(parents=True, exist_ok=True)
    settings = Settings(db_url=db_url, storage=str(tmp / "blobs"), token_file=tmp / "token",
                        admin_token="phub_" + "x" * 48)
    with TestClient(create_app(settings)) as client:
        statements: list[str] = []
        event.listen(client.app.state.engine, "before_cursor_execute",
                     lambda conn, cur, stmt, *a: "webhookdelivery" in stmt or statements.append(stmt))
        yield client, statements


def measure(clients: dict[int, tuple], path: str, repeats: int) -> dict[int, tuple[float, float, int, int]]:
    """Per size: p50 and p99 in ms over ``repeats`` requests (after 2 warm-ups), and the statements and
    exact duplicates of one request. The sizes take turns, request by request, so that load from
    elsewhere on the machine falls on each alike."""
    times: dict[int, list[float]] = {n: [] for n in clients}
    counts: dict[int, tuple[int, int]] = {}
    for client, _ in clients.values():
        for _ in range(2):
            assert client.get(path).status_code == 200, path
    for _ in range(repeats):
        for n, (client, statements) in clients.items():
            statements.clear()
            start = time.perf_counter()
            response = client.get(path)
            times[n].append((time.perf_counter() - start) * 1000)
            assert response.status_code == 200, path
            counts[n] = (len(statements), len(statements) - len(set(statements)))
    out = {}
    for n, series in times.items():
        series.sort()
        p99 = series[min(len(series) - 1, round(0.99 * (len(series) - 1)))]
        out[n] = (statistics.median(series), p99, *counts[n])
    return out


def run_backend(backend: str, db_urls: dict[int, str], repeats: int, tmp: Path) -> None:
    results: dict[tuple[str, str, int], tuple] = {}
    with ExitStack() as stack:
        clients = {n: stack.enter_context(app_client(url, tmp / str(n))) for n, url in db_urls.items()}
        for surface, prefix in (("api", "/api/adapters?"), ("web", "/?")):
            for name, query in SHAPES:
                for n, figures in measure(clients, prefix + query, repeats).items():
                    results[surface, name, n] = figures
    sizes = sorted(db_urls)
    print(f"\n== {backend} ({', '.join(f'{n:,}' for n in sizes)} adapters; ms, {repeats} requests each)")
    heads = " ".join(f"{'p50@' + str(n // 1000) + 'k':>9} {'p99@' + str(n // 1000) + 'k':>9}" for n in sizes)
    print(f"{'surface':7} {'shape':12} {heads} {'p50 ratio':>9} {'p99 ratio':>9} {'stmts':>5} {'dups':>4}")
    for surface in ("api", "web"):
        for name, _ in SHAPES:
            cells = [results[surface, name, n] for n in sizes]
            figures = " ".join(f"{c[0]:9.1f} {c[1]:9.1f}" for c in cells)
            ratios = [cells[-1][i] / cells[0][i] for i in (0, 1)]
            counts = f"{cells[-1][2]:5d} {cells[-1][3]:4d}"
            print(f"{surface:7} {name:12} {figures} {ratios[0]:9.2f} {ratios[1]:9.2f} {counts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--shapes", default="", help="only the shapes whose names contain this")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "peft-hub-bench-search")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    SHAPES[:] = [shape for shape in SHAPES if args.shapes in shape[0]]
    args.cache.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PEFT_HUB_DISABLE_PROGRESS_BARS", "1")
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            if backend == "sqlite":
                urls = {n: seeded_sqlite(args.cache, n) for n in sizes}
            else:
                from services import postgres

                pg = stack.enter_context(postgres())
                urls = {n: seeded_postgres(pg, n) for n in sizes}
            run_backend(backend, urls, args.repeats, Path(tmp))


if __name__ == "__main__":
    main()
