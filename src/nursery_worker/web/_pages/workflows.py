"""Page 7, workflows: a job's dependency graph, each job with its state and a link to its page."""

from __future__ import annotations

from ..._errors import JobNotFound
from ..._insights import GRAPH_MAX_DEPTH, GRAPH_MAX_NODES
from .._page import Page, View, WebError
from .._request import PageRequest
from ._charts import graph_svg


async def workflows(req: PageRequest) -> View:
    """The graph of the job named by ``?job=ID`` (what it depends on, what depends on it), as an
    SVG and as a list by depth; without ``job``, a form asking for one."""
    job_id = req.int_param("job", low=1, high=2**63 - 1)
    if job_id is None:
        return View(template="workflows.html", context={"graph": None, "job_id": None}, data={"graph": None})
    try:
        graph = await req.read(lambda: req.admin.job_graph(job_id))
    except JobNotFound:
        raise WebError(404, f"job {job_id} does not exist (it may have been pruned)") from None
    levels: dict[int, list[object]] = {}
    for node in graph.nodes:
        levels.setdefault(node.depth, []).append(node)
    context = {
        "graph": graph,
        "job_id": job_id,
        "levels": sorted(levels.items()),
        "svg": graph_svg(graph, link=lambda i: req.url(f"/jobs/{i}")),
        "max_nodes": GRAPH_MAX_NODES,
        "max_depth": GRAPH_MAX_DEPTH,
    }
    data = {"graph": graph, "edges": graph.edges()}
    return View(template="workflows.html", context=context, data=data, title=f"Workflow of job {job_id}")


PAGE = Page(name="workflows", path="/workflows", title="Workflows", order=70, handler=workflows)
