import time, sys, statistics, cProfile, pstats
import anyio, psycopg
from psycopg import sql
from benchmarks.bench_app import build_app
from benchmarks._common import migrated_schema
DSN="postgresql://postgres@127.0.0.1:5432/test"
N=int(sys.argv[1]) if len(sys.argv)>1 else 2000
PROF = len(sys.argv)>2
with migrated_schema(DSN) as schema:
    app = build_app(DSN, schema)
    task = app.get_task("bench.noop")
    async def defers():
        await task.defer(i=-1)
        t=time.perf_counter()
        for i in range(N):
            await task.defer(i=i)
        return time.perf_counter()-t
    def raw():
        d=app.driver; spec=task.job(i=1); p=d._one_params(spec)
        with psycopg.connect(DSN, autocommit=True) as conn:
            for _ in range(10): conn.execute(d._sql.insert_one, p).fetchall()
            t=time.perf_counter()
            for _ in range(N): conn.execute(d._sql.insert_one, p, prepare=True).fetchall()
            return time.perf_counter()-t
    if PROF:
        pr=cProfile.Profile(); pr.enable(); anyio.run(defers); pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(25)
    else:
        for rep in range(3):
            e=raw(); print(f"raw psycopg prepared: {N/e:,.0f}/s")
            e=anyio.run(defers); print(f"defer asyncio: {N/e:,.0f}/s")
            e=anyio.run(defers, backend="trio"); print(f"defer trio: {N/e:,.0f}/s")
    app.close()
