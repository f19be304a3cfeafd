"""The import graph of the gateway's packages, imports under `if TYPE_CHECKING:` included: no module imports
itself through others (no cycles), and dependencies point one way: gateway -> workers -> router; the vLLM
simulator (vllm_sim) stands apart from the gateway.

Pure: grimp reads the sources; nothing is imported.
"""

from __future__ import annotations

import importlib.util

import grimp
import pytest

pytestmark = pytest.mark.pure

PACKAGES = tuple(p for p in ("router", "workers", "gateway", "vllm_sim") if importlib.util.find_spec(p) is not None)
# (importer, imported): no chain of imports may lead from the first package to the second.
FORBIDDEN = (("router", "workers"), ("router", "gateway"), ("workers", "gateway"), ("vllm_sim", "gateway"))


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, exclude_type_checking_imports=False, cache_dir=None)


def cycles(graph: grimp.ImportGraph) -> list[tuple[str, ...]]:
    """One cycle through each group of modules that import one another (a strongly connected component of the
    graph), as the chain of imports from its first module back to it."""
    upstream = {m: graph.find_upstream_modules(m) for m in graph.modules}  # what each imports, at any depth
    found: list[tuple[str, ...]] = []
    placed: set[str] = set()
    for m in sorted(graph.modules):
        if m in placed:
            continue
        group = {n for n in upstream[m] if m in upstream[n]}
        if not group:
            continue
        placed |= group | {m}
        # m imports one of its group directly; that one leads back to m.
        first = min(n for n in graph.find_modules_directly_imported_by(m) if n in group)
        back = graph.find_shortest_chain(importer=first, imported=m)
        assert back is not None
        found.append((m, *back))
    return found


def test_the_cycle_search_finds_each_cycle_once() -> None:
    g = grimp.ImportGraph()
    for importer, imported in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d"), ("p.d", "p.e"),
                               ("p.e", "p.d"), ("p.f", "p.a")):
        g.add_import(importer=importer, imported=imported)
    assert cycles(g) == [("p.a", "p.b", "p.c", "p.a"), ("p.d", "p.e", "p.d")]


def test_the_packages_are_all_there(graph: grimp.ImportGraph) -> None:
    assert {"router", "workers", "gateway"} <= set(PACKAGES)
    assert {"gateway.app", "gateway.outcome", "workers.pool", "router.errors"} <= graph.modules


def test_no_module_imports_itself_through_others(graph: grimp.ImportGraph) -> None:
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


@pytest.mark.parametrize(("importer", "imported"), FORBIDDEN, ids=lambda p: p)
def test_dependencies_point_one_way(graph: grimp.ImportGraph, importer: str, imported: str) -> None:
    if importer not in PACKAGES or imported not in PACKAGES:
        pytest.skip(f"{importer} or {imported} is not there")
    chain = graph.find_shortest_chain(importer=importer, imported=imported, as_packages=True)
    assert chain is None, f"{importer} must not import {imported}: " + " -> ".join(chain or ())
