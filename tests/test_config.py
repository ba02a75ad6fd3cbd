import pytest

from raytag.config import ConfigError, describe_fields, load_config, resolve_config_path


def test_defaults_and_overrides():
    config = load_config(None, ["training.epochs=3", "model.hidden_dims=[8, 4]", "validate.n_subsets=5"])
    assert config.training.epochs == 3
    assert config.model.hidden_dims == [8, 4]
    assert config.validate_.n_subsets == 5
    assert config.to_dict()["validate"]["n_subsets"] == 5


@pytest.mark.parametrize(
    "override, expected",
    [
        ("training.epochs=-1", "training.epochs = -1"),
        ("training.epoch=3", "unknown field 'training.epoch'"),
        ("tasks.regime=foo", "'seeds' or 'balanced'"),
        ("data.format=snap", "data.edges and data.communities"),
        ("tasks.negative_fractions=[0.5,0.5,0.5]", "summing to 1"),
        ("model.hidden_dims=[]", "model.hidden_dims=[]"),
    ],
)
def test_bad_values_name_the_field(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_override_needs_equals():
    with pytest.raises(ConfigError, match="FIELD=VALUE"):
        load_config(None, ["training.epochs"])


def test_yaml_file_and_relative_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "c.yaml"
    path.write_text("data:\n  format: adjlist\n  adjacency: g.adj\n  labels: /abs/l.txt\ntasks:\n  num_tasks: 5\n")
    config = load_config(path)
    assert config.data.adjacency == (tmp_path / "sub" / "g.adj").resolve()
    assert str(config.data.labels) == "/abs/l.txt"
    assert config.tasks.num_tasks == 5


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_packaged_configs_load():
    for name in ("dblp_demo", "synthetic_large"):
        assert load_config(resolve_config_path(name)).name


def test_every_field_documented():
    lines = describe_fields()
    assert any(line.startswith("training.epochs = 30") for line in lines)
    assert all(line.split("— ", 1)[1].strip() for line in lines), "a field has no description"
