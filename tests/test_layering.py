"""The architecture, checked: one distributed boundary, math and data free of the config and of
training, no import cycle, small functions, ruff-clean code, and console scripts."""

import ast
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, ROOT

PACKAGE = ROOT / "lfbm_dist"
FRAMEWORKS = ("accelerate", "deepspeed", "torch.distributed")
ENGINE_PACKAGE = "lfbm_dist/training/engine/"
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path) -> list[str]:
    """Absolute names of everything `module` imports, at any depth (function-level imports too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names += [prefix] + [f"{prefix}.{a.name}" for a in node.names]
    return names


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_the_engine_talks_to_distributed_frameworks(module):
    rel = MODULES[module].relative_to(ROOT).as_posix()
    for name in _imports(module, MODULES[module]):
        if name.startswith(FRAMEWORKS):
            assert rel.startswith(ENGINE_PACKAGE), f"{rel} imports {name}"
        if name.startswith("submitit"):
            assert rel.startswith("lfbm_dist/slurm/"), f"{rel} imports {name}"


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if m.split(".")[1:2] in (["data"], ["models"], ["inference"], ["metrics"]))
)
def test_math_data_and_metrics_import_no_config_and_no_training(module):
    for name in _imports(module, MODULES[module]):
        assert not name.startswith(("lfbm_dist.config", "lfbm_dist.training", "lfbm_dist.evaluate")), (
            f"{module} imports {name}"
        )


def test_no_import_cycle():
    graph = {m: {n for n in (_owner(i) for i in _imports(m, p)) if n and n != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(n) :], n]))
            if n not in state:
                visit(n, [*stack, n])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def _owner(name: str) -> str | None:
    """The package module an imported name belongs to (`lfbm_dist.data.plan.Layout` -> `lfbm_dist.data.plan`)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def test_functions_stay_small():
    long = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "data_tools").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long


SEAM = ("lfbm_dist/private_apis.py", ENGINE_PACKAGE)  # the only places that may touch library internals
LIBRARIES = ("torch", "deepspeed", "accelerate")


def test_library_internals_only_behind_the_seam():
    """No private module of torch, DeepSpeed or Accelerate is imported, and no private attribute is
    read off anything but the module's own objects (self, cls, its classes), outside the seam."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(SEAM):
            continue
        tree = ast.parse(path.read_text())
        own_names = {n.name for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0):
                names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                for name in filter(None, names):
                    parts = name.split(".")
                    if parts[0] in LIBRARIES and any(p.startswith("_") for p in parts[1:]):
                        found.append(f"{rel}:{node.lineno} imports {name}")
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = node.value.id if isinstance(node.value, ast.Name) else None
                if owner not in ("self", "cls", "os") and owner not in own_names:
                    found.append(f"{rel}:{node.lineno} reads {ast.unparse(node)}")
    assert not found, found


def test_ruff_lint_and_format():
    ruff = shutil.which("ruff", path=str(Path(PYTHON).parent)) or shutil.which("ruff")
    assert ruff, "ruff is installed by scripts/setup.sh (test extra)"
    for args in (["check", "."], ["format", "--check", "."]):
        proc = subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]


@pytest.mark.parametrize(
    "script", ["lfbm-train", "lfbm-evaluate", "lfbm-sample", "lfbm-export", "lfbm-shards", "lfbm-slurm", "lfbm-repro"]
)
def test_console_scripts_are_installed_and_answer_help(script):
    exe = Path(PYTHON).parent / script
    assert exe.is_file(), f"{exe} missing: pip install -e . gives the console scripts"
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.slow
def test_a_cluster_install_without_the_demo_extra_trains_from_shards(tmp_path):
    """scikit-image and mlxtend come with the `demo` extra only: training and evaluating from shards
    must not import them (an import hook makes any attempt fail, as on a cluster install)."""
    from shard_helpers import write_shards

    write_shards(tmp_path / "s", [16, 16], size=16)
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoDemo:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('skimage', 'mlxtend'):\n"
        "            raise ImportError(f'{name} is not installed (no demo extra)')\n"
        "sys.meta_path.insert(0, _NoDemo())\n"
    )
    from launch import module

    blocked_demo = {"cold": True, "timeout": 300, "PYTHONPATH": str(blocker)}  # sitecustomize runs at start-up
    run_dir = tmp_path / "r"
    common = [
        "--config",
        "configs/test_tiny.yaml",
        "data.source=shards",
        "data.resolution=16",
        f"data.shards={tmp_path}/s/train-{{000000..000001}}.tar",
    ]
    proc = module("lfbm_dist.train", *common, f"train.run_dir={run_dir}", **blocked_demo)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recon = ["--run", str(run_dir), "--metrics", "recon", "eval.recon_samples=8", "langevin.test_num_steps=2"]
    proc = module("lfbm_dist.evaluate", *recon, **blocked_demo)
    assert proc.returncode == 0, proc.stderr[-3000:]
    blocked = module(
        "lfbm_dist.train", "--config", "configs/quickstart.yaml", f"train.run_dir={tmp_path / 'q'}", **blocked_demo
    )
    assert blocked.returncode == 2  # the packaged MNIST needs the extra: one line says so
    assert "pip install 'lfbm_dist[demo]'" in blocked.stderr.strip().splitlines()[-1]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of a directed graph, or None."""
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return [*stack[stack.index(n) :], n]
            if n not in state and (found := visit(n, [*stack, n])):
                return found
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m, [m])):
            return found
    return None


