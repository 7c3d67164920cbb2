import time, cProfile, pstats
from benchmarks.bench_app import build_app
app = build_app("postgresql://postgres@127.0.0.1:5432/test", "x")
task = app.get_task("bench.noop")
tc = task._plain()
N=100_000
items=[{"i": i} for i in range(N)]
for _ in range(3):
    t=time.perf_counter(); checked = task._batch_items(items); e1=time.perf_counter()-t
    t=time.perf_counter(); b = tc._batch(items); e2=time.perf_counter()-t
    from nursery_worker._driver.postgres._driver import _copy_text
    args=b.args_json; ids=list(range(N)); middle="\tbench.noop\tbench\t"; tail="\t0\t20\t2026-01-01T00:00:00+00:00\tavailable\t\\N\t\\N\t\\N\n"
    t=time.perf_counter(); s="".join([f"{j}{middle}{_copy_text(x)}{tail}" for j,x in zip(ids,args)]); e3=time.perf_counter()-t
    print(f"check items {e1/N*1e6:.2f} us, check+encode {e2/N*1e6:.2f} us, format {e3/N*1e6:.2f} us")
