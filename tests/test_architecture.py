"""Tests for the module map: no import cycles, small modules, leaf modules that stay leaves, each
public name defined once, base64 decoded in one module.

Imports are read with C{ast}, so every import counts wherever it is written: at module level,
inside a function (a lazy import), or under C{if TYPE_CHECKING:}.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from twisted.trial.unittest import SynchronousTestCase

import relaygate

PACKAGE_DIRECTORY: Final = Path(relaygate.__file__).parent

MAX_LINES: Final = 600

KNOWN_OVERSIZE: Final[frozenset[str]] = frozenset()
"""Modules allowed over L{MAX_LINES} for now."""

KNOWN_CYCLES: Final[frozenset[frozenset[str]]] = frozenset()
"""Import cycles (as the set of modules in one strongly connected component) allowed for now."""

LEAVES: Final = (
    "relaygate.addresses",
    "relaygate.reactor",
    "relaygate.smtp.replies",
    "relaygate.text",
)
"""Value modules that everything may import, and that import nothing of relaygate's."""

SHARED_NAMES: Final[frozenset[str]] = frozenset()
"""Public names allowed at top level in more than one module, for genuinely different things that
must share a name (a Twisted method name, say). Each entry needs a comment saying why."""

BASE64_MODULES: Final = ("base64", "binascii")
"""The standard library's base64 decoders; SASL decoding belongs to L{relaygate.sasl} alone."""

BASE64_USERS: Final[frozenset[str]] = frozenset(
    {
        # SASL: the one place client-supplied base64 is decoded, with its checks.
        "relaygate.sasl",
    }
)
"""Modules allowed to import L{BASE64_MODULES}; another needs a comment saying what it decodes
that is not SASL (PEM, a fingerprint)."""


