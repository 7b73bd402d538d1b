"""Prefect flows on top of dvc.yaml's DAG: schedules, retries, logs and artifacts; the stages stay in components/."""
