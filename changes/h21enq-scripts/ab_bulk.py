"""A/B of bulk enqueue: defer_batch (lean) vs defer_many, and defer_many with the old id draw; interleaved."""
import time, sys, statistics, anyio
from benchmarks.bench_app import build_app
from benchmarks._common import migrated_schema, truncate_jobs, count_states
DSN="postgresql://postgres@127.0.0.1:5432/test"
N=int(sys.argv[1]) if len(sys.argv)>1 else 100_000
REPS=int(sys.argv[2]) if len(sys.argv)>2 else 3
OLD = b"SELECT now(), array_agg(nextval(pg_get_serial_sequence(%(table)s, 'id'))) FROM generate_series(1, %(n)s)"
variants = ["defer_batch (lean)", "defer_many", "defer_many, old id draw (before)", "defer_many, specs prebuilt"]
with migrated_schema(DSN) as schema:
    res={}
    for rep in range(REPS):
        for backend in ("asyncio","trio"):
            order = variants if rep%2==0 else variants[::-1]
            for v in order:
                truncate_jobs(DSN, schema)
                app = build_app(DSN, schema)
                if "old id draw" in v: app.driver._sql.copy_prepare = OLD
                task = app.get_task("bench.noop")
                async def run():
                    await task.defer(i=-1)
                    specs = [task.job(i=i) for i in range(N)] if "prebuilt" in v else None
                    c=time.process_time(); t=time.perf_counter()
                    if v.startswith("defer_batch"):
                        out = await task.defer_batch([{"i": i} for i in range(N)])
                    elif specs is not None:
                        out = await app.defer_many(specs)
                    else:
                        out = await app.defer_many([task.job(i=i) for i in range(N)])
                    e=time.perf_counter()-t; cpu=time.process_time()-c
                    assert len(out)==N
                    return e, cpu
                e, cpu = anyio.run(run, backend=backend)
                app.close()
                assert count_states(DSN, schema) == {"available": N+1}
                res.setdefault((backend, v), []).append((N/e, cpu/N*1e6))
                print(backend, v, f"{N/e:,.0f}", flush=True)
    print()
    for k, vals in sorted(res.items()):
        rates=[r for r,_ in vals]
        print(f"{k[0]:7} {k[1]:34} jobs/s {', '.join(f'{r:,.0f}' for r in rates):40} median {statistics.median(rates):>9,.0f} | client CPU µs/job {statistics.median(c for _,c in vals):.1f}")
