"""Python 3.14 owns the import name `compression` (PEP 784): the project must import as `complab` with a stand-in
standard-library `compression` package ahead of it on the path and setuptools' editable finder out of the way."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "compression"  # the design card's folder: the source folder of the complab package

PROBE = textwrap.dedent("""
    import sys
    # what a regular install (a wheel) looks like: no editable finder; the stdlib's directory comes first
    sys.meta_path = [finder for finder in sys.meta_path
                     if "editable" not in type(finder).__module__ and "editable" not in repr(finder)]
    sys.path[:] = [sys.argv[1], sys.argv[2]] + [p for p in sys.path if p not in ("", sys.argv[2])]
    import compression, compression.zstd  # the standard library's package on 3.14 (here a stand-in)
    assert compression.STANDIN and compression.__file__.startswith(sys.argv[1]), compression.__file__
    import complab, complab.cli
    from complab.plan import Plan
    from complab.storage import inspect_header
    assert complab.__version__, "complab/__init__.py ran"
    assert complab.__file__.startswith(sys.argv[2]), complab.__file__
    from complab.paths import ASSETS
    plan = Plan.from_json((ASSETS / "recipes" / "quick.json").read_text())  # assets found from the package
    try:
        complab.cli.main(["--help"])
    except SystemExit as exit:
        assert exit.code == 0
    print("ok", type(plan).__name__)
""")


def test_imports_beside_a_standard_library_compression_package(tmp_path):
    standin = tmp_path / "stdlib" / "compression"
    standin.mkdir(parents=True)
    (standin / "__init__.py").write_text("STANDIN = True\n")
    (standin / "zstd.py").write_text("def compress(data):\n    return data\n")
    done = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "stdlib"), str(SOURCE)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok Plan")
    assert "usage: complab" in done.stdout


def test_no_top_level_compression_package_remains():
    """The source folder holds only the complab package: nothing shadows the standard library's `compression`."""
    assert not (SOURCE / "__init__.py").exists()
    assert (SOURCE / "complab" / "__init__.py").is_file()
    packages = {path.name for path in SOURCE.iterdir()
                if path.is_dir() and any(path.rglob("*.py")) and not path.name.endswith(".egg-info")}
    assert packages == {"complab"}, packages
    assert not list(SOURCE.glob("*.py")), "no module at the source folder's top level"
