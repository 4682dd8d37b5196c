"""The math packages stay framework-free: models/ and inference/ never import Accelerate,
DeepSpeed or torch.distributed (all wrapping happens in engine.py)."""
import ast
from pathlib import Path

import pytest

from conftest import ROOT

FORBIDDEN = ("accelerate", "deepspeed", "torch.distributed", "submitit")


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for package in ("models", "inference")
                                        for p in (ROOT / "lfbm_dist" / package).glob("*.py")))
def test_math_modules_import_no_distributed_frameworks(path):
    tree = ast.parse((ROOT / path).read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            assert not name.startswith(FORBIDDEN), f"{path} imports {name}"
