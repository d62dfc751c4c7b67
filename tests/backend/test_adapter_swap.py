"""The server follows the adapter version recorded in Redis, never uses a half-written folder, and
never drafts with the base model in place of a version it cannot get."""
import pytest
from fastapi.testclient import TestClient

from backend import model_cache, wiring
from backend.project import score_key
from backend.settings import get_settings
from backend.server import app
from tests.backend.fakes import LABEL_CONFIG, TEST_PARAMS, backend_env  # noqa: F401


def _save_adapter(project: int, seed: int) -> str:
    from model.config import TrainConfig
    from model.training import train_lora
    result = train_lora(model_cache.models.get(None), [("answer the question briefly", "yes")],
                        TrainConfig(r=2, lora_alpha=4, epochs=1, batch_size=1, seed=seed))
    return wiring.adapter_store().save(str(project), result.peft_model, result.meta())


def _predict(client, task_id: int, status: int = 200) -> dict:
    r = client.post("/predict", json={"tasks": [{"id": task_id, "data": {"prompt": "count the number of words"}}],
                                      "project": "7.1", "label_config": LABEL_CONFIG})
    assert r.status_code == status
    return r.json()["results"][0] if status == 200 else r.json()


def _scored_under(adapter) -> set:
    return wiring.store().scored_ids(7, score_key(get_settings().model_name_or_path, adapter, TEST_PARAMS["max_new_tokens"]))


@pytest.mark.slow
def test_server_picks_up_new_versions_and_skips_half_written_ones(backend_env):
    client = TestClient(app)
    client.post("/setup", json={"project": "7.1", "schema": LABEL_CONFIG, "extra_params": TEST_PARAMS})
    st = wiring.store()
    v1 = _save_adapter(7, seed=1)
    st.set_adapter(7, v1)
    _predict(client, 1)
    assert _scored_under(v1) == {1}

    v2 = _save_adapter(7, seed=2)
    st.set_adapter(7, v2)
    _predict(client, 2)
    assert _scored_under(v2) == {2}

    # A save interrupted half-way leaves only a hidden temp folder; a version named in Redis but neither
    # complete on disk nor copied into Redis is never loaded, and the base model does not stand in.
    half = backend_env.model_dir / "7" / ".tmp-interrupted"
    half.mkdir()
    (half / "adapter_config.json").write_text("{")
    st.set_adapter(7, "v0003")
    assert "adapter v0003 is neither" in _predict(client, 3, status=503)["detail"]
    assert _scored_under(None) == set() and _scored_under("v0003") == set()
