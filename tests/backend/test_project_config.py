import pytest

from backend.project_config import ProjectConfig, ProjectConfigError, parse_extra_params


@pytest.mark.parametrize("raw", [None, "", "  ", {}, "{}"])
def test_empty_extra_params_give_defaults(raw):
    assert parse_extra_params(raw) == ProjectConfig()


def test_json_string_and_object_are_the_same():
    assert parse_extra_params('{"budget": 0.5, "rounds": 2}') == parse_extra_params({"budget": 0.5, "rounds": 2})


def test_budget_int_or_fraction():
    assert parse_extra_params({"budget": 3}).budget_for(10) == 3
    assert parse_extra_params({"budget": 30}).budget_for(10) == 10
    assert parse_extra_params({"budget": 0.25}).budget_for(10) == 3
    assert parse_extra_params({"budget": 1.0}).budget_for(7) == 7
    # model.budget's one rule, the same as `wtd select` and the harness: a fraction rounds up
    assert parse_extra_params({"budget": 0.25}).budget_for(14) == 4
    assert parse_extra_params({"budget": 0.07}).budget_for(100) == 7
    assert parse_extra_params({"budget": 0.25}).budget == 0.25 and parse_extra_params({"budget": 3}).budget == 3


@pytest.mark.parametrize("raw,setting", [
    ({"budget": 0}, "budget"), ({"budget": 1.5}, "budget"), ({"budget": "10"}, "budget"),
    ({"budget": True}, "budget"), ({"strategy": "best"}, "strategy"), ({"metric": "x"}, "metric"),
    ({"min_per_task": -1}, "min_per_task"), ({"rounds": 0}, "rounds"), ({"learning_rate": 0}, "learning_rate"),
    ({"budgte": 5}, "budgte")])
def test_invalid_settings_name_the_setting(raw, setting):
    with pytest.raises(ProjectConfigError) as e:
        parse_extra_params(raw)
    assert e.value.setting == setting and f"'{setting}'" in str(e.value)


@pytest.mark.parametrize("raw", ["{not json", "[1, 2]", 5])
def test_extra_params_must_be_an_object(raw):
    with pytest.raises(ProjectConfigError, match="extra_params"):
        parse_extra_params(raw)


def test_model_configs():
    cfg = parse_extra_params({"budget": 5, "strategy": "random", "r": 4, "epochs": 1})
    assert cfg.selection(5).strategy == "random" and cfg.selection(5).budget == 5
    assert cfg.training().r == 4 and cfg.training().epochs == 1
