from pathlib import Path

from backend.settings import Settings


def test_defaults(monkeypatch):
    for name in ("REDIS_URL", "MODEL_NAME_OR_PATH", "MODEL_DIR", "BASIC_AUTH_USER", "BASIC_AUTH_PASS"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert s.redis_url == "redis://127.0.0.1:6379/0" and s.model_name_or_path is None
    assert s.model_dir == Path("var/adapters") and s.basic_auth is None
    assert s.queues == ["wtd-score", "wtd-train"]
    assert all("Default" in (f.description or "") for f in Settings.model_fields.values()), \
        "every setting documents its default"


def test_from_env_with_secrets_hidden(monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "key-123456")
    monkeypatch.setenv("BASIC_AUTH_USER", "u")
    monkeypatch.setenv("BASIC_AUTH_PASS", "p")
    monkeypatch.setenv("SCORE_CHUNK_SIZE", "16")
    s = Settings()
    assert s.label_studio_api_key.get_secret_value() == "key-123456" and "key-123456" not in repr(s)
    assert s.basic_auth == ("u", "p") and s.score_chunk_size == 16
