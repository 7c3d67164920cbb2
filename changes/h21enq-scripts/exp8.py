import time, sys, statistics, anyio
from benchmarks.bench_app import build_app
from benchmarks._common import migrated_schema, truncate_jobs
DSN="postgresql://postgres@127.0.0.1:5432/test"
N=int(sys.argv[1]) if len(sys.argv)>1 else 1000
REPS=int(sys.argv[2]) if len(sys.argv)>2 else 4
with migrated_schema(DSN) as schema:
    res={}
    for rep in range(REPS):
        for backend in ("asyncio","trio"):
            for prepared in ((True, False) if rep%2==0 else (False, True)):
                truncate_jobs(DSN, schema)
                app = build_app(DSN, schema)
                app.driver.prepared_insert = prepared
                task = app.get_task("bench.noop")
                async def run():
                    await task.defer(i=-1); await task.defer(i=-1)
                    c=time.process_time(); t=time.perf_counter()
                    for i in range(N): await task.defer(i=i)
                    return time.perf_counter()-t, time.process_time()-c
                e, cpu = anyio.run(run, backend=backend)
                app.close()
                key=(backend, "prepared" if prepared else "cursor (before)")
                res.setdefault(key, []).append((N/e, cpu/N*1e6))
    for k, v in sorted(res.items()):
        print(k, "jobs/s", [f"{r:,.0f}" for r,_ in v], "median", f"{statistics.median(r for r,_ in v):,.0f}", "| CPU us/defer median", f"{statistics.median(c for _,c in v):.0f}")
