"""Reading finished runs back from the tracking store (for `compare` and `pipeline`)."""

from __future__ import annotations

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from slate_rl.errors import SlateRLError
from slate_rl.tracking.runs import active_experiment_ids


def search_finished_runs(stage: str, filter_string: str = "", experiment_names: list[str] | None = None) -> list[Run]:
    """All FINISHED runs of `stage` (newest first) in the given experiments (default: all), with an optional extra
    MLflow filter such as "params.lambda_kl = '1.0'"."""
    client = MlflowClient()
    if experiment_names:
        experiments = []
        for name in experiment_names:
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise SlateRLError(f"no MLflow experiment named {name!r}")
            experiments.append(experiment.experiment_id)
    else:
        experiments = active_experiment_ids(client)
    if not experiments:
        return []
    query = f"tags.stage = '{stage}' and attributes.status = 'FINISHED'"
    if filter_string.strip():
        query += f" and {filter_string.strip()}"
    runs: list[Run] = []
    token = None
    while True:
        try:
            page = client.search_runs(
                experiments, query, order_by=["attributes.start_time DESC"], max_results=1000, page_token=token
            )
        except Exception as exc:  # MLflow raises on a malformed filter
            raise SlateRLError(f"the MLflow filter {filter_string!r} is not valid: {exc}") from exc
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def metric_curve(run_id: str, key: str) -> list[tuple[int, float]]:
    """The (step, value) history of one metric of a run."""
    return [(m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key)]
