"""The code's shape, as docs/architecture.md promises it: small modules that say what they are for, SQL
only in the store package, docker only in hostd's runtime."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("broker", "hostd", "common", "keys")


def _modules():
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def test_no_module_over_400_lines_no_class_over_300_and_each_says_what_it_is_for():
    big, undocumented = [], []
    for path in _modules():
        text = path.read_text()
        tree = ast.parse(text)
        if text.count("\n") > 400:
            big.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        big += [f"{path.relative_to(ROOT)}: class {n.name} {n.end_lineno - n.lineno + 1} lines"
                for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.end_lineno - n.lineno >= 300]
        if path.name != "__init__.py" and not ast.get_docstring(tree):
            undocumented.append(str(path.relative_to(ROOT)))
    assert big == [] and undocumented == []


def test_sql_lives_in_the_store_package_only():
    sql = re.compile(r"\b(SELECT\s+\S+\s+FROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM)\b")
    found = [str(p.relative_to(ROOT)) for p in _modules() if sql.search(p.read_text())
             and "broker/store/" not in p.as_posix()]
    assert found == []


def test_only_hostds_runtime_imports_docker():
    found = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            if any(n == "docker" or n.startswith("docker.") for n in names) and not path.name.startswith("runtime"):
                found.append(str(path.relative_to(ROOT)))
    assert found == ["hostd/doctor.py"]  # doctor asks the engine directly, on the provider's command
