"""Every environment setting of the backend, typed, in one place (pydantic-settings).

Values come from the environment (upper-case field names, e.g. ``REDIS_URL``). Secrets are
``SecretStr`` so they never show up in logs or reprs.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore",
                                      protected_namespaces=("settings_",))

    label_studio_url: str = Field("http://127.0.0.1:8080", description=(
        "Base URL of Label Studio as seen from the backend. Default http://127.0.0.1:8080."))
    label_studio_api_key: SecretStr = Field(SecretStr(""), description=(
        "Label Studio API key (legacy token or personal access token). Default empty; never logged."))
    redis_url: str = Field("redis://127.0.0.1:6379/0", description=(
        "Redis for scores, state and the RQ queues. Default redis://127.0.0.1:6379/0."))
    redis_timeout_s: float = Field(2.0, description=(
        "Socket (connect) timeout for Redis in seconds, so a dead Redis gives a fast 503. Default 2."))
    model_name_or_path: str | None = Field(None, description=(
        "Local Hugging Face causal LM folder. Default None = SmolLM2-135M-Instruct (model.loading)."))
    model_dir: Path = Field(Path("var/adapters"), description=(
        "Root of the stored LoRA adapters, one folder per project and version. Default ./var/adapters."))
    device: str | None = Field(None, description=(
        "cpu / cuda / cuda:N. Default None = CUDA when present, else CPU."))
    basic_auth_user: str | None = Field(None, description=(
        "With BASIC_AUTH_PASS: require HTTP basic auth on every route. Default None (no auth)."))
    basic_auth_pass: SecretStr | None = Field(None, description="See BASIC_AUTH_USER. Default None.")
    webhook_secret: SecretStr | None = Field(None, description=(
        "When set, /webhook accepts (and requires, unless basic auth passes) an X-Webhook-Secret header "
        "with this value. Default None."))
    public_url: str | None = Field(None, description=(
        "The backend URL as Label Studio knows it (the ML backend connection URL). Used to pick this "
        "backend among several connected to a project and to find its webhook. Default None = the "
        "project's first ML backend."))
    model_class: str = Field("WeightedTaskDiversity", description=(
        "Name reported by /health as model_class. Default WeightedTaskDiversity."))
    score_queue: str = Field("wtd-score", description=(
        "RQ queue for connect, scoring, queue-writing and reconcile jobs. Default wtd-score."))
    train_queue: str = Field("wtd-train", description="RQ queue for training jobs. Default wtd-train.")
    score_chunk_size: int = Field(64, ge=1, description=(
        "Tasks per scoring job, so several workers share a big project. Default 64."))
    score_batch_size: int = Field(16, ge=1, description="Generation batch size while scoring. Default 16.")
    reconcile_interval_s: int = Field(300, ge=1, description=(
        "Seconds between reconcile passes that catch lost webhooks. Default 300."))
    score_job_timeout_s: int = Field(3600, ge=1, description="RQ timeout of a scoring job. Default 3600.")
    train_job_timeout_s: int = Field(6 * 3600, ge=1, description="RQ timeout of a training job. Default 21600.")
    job_result_ttl_s: int = Field(24 * 3600, ge=1, description=(
        "How long finished jobs (and their progress meta) stay visible in /metrics. Default 86400."))
    failure_ttl_s: int = Field(7 * 24 * 3600, ge=1, description=(
        "How long failed jobs stay in RQ's failed registry. Default 604800 (a week)."))
    worker_heartbeat_s: int = Field(10, ge=1, description=(
        "Seconds between a worker's heartbeats, idle or busy. A job whose worker missed 4 of them (killed, out "
        "of memory, host lost) is failed and its work enqueued again, and a dead worker's scheduler lock "
        "passes to a live worker after 4 of them. Default 10."))
    adapter_keep: int = Field(10, ge=1, description=(
        "Adapter versions kept per project, on disk and in Redis, besides the drafting adapter and those "
        "selecting a round; older ones are deleted after each training. Default 10."))
    adapter_redis_max_mb: int = Field(256, ge=0, description=(
        "Largest adapter (MB) copied into Redis, from which workers with their own MODEL_DIR fetch it; "
        "a training whose adapter is bigger fails. 0 = no copies: every worker and the server must "
        "then share MODEL_DIR. Default 256."))
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1, description=(
        "Largest request body accepted, in bytes; a larger one gets 413 before it is read. Default 10485760 "
        "(10 MB)."))
    predict_max_tasks: int = Field(16, ge=0, description=(
        "Most tasks one /predict call scores on the spot; the others get their stored draft or none yet (the "
        "scoring jobs write theirs). Default 16."))
    predict_max_prompt_chars: int = Field(16000, ge=1, description=(
        "Prompts longer than this are cut in the middle before /predict tokenizes them (scoring also cuts "
        "them to the model's context). Default 16000."))
    predict_max_waiting: int = Field(4, ge=1, description=(
        "Most /predict calls that need the model at once (one generates, the others wait); more get 503 "
        "with Retry-After. Default 4."))

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        if self.basic_auth_user and self.basic_auth_pass:
            return self.basic_auth_user, self.basic_auth_pass.get_secret_value()
        return None

    @property
    def queues(self) -> list[str]:
        return [self.score_queue, self.train_queue]


READ_BY = {
    "label_studio_url": "both", "label_studio_api_key": "both", "redis_url": "both", "redis_timeout_s": "both",
    "model_name_or_path": "both", "model_dir": "both", "device": "both", "basic_auth_user": "both",
    "basic_auth_pass": "both", "webhook_secret": "both", "public_url": "both", "model_class": "server",
    "score_queue": "both", "train_queue": "both", "score_chunk_size": "worker", "score_batch_size": "both",
    "reconcile_interval_s": "worker", "score_job_timeout_s": "both", "train_job_timeout_s": "both",
    "job_result_ttl_s": "both", "failure_ttl_s": "both", "worker_heartbeat_s": "worker",
    "adapter_keep": "worker", "adapter_redis_max_mb": "worker",
    "max_body_bytes": "server", "predict_max_tasks": "server", "predict_max_prompt_chars": "server",
    "predict_max_waiting": "server",
}
"""Which process reads each setting: the server (``serve``: /predict drafts in-process, /setup and /webhook
enqueue), the worker (``worker``: jobs, the reconcile schedule, heartbeats), or both. Set each where it is read."""


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` after changing the env."""
    return Settings()
