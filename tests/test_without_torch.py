"""The command line and packer's Python API work without torch; ``packer.torch`` says which extra to install.

Each case runs in a fresh interpreter in which ``import torch`` fails, as on a machine where only
``pip install packer-llm`` ran (torch is the ``torch`` extra).
"""
import subprocess
import sys

from tests.conftest import REPO

NO_TORCH = "import sys; sys.modules['torch'] = None\n"  # `import torch` then raises ImportError


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH + code], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def test_every_command_runs_without_torch(tmp_path, samples_dir):
    out = tmp_path / "packed"
    commands = [["pack", str(samples_dir), "-o", str(out), "-q"], ["stats", str(out)],
                ["verify", str(out), "--input", str(samples_dir)], ["report", str(out)]]
    code = "from packer.cli import main\n" + "".join(
        f"assert main({argv!r}) == 0, {argv!r}\n" for argv in commands
    ) + "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
    r = run_without_torch(code)
    assert r.returncode == 0, r.stderr


def test_packer_torch_without_torch_names_the_extra():
    r = run_without_torch("import packer\ntry:\n    import packer.torch\nexcept ImportError as e:\n    print(e)\n")
    assert r.returncode == 0, r.stderr
    assert "pip install 'packer-llm[torch]'" in r.stdout


def test_public_api_from_the_top_level_loads_lazily():
    r = run_without_torch(
        "import packer\n"
        "assert 'packer.convert' not in sys.modules and 'pyarrow' not in sys.modules\n"
        "for name in packer.__all__:\n"
        "    assert getattr(packer, name) is not None, name\n"
        "from packer import pack_dataset, PackConfig, Columns, verify_packed, PackedReader\n"
        "from packer.convert import pack_dataset as direct\n"
        "assert pack_dataset is direct\n"
        "try:\n    packer.nope\nexcept AttributeError as e:\n    print(e)\n"
    )
    assert r.returncode == 0, r.stderr
    assert "has no attribute 'nope'" in r.stdout


def test_packing_with_worker_processes_leaves_the_process_as_it_was(tmp_path, samples_dir):
    """No process-wide setting changes: the forkserver's preload list and the picklers' reducers stay as they were
    (torch, numpy and numba register their own on import: they are imported before the baseline)."""
    r = subprocess.run([sys.executable, "-c", (
        "import multiprocessing.forkserver as fs, copyreg, sys\n"
        "import numpy, numba, pyarrow, torch, torch.utils.data  # their own registrations, made before the baseline\n"
        "from multiprocessing.reduction import ForkingPickler\n"
        "before = (list(fs._forkserver._preload_modules), dict(ForkingPickler._extra_reducers), "
        "dict(copyreg.dispatch_table))\n"
        "from packer.convert import pack_dataset\n"
        "import packer.torch\n"
        f"pack_dataset({str(samples_dir)!r}, {str(tmp_path / 'out')!r}, workers=2, progress=False)\n"
        "after = (list(fs._forkserver._preload_modules), dict(ForkingPickler._extra_reducers), "
        "dict(copyreg.dispatch_table))\n"
        "assert before == after, (before, after)\n")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
