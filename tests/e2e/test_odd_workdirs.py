"""Workdirs that are not what a command expects: read-only (an archive of results), a file,
a folder that is no workdir, a path that does not exist. Readers work where they can; writers
refuse in one line and leave nothing behind."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import last_json, run_cli

from inference.errors import WorkdirError
from inference.workdir import Workdir


def one_line(proc: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


@pytest.fixture
def read_only_run(demo_run, tmp_path):
    """A copy of the indexed demo run, bind-mounted read-only (needs root; skips otherwise):
    as root, file modes alone would not stop a write."""
    source = tmp_path / "archive"
    shutil.copytree(demo_run[0], source)
    mount = tmp_path / "ro"
    mount.mkdir()
    try:
        bound = subprocess.run(["mount", "--bind", str(source), str(mount)],
                               capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if bound.returncode:
        pytest.skip(f"cannot bind-mount here (needs root): {bound.stderr.strip()}")
    try:
        remounted = subprocess.run(["mount", "-o", "remount,ro,bind", str(mount)],
                                   capture_output=True, text=True)
        if remounted.returncode:
            pytest.skip(f"cannot make the mount read-only: {remounted.stderr.strip()}")
        probe = mount / ".probe"
        try:
            probe.touch()
            probe.unlink()
            pytest.skip("the read-only mount still takes writes")
        except OSError:
            pass
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_readers_work_on_a_read_only_workdir(read_only_run):
    proc = run_cli("search", "--workdir", str(read_only_run), "tree rings", "--json",
                   "--mode", "bm25")
    assert last_json(proc.stdout)["hits"], proc.stderr
    from qa_api.app import QAService
    from qa_api.config import QAConfig

    service = QAService(read_only_run, QAConfig())
    assert service.search("ice cores", top_k=3, screening_top_k=20, mode="hybrid")
    assert run_cli("status", "--workdir", str(read_only_run)).returncode == 0


@pytest.mark.parametrize("command", [["run", "--demo"], ["partition", "--demo"], ["index"]])
def test_writers_refuse_a_read_only_workdir_in_one_line(read_only_run, command):
    proc = run_cli(*command, "--workdir", str(read_only_run), check=False)
    one_line(proc, 2, f"workdir {read_only_run} is read-only")


@pytest.mark.parametrize("command", [["partition", "--demo"], ["run", "--demo"], ["index"]])
def test_a_workdir_that_is_a_file_is_one_line(tmp_path, command):
    path = tmp_path / "notes.md"
    path.write_text("not a workdir\n")
    proc = run_cli(*command, "--workdir", str(path), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert path.read_text() == "not a workdir\n"
    below = run_cli(*command, "--workdir", str(path / "run"), check=False)
    one_line(below, 2)


def test_the_lock_refuses_a_file_and_a_path_through_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(WorkdirError, match="is a file, not a folder"), Workdir(path).lock():
        pass
    with pytest.raises(WorkdirError, match="a part of its path is a file"), \
            Workdir(path / "w").lock():
        pass


def test_index_leaves_a_folder_that_is_no_workdir_untouched(tmp_path):
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "hosts").write_text("127.0.0.1 localhost\n")
    proc = run_cli("index", "--workdir", str(folder), check=False)
    one_line(proc, 2, "has no manifest.json")
    assert sorted(p.name for p in folder.iterdir()) == ["hosts"]  # no .lock, no index/
    missing = tmp_path / "no" / "such" / "run"
    one_line(run_cli("index", "--workdir", str(missing), check=False), 2, "has no manifest.json")
    assert not (tmp_path / "no").exists()


def test_a_read_only_tantivy_folder_opens_through_links(tmp_path, demo_run):
    """The unit under the read-only readers: tantivy's lock file refused, the index opens
    through a temporary folder of links (made here by a folder whose lock file is a folder,
    which no one can open for writing, root included)."""
    from retrieval.embedded import EmbeddedIndex

    workdir = tmp_path / "w"
    shutil.copytree(demo_run[0], workdir)
    for tantivy in (workdir / "index").glob("embedded-*/tantivy"):
        (tantivy / ".tantivy-meta.lock").unlink(missing_ok=True)
        (tantivy / ".tantivy-meta.lock").mkdir()
    index = EmbeddedIndex(Workdir(workdir))
    assert index.bm25("climate", 3)
    assert Path(index._links.name).is_dir()
