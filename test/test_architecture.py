"""The package's import graph: no cycles, and ROS only under ukpgan_ros/ros/ (walked with ast)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ukpgan_ros"
ROS_MODULES = {
    "rclpy", "rcl_interfaces", "sensor_msgs", "std_msgs", "geometry_msgs", "nav_msgs", "std_srvs",
    "visualization_msgs", "diagnostic_msgs", "lifecycle_msgs", "builtin_interfaces", "tf2_ros", "tf2_msgs",
    "rosidl_runtime_py", "launch", "launch_ros", "ament_index_python",
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Lines inside ``if TYPE_CHECKING:`` blocks (annotations only, never executed)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            for sub in node.body:
                lines.update(range(sub.lineno, (sub.end_lineno or sub.lineno) + 1))
    return lines


def _imports(name: str, path: Path, modules: dict[str, Path], runtime_only: bool = False) -> tuple[set[str], set[str]]:
    """(project modules, top-level external packages) that ``name`` imports anywhere (lazy
    imports inside functions included). With ``runtime_only``, imports in TYPE_CHECKING blocks
    (annotations only, never executed) are left out: they count for cycles, not for what a
    module needs at run time."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_lines(tree) if runtime_only else set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    internal, external = set(), set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for t in targets:
            if t.split(".")[0] == "ukpgan_ros":
                while t not in modules and "." in t:
                    t = t.rpartition(".")[0]
                if t != name:
                    internal.add(t)
            else:
                external.add(t.split(".")[0])
    return internal, external


def _graph(runtime_only: bool = False) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    modules = _modules()
    edges, ext = {}, {}
    for name, path in modules.items():
        edges[name], ext[name] = _imports(name, path, modules, runtime_only)
    return edges, ext


def test_no_import_cycles() -> None:
    """Type-only imports count: a cycle hidden behind TYPE_CHECKING is still two modules that
    cannot be understood apart."""
    edges, _ = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_ros_is_imported_only_under_ros() -> None:
    _, ext = _graph(runtime_only=True)
    bad = {n: sorted(e & ROS_MODULES) for n, e in ext.items()
           if e & ROS_MODULES and not (n == "ukpgan_ros.ros" or n.startswith("ukpgan_ros.ros."))}
    assert not bad, f"ROS imports outside ukpgan_ros/ros/: {bad}"


def test_the_walk_sees_known_edges() -> None:
    """The checker itself: it must see lazy imports and resolve packages, or it proves nothing."""
    edges, ext = _graph()
    assert "ukpgan_ros.features.normals" in edges["ukpgan_ros.cloud"]
    assert "ukpgan_ros.io" in edges["ukpgan_ros.pipeline"]  # imported inside a method
    assert "rclpy" in ext["ukpgan_ros.ros.detector_node"]
    assert "ukpgan_ros.datasets.synthetic" in edges["ukpgan_ros.datasets"]
    # a TYPE_CHECKING import is an edge for cycles, not at run time
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ukpgan_ros.cloud import WorkingCloud\n"
    tree = ast.parse(source)
    assert _type_checking_lines(tree) == {3}


def test_no_module_is_too_big() -> None:
    """One job per module: none of the package's modules over 600 lines."""
    big = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    big = {n: k for n, k in big.items() if k > 600}
    assert not big, f"modules over 600 lines: {big}"
