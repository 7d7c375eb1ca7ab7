"""Another revision of the gateway, for before/after runs: `git archive <rev>` unpacked into a temporary directory.

    with exported_tree("a8bbcab") as tree:   # tree / "gateway" is that revision's package
        servers.start_gateway(config, log_dir, tree=tree, name="gateway@a8bbcab")

`git archive` reads the object database only: no worktree is registered and nothing in this checkout (its
index, branch or stash) changes. The exported tree runs with this interpreter's environment
(`python -m gateway` with the tree as its working directory, so its `gateway` package shadows the installed
one); a revision whose setup.cfg needs other dependencies is not supported.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bench.servers import REPO, BenchError


def resolve(rev: str) -> str:
    """The short commit id `rev` names in this repository; BenchError if it names none."""
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "--verify", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"--compare {rev}: not a commit here ({done.stderr.strip()})")
    return done.stdout.strip()


@contextlib.contextmanager
def exported_tree(rev: str) -> Iterator[Path]:
    """`rev`'s files in a temporary directory, removed on exit."""
    commit = resolve(rev)
    argv = ["git", "-C", str(REPO), "archive", "--format=tar", commit]
    archive = subprocess.run(argv, capture_output=True, check=False)
    if archive.returncode != 0:
        raise BenchError(f"git archive {commit} failed: {archive.stderr.decode(errors='replace').strip()}")
    root = Path(tempfile.mkdtemp(prefix=f"gw-bench-{commit}-"))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(root, filter="data")
        if not (root / "gateway" / "__main__.py").exists():
            raise BenchError(f"{commit} has no gateway/__main__.py: `python -m gateway` cannot run it")
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
