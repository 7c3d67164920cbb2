"""Interleaved single-enqueue A/B: PgQueuer's queries.enqueue (its own process, asyncpg) vs our await task.defer()."""
import json, statistics, subprocess, sys, time, uuid
import anyio, psycopg
from psycopg import sql
from benchmarks.bench_app import build_app
from benchmarks._common import migrated_schema, truncate_jobs
from benchmarks.peers import peer_dsn
DSN = "postgresql://postgres@127.0.0.1:5432/test"
PEER_PY = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
REPS = int(sys.argv[3]) if len(sys.argv) > 3 else 4
SCRIPT = "benchmarks/peer_scripts/pgqueuer_bench.py"
db = f"nwb_pgqueuer_{uuid.uuid4().hex[:8]}"
url = peer_dsn(DSN, db)
def pgq(workload, n=0):
    out = subprocess.run([PEER_PY, SCRIPT, "--dsn", url, "--workload", workload, "--n", str(n), "--concurrency", "10"], capture_output=True, text=True, timeout=600)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    assert lines, out.stderr[-500:]
    return json.loads(lines[-1])
with psycopg.connect(DSN, autocommit=True) as c:
    c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
try:
    pgq("setup")
    res = {}
    with migrated_schema(DSN) as schema:
        def ours(backend, prepared):
            truncate_jobs(DSN, schema)
            app = build_app(DSN, schema)
            app.driver.prepared_insert = prepared
            task = app.get_task("bench.noop")
            async def run():
                await task.defer(i=-1)
                t = time.perf_counter()
                for i in range(N):
                    await task.defer(i=i)
                return time.perf_counter() - t
            try:
                return N / anyio.run(run, backend=backend)
            finally:
                app.close()
        variants = {
            "PgQueuer queries.enqueue (asyncpg)": lambda: pgq("enqueue-single", N)["rate"],
            "nursery asyncio, prepared (as is)": lambda: ours("asyncio", True),
            "nursery asyncio, cursor (before)": lambda: ours("asyncio", False),
            "nursery trio, prepared (as is)": lambda: ours("trio", True),
            "nursery trio, cursor (before)": lambda: ours("trio", False),
        }
        names = list(variants)
        for rep in range(REPS):
            for name in (names if rep % 2 == 0 else names[::-1]):
                r = variants[name]()
                res.setdefault(name, []).append(r)
                print(f"{name}: {r:,.0f}/s", flush=True)
    print()
    for k, v in res.items():
        print(f"{k:42} {', '.join(f'{x:,.0f}' for x in v):40} median {statistics.median(v):,.0f}")
finally:
    with psycopg.connect(DSN, autocommit=True) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