def _unit(module: str) -> str:
    """A module's top-level unit: its subpackage (lfbm_dist.data) or top-level module (lfbm_dist.cli)."""
    return ".".join(module.split(".")[:2])


def test_no_import_cycle_between_packages_counting_imports_inside_functions():
    """A lazy import inside a function closes a cycle just as well as one at the top (it only hides
    it from Python's import machinery): between the subpackages and top-level modules there is none."""
    graph: dict[str, set[str]] = {}
    for m, p in MODULES.items():
        for owner in filter(None, (_owner(i) for i in _imports(m, p))):
            if _unit(owner) != _unit(m):
                graph.setdefault(_unit(m), set()).add(_unit(owner))
    cycle = _cycle(graph)
    assert cycle is None, "package import cycle: " + " -> ".join(cycle)


def _layout_block() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Layout")
    return readme[readme.index("```", start) + 3 : readme.index("```", readme.index("```", start) + 3)]


def test_readmes_layout_names_every_module_where_it_lives():
    """README's layout block lists every module of the package under its own folder's line(s)."""
    import re

    named: set[str] = set()
    folder = ""
    for line in _layout_block().splitlines():
        if not line.startswith("  ") or line.startswith(("data_tools", "benchmarks", "configs")):
            continue
        head = re.match(r"^  ([a-z_]+/(?:[a-z_]+/)?)\s", line)
        if head:
            folder = head.group(1)
        elif re.match(r"^  [a-z_]+\.py", line):
            folder = ""  # a line of top-level modules
        named |= {folder + name for name in re.findall(r"([A-Za-z_]+\.py)", line)}
    modules = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    assert not modules - named, f"README's layout does not name: {sorted(modules - named)}"


CHECKPOINT_LITERALS = ('"trainer_state.json"', "'trainer_state.json'", "data_state_rank", '"images_seen"',
                       '"virtual_streams"', '"manifest.json"')  # fmt: skip


def test_a_checkpoints_files_and_keys_are_named_only_in_the_schema():
    """state_schema.py names every file of a checkpoint and the keys read from its JSON files: no other
    module, benchmark or test spells them; the trainer's state holds exactly its TRAINER_KEYS."""
    from lfbm_dist import state_schema as schema
    from lfbm_dist.training.trainer import TrainerState

    found = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "tests").glob("*.py")]:
        if path.name in ("state_schema.py", "test_layering.py"):
            continue
        text = path.read_text()
        found += [f"{path.relative_to(ROOT)}: {w}" for w in CHECKPOINT_LITERALS if w in text]
    assert not found, found
    assert set(vars(TrainerState())) == set(schema.TRAINER_KEYS)


def test_no_test_replaces_a_function_or_attribute_of_the_product():
    """Tests use the product's seams (training/hooks.py, constructor and function arguments): no
    monkeypatch.setattr, setattr or attribute assignment on lfbm_dist's modules, classes or objects —
    nor on the libraries the product calls (torch.distributed counted through torch's profiler)."""
    found = []
    for path in (ROOT / "tests").glob("*.py"):
        tree = ast.parse(path.read_text())
        ours = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                and (n.module or "").startswith("lfbm_dist") for a in n.names}  # fmt: skip
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name)):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
                if name == "setattr":
                    found.append(f"{path.name}:{node.lineno} {ast.unparse(node)[:80]}")
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AugAssign) else []  # fmt: skip
            for target in (e for t in targets for e in (t.elts if isinstance(t, ast.Tuple) else [t])):
                root = target
                while isinstance(root, ast.Attribute):
                    root = root.value
                if target is not root and isinstance(root, ast.Name) and root.id in ours:
                    found.append(f"{path.name}:{node.lineno} assigns {ast.unparse(target)}")
    assert not found, found
