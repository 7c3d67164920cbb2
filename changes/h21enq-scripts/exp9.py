import time, statistics, psycopg
from psycopg import sql
from benchmarks._common import migrated_schema
DSN="postgresql://postgres@127.0.0.1:5432/test"
N=100_000
with migrated_schema(DSN) as schema:
    s=sql.Identifier(schema)
    with psycopg.connect(DSN, autocommit=True) as conn:
        now=conn.execute("select now()").fetchone()[0].isoformat()
        full="".join(f"{i+1}\tbench.noop\tbench\t{{\"i\":{i}}}\t0\t20\t{now}\tavailable\t\\N\t\\N\t\\N\n" for i in range(N))
        short="".join(f"{i+1}\tbench.noop\tbench\t{{\"i\":{i}}}\t0\t20\n" for i in range(N))
        cols_full="(id, task, queue, args, priority, max_attempts, scheduled_at, state, retry_policy, trace_context, limit_key)"
        cols_short="(id, task, queue, args, priority, max_attempts)"
        res={}
        for rep in range(4):
            for name,data,cols in (("full",full,cols_full),("short",short,cols_short)):
                conn.execute(sql.SQL("TRUNCATE {}.jobs").format(s))
                t=time.perf_counter()
                with conn.transaction():
                    with conn.cursor().copy(sql.SQL("COPY {}.jobs "+cols+" FROM STDIN").format(s)) as cp:
                        for k in range(0,len(data),1<<18): cp.write(data[k:k+(1<<18)])
                res.setdefault(name,[]).append(N/(time.perf_counter()-t))
        for k,v in res.items(): print(k, [f"{x:,.0f}" for x in v], f"median {statistics.median(v):,.0f}")
