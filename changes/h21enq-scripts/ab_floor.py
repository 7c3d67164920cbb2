"""defer_batch against the floor: ids drawn + COPY of rows formatted beforehand (no Python work inside the timing)."""
import time, sys, statistics, anyio, psycopg
from psycopg import sql
from benchmarks.bench_app import build_app
from benchmarks._common import migrated_schema, truncate_jobs, count_states
DSN="postgresql://postgres@127.0.0.1:5432/test"
N=int(sys.argv[1]) if len(sys.argv)>1 else 100_000
REPS=int(sys.argv[2]) if len(sys.argv)>2 else 3
with migrated_schema(DSN) as schema:
    s = sql.Identifier(schema)
    res = {}
    def floor():
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("INSERT INTO {}.jobs (task, queue) VALUES ('bench.noop', 'bench')").format(s))
            rest = "\tbench.noop\tbench\t{body}\t0\t20\t{now}\tavailable\t\\N\t\\N\t\\N\n"
            t = time.perf_counter()
            with conn.transaction():
                now, ids = conn.execute("WITH q AS MATERIALIZED (SELECT pg_get_serial_sequence(%s, 'id')::regclass AS seq) SELECT now(), array_agg(nextval(q.seq)) FROM q, generate_series(1, %s)", [f"{schema}.jobs", N]).fetchone()
                t0 = time.perf_counter()
                data = "".join(f"{j}\tbench.noop\tbench\t{{\"i\":{k}}}\t0\t20\t{now.isoformat()}\tavailable\t\\N\t\\N\t\\N\n" for k, j in enumerate(ids))
                fmt = time.perf_counter() - t0
                with conn.cursor().copy(sql.SQL("COPY {}.jobs (id, task, queue, args, priority, max_attempts, scheduled_at, state, retry_policy, trace_context, limit_key) FROM STDIN").format(s)) as cp:
                    for k in range(0, len(data), 1 << 18): cp.write(data[k:k + (1 << 18)])
            return N / (time.perf_counter() - t - fmt)
    def lean(backend):
        app = build_app(DSN, schema); task = app.get_task("bench.noop")
        async def run():
            await task.defer(i=-1)
            t = time.perf_counter(); ids = await task.defer_batch([{"i": i} for i in range(N)]); e = time.perf_counter() - t
            assert len(ids) == N; return N / e
        try: return anyio.run(run, backend=backend)
        finally: app.close()
    variants = {"floor: ids + COPY of rows formatted beforehand (sync psycopg)": floor, "defer_batch, asyncio": lambda: lean("asyncio"), "defer_batch, trio": lambda: lean("trio")}
    names = list(variants)
    for rep in range(REPS):
        for name in (names if rep % 2 == 0 else names[::-1]):
            truncate_jobs(DSN, schema)
            r = variants[name](); res.setdefault(name, []).append(r)
            assert count_states(DSN, schema) == {"available": N + 1}
    for k, v in res.items(): print(f"{k:62} {', '.join(f'{x:,.0f}' for x in v):32} median {statistics.median(v):,.0f}")
