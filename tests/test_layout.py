"""The tree's structure: imports run down the layers only, and no list of sampler, dataset or SDE names lives
outside cldsgm/catalog.py (the one source of names)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from cldsgm import catalog

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "cldsgm"

# lowest first: a module may import its own layer and those below, never one above
LAYERS = [
    ["cldsgm", "cldsgm.utils", "cldsgm.catalog", "cldsgm.claims"],
    ["cldsgm.config", "cldsgm.sde"],
    ["cldsgm.records", "cldsgm.oracles", "cldsgm.models", "cldsgm.losses", "cldsgm.samplers", "cldsgm.data",
     "cldsgm.shards", "cldsgm.tracking"],
    ["cldsgm.training"],
    ["cldsgm.sources", "cldsgm.sampling", "cldsgm.conditional", "cldsgm.eval", "cldsgm.bench"],
    ["cldsgm.study", "cldsgm.report"],
    ["cldsgm.cli", "cldsgm.__main__"],
]


def _layer(module: str) -> int:
    best = None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(best[1])):
                best = (i, name)
    assert best is not None, f"{module} is in no layer of tests/test_layout.py"
    return best[0]


def _module_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> set[str]:
    """Every cldsgm module `path` imports, at the top or inside a function (lazy imports count)."""
    out = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("cldsgm")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base
                                                                                                  else []))
            if base.startswith("cldsgm"):
                out.add(base)
    return out


def test_imports_run_down_the_layers_only():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_of(path)
        for imported in _imports(path, module):
            if _layer(imported) > _layer(module):
                upward.append(f"{module} (layer {_layer(module)}) imports {imported} (layer {_layer(imported)})")
    assert not upward, "\n".join(upward)


def test_the_layer_check_catches_an_upward_import(tmp_path):
    probe = PACKAGE / "sde" / "probe.py"  # what a careless edit would add: the process maths importing sampling
    tree = ast.parse("from cldsgm.sampling import sample_to_dir\n")
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert _layer(_module_of(probe)) < max(_layer(m) for m in imported)


NAME_SETS = {"sampler": set(catalog.SAMPLERS), "dataset": set(catalog.DATASETS), "SDE": set(catalog.SDES),
             "mask kind": set(catalog.MASK_KINDS), "checkpoint format": set(catalog.CHECKPOINT_FORMATS),
             "speedup": set(catalog.NETWORK_SPEEDUPS)}
_GROUP = re.compile(r"[\[\(\{]([^\[\]\(\)\{\}]*)[\]\)\}]")
_QUOTED = re.compile(r"""["']([a-z_0-9]+)["']|(?<=[\[,\s])([a-z_0-9]+)(?=[,\]])""")


def _name_lists(text: str) -> list[str]:
    """Bracketed groups holding 2 or more names of one kind (a hand-kept enumeration of samplers, datasets, SDEs,
    masks, checkpoint formats or speedups)."""
    found = []
    text = re.sub(r"__all__\s*=\s*\[[^\]]*\]", "", text)  # a module's exported function names are not a list
    for group in _GROUP.findall(text):
        words = {a or b for a, b in _QUOTED.findall(f"[{group}]")}
        for kind, names in NAME_SETS.items():
            if len(words & names) >= 2:
                found.append(f"{kind}s {sorted(words & names)} in ({group.strip()[:80]})")
    return found


def test_no_list_of_names_outside_the_catalog():
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "workflow").rglob("*.smk"), *(ROOT / "workflow").rglob("*.yaml"),
             ROOT / "Snakefile", *(ROOT / "benchmarks").glob("*.py")]
    lists = {str(p.relative_to(ROOT)): _name_lists(p.read_text()) for p in files if p.name != "catalog.py"}
    assert not {k: v for k, v in lists.items() if v}


