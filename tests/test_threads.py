"""glass_export.threads: MKL single-threaded off PyTorch's own threads, PyTorch's thread count unchanged.

Each check runs in a fresh interpreter, since the settings only take effect before torch is imported.
The ExecuTorch side (no OpenMP team started by a prefill) is in test_executorch_export.py.
"""

import os
import subprocess
import sys

import pytest


def run_python(code: str, **env: str) -> list[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("MKL_NUM_THREADS", "OMP_NUM_THREADS")}
    result = subprocess.run([sys.executable, "-c", code], env={**environment, **env}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


# MKL's thread count as seen from a thread PyTorch never touched (as ExecuTorch's pool threads are)
MKL_ON_A_NEW_THREAD = """
import ctypes, os, threading, torch
lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
seen = []
if hasattr(lib, "MKL_Get_Max_Threads"):
    worker = threading.Thread(target=lambda: seen.append(lib.MKL_Get_Max_Threads()))
    worker.start(); worker.join()
print(seen[0] if seen else "no-mkl")
"""


def test_mkl_is_single_threaded_off_torchs_threads_and_torch_keeps_its_count():
    plain_torch_threads, plain_mkl = run_python("import torch\nprint(torch.get_num_threads())\n" + MKL_ON_A_NEW_THREAD)
    env, threads, mkl = run_python("import glass_export, os, torch\n"
                                   "print(os.environ['MKL_NUM_THREADS'], torch.get_num_threads())\n" + MKL_ON_A_NEW_THREAD)
    assert env == "1"
    assert threads == plain_torch_threads  # PyTorch's default intra-op count, not MKL_NUM_THREADS's 1
    if plain_mkl == "no-mkl":
        pytest.skip("this PyTorch build has no MKL: nothing to keep off ExecuTorch's threads")
    assert mkl == "1"
    if (os.cpu_count() or 1) > 1:
        assert int(plain_mkl) > 1  # the default that made MKL start an OpenMP team per call


def test_the_users_settings_win():
    assert run_python("import glass_export, os\nprint(os.environ['MKL_NUM_THREADS'])", MKL_NUM_THREADS="3") == ["3"]
    assert run_python("import glass_export, torch\nprint(torch.get_num_threads())", OMP_NUM_THREADS="1") == ["1"]
    # torch first: too late to change MKL, so nothing is changed
    assert run_python("import torch, glass_export, os\nprint(os.environ.get('MKL_NUM_THREADS', 'unset'))") == ["unset"]