def module_files() -> dict[str, Path]:
    """Every module of the relaygate package by dotted name (a package by its C{__init__})."""
    modules = {}
    for path in sorted(PACKAGE_DIRECTORY.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIRECTORY.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Every dotted name an C{import} or C{from ... import} anywhere in C{tree} can load."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                # Relative imports are not our style, but resolve them rather than miss one.
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            yield base
            for alias in node.names:
                # "from relaygate import tls" loads a module; "from relaygate.x import Name" not.
                yield f"{base}.{alias.name}"


def public_definitions(files: dict[str, Path]) -> dict[str, list[str]]:
    """Each public (no leading underscore) class or function defined at a module's top level,
    with the modules that define it."""
    defined: dict[str, list[str]] = {}
    for module, path in files.items():
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                if not node.name.startswith("_"):
                    defined.setdefault(node.name, []).append(module)
    return defined


def base64_importers(files: dict[str, Path]) -> set[str]:
    """The modules that import L{BASE64_MODULES} (or anything from them), anywhere in the file."""
    importers = set()
    for module, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            if any(name.split(".")[0] in BASE64_MODULES for name in names):
                importers.add(module)
    return importers


def import_graph() -> dict[str, set[str]]:
    """Each relaygate module and the relaygate modules it imports (other than itself)."""
    files = module_files()
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        targets = set()
        for name in _imported_names(tree, module, is_package):
            if name in files and name != module and name != "relaygate":
                targets.add(name)
        graph[module] = targets
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The components of more than one module, or of one module importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                components.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


class ImportGraphTests(SynchronousTestCase):
    """The import graph read from the source."""

    def test_graph_sees_lazy_and_type_checking_imports(self) -> None:
        """Imports inside functions and under TYPE_CHECKING are edges of the graph."""
        graph = import_graph()
        # service.build_service imports the fronts inside the function.
        self.assertIn("relaygate.smtp.factory", graph["relaygate.service"])
        # tls.server names TLSConfig under TYPE_CHECKING only.
        self.assertIn("relaygate.config.tls", graph["relaygate.tls.server"])

    def test_cycle_finder_finds_a_cycle(self) -> None:
        """A two-module cycle and a self-import are reported; a chain is not."""
        graph = {"a": {"b"}, "b": {"a", "c"}, "c": set(), "d": {"d"}}
        self.assertEqual(sorted(sorted(c) for c in strongly_connected(graph)), [["a", "b"], ["d"]])

    def test_no_import_cycles(self) -> None:
        """No relaygate modules import each other in a circle, lazily or otherwise."""
        cycles = set(strongly_connected(import_graph()))
        self.assertEqual(sorted(sorted(c) for c in cycles - KNOWN_CYCLES), [])

    def test_known_cycles_still_exist(self) -> None:
        """Every allowed cycle is still there, so the allow-list cannot go stale."""
        cycles = set(strongly_connected(import_graph()))
        self.assertEqual(sorted(sorted(c) for c in KNOWN_CYCLES - cycles), [])

    def test_leaves_import_nothing_of_relaygate(self) -> None:
        """The leaf value modules import no relaygate module."""
        graph = import_graph()
        for leaf in LEAVES:
            self.assertEqual((leaf, graph[leaf]), (leaf, set()))

    def test_packages_init_holds_a_docstring_only(self) -> None:
        """Each package's __init__ is a docstring and nothing else."""
        for module, path in module_files().items():
            if path.name != "__init__.py":
                continue
            body = ast.parse(path.read_text()).body
            self.assertEqual((module, [type(node).__name__ for node in body]), (module, ["Expr"]))


class ModuleSizeTests(SynchronousTestCase):
    """Every module stays small enough to read in one sitting."""

    def test_no_module_over_the_limit(self) -> None:
        """No relaygate module has more than MAX_LINES lines."""
        oversize = sorted(
            (module, len(path.read_text().splitlines()))
            for module, path in module_files().items()
            if module not in KNOWN_OVERSIZE and len(path.read_text().splitlines()) > MAX_LINES
        )
        self.assertEqual(oversize, [])

    def test_known_oversize_modules_exist(self) -> None:
        """Every allowed oversize module still exists, so the allow-list cannot go stale."""
        self.assertEqual(sorted(KNOWN_OVERSIZE - set(module_files())), [])

    def test_known_oversize_modules_are_oversize(self) -> None:
        """Every allowed oversize module is still over the limit, so the allow-list stays small."""
        files = module_files()
        small = sorted(
            module
            for module in KNOWN_OVERSIZE & set(files)
            if len(files[module].read_text().splitlines()) <= MAX_LINES
        )
        self.assertEqual(small, [])


class NameTests(SynchronousTestCase):
    """Each public name means one thing: one module defines it, one module decodes SASL."""

    def test_finder_sees_classes_and_functions(self) -> None:
        """Classes, functions and coroutine functions count; private names do not."""
        defined = public_definitions(module_files())
        self.assertEqual(defined["SMTPFront"], ["relaygate.smtp.front"])
        self.assertEqual(defined["connect_with_failover"], ["relaygate.backend.connect"])
        self.assertNotIn("_plain", defined)

    def test_no_public_name_defined_twice(self) -> None:
        """No public class or function name is defined at top level in two relaygate modules."""
        twice = sorted(
            (name, modules)
            for name, modules in public_definitions(module_files()).items()
            if len(modules) > 1 and name not in SHARED_NAMES
        )
        self.assertEqual(twice, [])

    def test_shared_names_still_shared(self) -> None:
        """Every allowed shared name is still defined twice, so the allow-list cannot go stale."""
        defined = public_definitions(module_files())
        self.assertEqual(sorted(n for n in SHARED_NAMES if len(defined.get(n, [])) < 2), [])

    def test_base64_in_sasl_only(self) -> None:
        """Only the allowed modules import base64 or binascii: SASL is decoded in one place."""
        self.assertEqual(sorted(base64_importers(module_files()) - BASE64_USERS), [])

    def test_base64_users_still_use_it(self) -> None:
        """Every allowed module still imports base64, so the allow-list cannot go stale."""
        self.assertEqual(sorted(BASE64_USERS - base64_importers(module_files())), [])

    def test_base64_finder_sees_every_import_form(self) -> None:
        """C{import base64}, C{from binascii import ...} and lazy imports all count."""
        directory = Path(self.mktemp())
        directory.mkdir()
        sources = {
            "plain": "import base64\n",
            "from_import": "from binascii import a2b_base64\n",
            "lazy": "def f() -> None:\n    import base64 as b\n",
            "other": "import base64url_unrelated\nimport hashlib\n",
        }
        files = {}
        for name, source in sources.items():
            files[name] = directory / f"{name}.py"
            files[name].write_text(source)
        self.assertEqual(base64_importers(files), {"plain", "from_import", "lazy"})
