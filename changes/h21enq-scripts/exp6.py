import time, timeit, anyio
from benchmarks.bench_app import build_app
from benchmarks._common import migrated_schema
from nursery_worker._tracing import defer_span
DSN="postgresql://postgres@127.0.0.1:5432/test"
with migrated_schema(DSN) as schema:
    app = build_app(DSN, schema)
    task = app.get_task("bench.noop")
    task.defer_sync(i=1)
    d = app.driver
    pool = d._get_pool()
    tc = task._plain()
    def spec(): tc.job(i=1)
    s = tc.job(i=1)
    def span():
        with defer_span([s]) as x: pass
    def params(): d._plain_insert([s])
    def stats(): pool.get_stats()
    def borrow():
        c = pool.getconn(timeout=0.005); pool.putconn(c)
    def newjob(): d._new_job(s, (1, "available", None, None))
    conn = pool.getconn()
    from psycopg import sql
    def cursor(): conn.cursor()
    pool.putconn(conn)
    for name, fn in [("spec", spec), ("span", span), ("params", params), ("get_stats", stats), ("getconn+putconn", borrow), ("new_job", newjob), ("cursor", cursor)]:
        n=20000
        t=timeit.timeit(fn, number=n)
        print(f"{name}: {t/n*1e6:.2f} us")
    app.close()