def test_the_name_list_check_sees_a_list():
    assert _name_lists('SAMPLERS = ("em", "sscs", "ode")') and _name_lists("enum: [vpsde, cld, psld]")
    assert _name_lists('INPAINT = ("em", "sscs")') and _name_lists("masks: [center, half]")
    assert not _name_lists('raise ValueError(f"sampler {name!r} needs cld or psld")')


# history belongs in git log: no issue tags (a bracketed k/n) in the product; and a clone holds everything it cites
_TAG = re.compile(r"\[\d{1,2}/\d{1,2}\]")
_OUTSIDE = re.compile(r"\b(cld_spec|psld_spec|integrators_spec|statistics_notes|ecosystem|slurm_local|aesthetics)\.md"
                      r"|ARCHITECTURE\.md|\.\./shared/")
_PRODUCT = ("src", "workflow", "params", "tests", "benchmarks", "docs", "scripts", ".ci", "profiles")
_PRODUCT_FILES = ("README.md", "CHANGELOG.md", "Snakefile", "pyproject.toml", "dvc.yaml")


def _product_texts():
    for folder in _PRODUCT:
        for path in sorted((ROOT / folder).rglob("*")):
            if (path.is_file() and "results" not in path.parts and ".egg-info" not in str(path)
                    and path.suffix in {".py", ".md", ".yaml", ".yml", ".smk", ".toml", ".txt", ".html", ".j2", ""}):
                yield path
    for name in _PRODUCT_FILES:
        if (ROOT / name).is_file():
            yield ROOT / name


def _offending(pattern):
    found = []
    for path in _product_texts():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if pattern.search(line) and path.name != "test_layout.py":
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    return found


def test_no_issue_tags_in_the_product():
    assert not _offending(_TAG)


def test_no_reference_to_files_outside_the_repository():
    assert not _offending(_OUTSIDE)


def test_the_tag_check_sees_a_tag():
    assert _TAG.search(f"the default until [{15}/{18}]") and not _TAG.search("x[0, 1], u[:, 2] and [a/b]")


def test_no_two_modules_import_each_other():
    """No import cycle between modules, lazy imports included (a circle hides which module is the lower one)."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_of(path)
        graph[module] = {m for m in _imports(path, module) if m != module and m != "cldsgm"}

    def reaches(start, target, seen):
        for nxt in graph.get(start, ()):
            if nxt == target or (nxt not in seen and (seen.add(nxt) or reaches(nxt, target, seen))):
                return True
        return False

    cycles = sorted(f"{a} <-> {b}" for a, deps in graph.items() for b in deps
                    if b in graph and a < b and a in graph[b])
    assert not cycles, cycles
    assert not [m for m in graph if reaches(m, m, set())], "an import cycle through three or more modules"


def _named_in_code(text: str) -> set[str]:
    """Dataset, sampler and verb names quoted in the code of a .smk text (not in comments, docstrings, the keys of the
    study and the job table, a record's row name or a set's kind)."""
    from cldsgm.cli import main

    verbs = {*main.commands, *(c.replace("-", "_") for c in main.commands)} - {"train", "test"}  # splits' names
    names = {*catalog.DATASETS, *catalog.SAMPLERS, *verbs}
    code = "\n".join(line.split("#")[0] for line in text.splitlines())
    code = re.sub(r'""".*?"""', "", code, flags=re.S)
    code = re.sub(r"""(row=|\["kind"\] [!=]= )["'][a-z_]+["']""", "", code)
    code = re.sub(r"""(\[|\.get\()\s*["'][a-z_]+["']""", "", code)
    return set(re.findall(r"""["']([a-z][a-z0-9_-]*)["']""", code)) & names


def test_the_workflow_helpers_name_no_dataset_sampler_or_verb():
    """workflow/rules/common.smk only formats paths and flags: what a study means (which verb scores which data,
    against which reference) is decided in cldsgm.study."""
    assert not _named_in_code((ROOT / "workflow/rules/common.smk").read_text())
    assert _named_in_code('if data == "digits":\n    return "fd-digits"') == {"digits", "fd-digits"}
