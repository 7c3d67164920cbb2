import time, json, statistics, sys
import psycopg
from psycopg import sql
from benchmarks.bench_app import build_app
from benchmarks._common import migrated_schema
DSN="postgresql://postgres@127.0.0.1:5432/test"
N=100_000
with migrated_schema(DSN) as schema:
    s=sql.Identifier(schema)
    with psycopg.connect(DSN, autocommit=True) as conn:
        seq = conn.execute("SELECT pg_get_serial_sequence(%s,'id')", [f"{schema}.jobs"]).fetchone()[0]
        print("seq", seq)
        def ids_current():
            conn.execute("SELECT now(), array_agg(nextval(pg_get_serial_sequence(%(table)s, 'id'))) FROM generate_series(1, %(n)s)", {"table": f"{schema}.jobs", "n": N}).fetchone()
        def ids_regclass():
            conn.execute("SELECT now(), array_agg(nextval(%(seq)s::regclass)) FROM generate_series(1, %(n)s)", {"seq": seq, "n": N}).fetchone()
        def ids_rows():
            conn.execute("SELECT nextval(%(seq)s::regclass) FROM generate_series(1, %(n)s)", {"seq": seq, "n": N}).fetchall()
        now_text = conn.execute("select now()").fetchone()[0].isoformat()
        def copy_pre(with_ids):
            lines = "".join(f"{i+1}\tbench.noop\tbench\t{{\"i\":{i}}}\t0\t20\t{now_text}\tavailable\t\\N\t\\N\t\\N\n" if with_ids else f"bench.noop\tbench\t{{\"i\":{i}}}\t0\t20\t{now_text}\tavailable\t\\N\t\\N\t\\N\n" for i in range(N))
            cols = "(id, task, queue, args, priority, max_attempts, scheduled_at, state, retry_policy, trace_context, limit_key)" if with_ids else "(task, queue, args, priority, max_attempts, scheduled_at, state, retry_policy, trace_context, limit_key)"
            chunks=[lines[i:i+200000] for i in range(0,len(lines),200000)]
            conn.execute(sql.SQL("TRUNCATE {}.jobs").format(s))
            t=time.perf_counter()
            with conn.transaction():
                with conn.cursor().copy(sql.SQL("COPY {}.jobs " + cols + " FROM STDIN").format(s)) as cp:
                    for c in chunks: cp.write(c)
            return time.perf_counter()-t
        for rep in range(3):
            for name, fn in (("ids_current", ids_current), ("ids_regclass", ids_regclass), ("ids_rows", ids_rows)):
                t=time.perf_counter(); fn(); e=time.perf_counter()-t
                print(f"{name}: {N/e:,.0f}/s ({e*1e6/N:.2f} us/id)")
            for w in (True, False):
                e=copy_pre(w); print(f"copy preformatted ids={w}: {N/e:,.0f} rows/s")
