"""The end of a stage's run: its final status is written even when the store fails for a moment."""

from __future__ import annotations

import time

import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy.exc import OperationalError

from slate_rl.tracking.runs import stage_run


def test_an_interrupted_stage_is_marked_killed_though_the_store_fails_for_a_moment(tracking_store, monkeypatch):
    failures = []
    original = MlflowClient.set_terminated

    def locked_once(self, run_id, status=None, end_time=None):
        if not failures:
            failures.append(status)
            raise OperationalError("UPDATE runs SET status=?", {}, Exception("database is locked"))
        original(self, run_id, status, end_time)

    monkeypatch.setattr(MlflowClient, "set_terminated", locked_once)
    with pytest.raises(KeyboardInterrupt), stage_run("stress", run_name="interrupted") as run:
        raise KeyboardInterrupt
    assert failures == ["KILLED"] and MlflowClient().get_run(run.run_id).info.status == "KILLED"

    def always_locked(self, run_id, status=None, end_time=None):
        raise OperationalError("UPDATE runs SET status=?", {}, Exception("database is locked"))

    monkeypatch.setattr(MlflowClient, "set_terminated", always_locked)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    with pytest.raises(OperationalError), stage_run("stress", run_name="store gone"):
        pass  # a store that stays away: the error is not hidden
