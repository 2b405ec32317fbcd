"""The commit a run records: the checkout's HEAD, '-dirty' with changes, and a warning when a checkout's commit
cannot be read (the run then records 'unknown')."""

import logging
import subprocess
from pathlib import Path

from slate_rl.tracking.runs import git_commit


def _git(repo: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args]
    return subprocess.run(command, cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def _repo_with_a_commit(repo: Path) -> str:
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("one\n")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-q", "-m", "first")
    return _git(repo, "rev-parse", "HEAD")


def test_a_checkout_records_its_head_and_whether_tracked_files_changed(tmp_path):
    head = _repo_with_a_commit(tmp_path / "repo")
    assert git_commit(tmp_path / "repo") == head
    (tmp_path / "repo" / "a.txt").write_text("two\n")
    assert git_commit(tmp_path / "repo") == head + "-dirty"


def test_a_worktree_whose_repository_moved_records_unknown_and_says_how_to_repair_it(tmp_path, caplog):
    _repo_with_a_commit(tmp_path / "repo")
    _git(tmp_path / "repo", "worktree", "add", "-q", "--detach", str(tmp_path / "wt"))
    assert len(git_commit(tmp_path / "wt")) == 40
    (tmp_path / "repo").rename(tmp_path / "moved")  # the worktree's .git file now points nowhere
    with caplog.at_level(logging.WARNING, logger="slate_rl"):
        assert git_commit(tmp_path / "wt") == "unknown"
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "git_commit=unknown" in message and "git worktree repair" in message and str(tmp_path / "wt") in message


def test_an_installed_package_without_git_records_unknown_quietly(tmp_path, caplog):
    (tmp_path / "site-packages").mkdir()
    with caplog.at_level(logging.WARNING, logger="slate_rl"):
        assert git_commit(tmp_path / "site-packages") == "unknown"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
