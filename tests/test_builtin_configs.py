"""Built-in configs by name (extmem.builtin_configs): `extmem train quickstart`, `extmem compare
quickstart`, `extmem configs [show NAME]`, sweep bases by name, a config missing a section,
`extmem --version`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import extmem
from extmem import builtin_configs
from extmem.builtin_configs import builtin_configs as all_configs
from extmem.builtin_configs import describe, resolve, root
from extmem.cli import _read_run_config, main
from extmem.config import read_toml
from extmem.errors import ConfigError
from extmem.experiments import load_sweep
from tests.cli_helpers import error_line, run_json

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli, the package tomllib was taken from
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for p in (ROOT / "src" / "extmem" / "configs").rglob("*.toml"))


def test_the_repository_configs_link_is_the_package_tree():
    assert (ROOT / "configs").resolve() == root().resolve()
    assert sorted(c.path for c in all_configs().values()) == SHIPPED


def test_train_a_builtin_config_by_name_from_any_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    result = run_json(capsys, "train", "quickstart", "--quiet", "--set", "train.steps=1",
                      "--set", "train.eval_every=0")
    assert result["steps"] == 1
    assert (tmp_path / "runs" / "quickstart" / "results.json").is_file()
    saved = read_toml(tmp_path / "runs" / "quickstart" / "config.toml")
    assert saved["model"]["memories"][0]["product_keys"]["n_keys"] == 64  # quickstart's memory


def test_compare_looks_under_sweeps_first(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep("quickstart")
    assert sweep.path == root() / "sweeps" / "quickstart.toml"
    assert list(sweep.runs) == ["dense", "pkm", "token-tables", "recycled-altup"]
    assert load_sweep("sweeps/quickstart").path == sweep.path
    # the CLI hands the name to the same resolution: stop it before anything trains
    import extmem.experiments as experiments

    def stop(sweep, out, quiet, only=None, reuse=None, seeds=None):
        raise ConfigError(f"would run {sweep.path} into {out}")
    monkeypatch.setattr(experiments, "run_sweep", stop)
    line = error_line(capsys, "compare", "quickstart", "--quiet")
    assert f"would run {sweep.path} into runs/sweeps/quickstart" in line


def test_a_path_still_works_and_wins_over_a_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve(str(ROOT / "configs" / "dense.toml"), "run") == ROOT / "configs" / "dense.toml"
    assert resolve("quickstart", "run") == root() / "quickstart.toml"
    (tmp_path / "quickstart").write_text((root() / "dense.toml").read_text())
    assert resolve("quickstart", "run") == Path("quickstart")  # the file here, not the name
    cfg, path = _read_run_config("quickstart", [])
    assert path == Path("quickstart") and cfg.model.memories == []
    assert resolve("design/token-add", "run") == root() / "design" / "token-add.toml"


def test_configs_lists_every_shipped_toml_with_its_description(capsys):
    assert main(["configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for path in SHIPPED:
        name = path.relative_to(root()).with_suffix("").as_posix()
        description = describe(path)
        assert description and "\n" not in description
        assert any(line.split() and line.split()[0] == name and line.endswith(description)
                   for line in lines), name
    listed = run_json(capsys, "configs")["configs"]
    assert len(listed) == len(SHIPPED)
    assert {c["kind"] for c in listed if c["name"].startswith("sweeps/")} == {"sweep"}
    assert {c["kind"] for c in listed if not c["name"].startswith("sweeps/")} == {"run"}


def test_description_comes_from_the_key_or_the_first_sentence(tmp_path):
    keyed = tmp_path / "keyed.toml"
    keyed.write_text('# a comment\ndescription = "Said  here."\nname = "x"\n')
    assert describe(keyed) == "Said here."
    commented = tmp_path / "commented.toml"
    commented.write_text("# First sentence (Baykal et al. 2023) spans\n# two lines. Second.\n"
                         "#   extmem train commented\n[model]\n")
    assert describe(commented) == "First sentence (Baykal et al. 2023) spans two lines."
    long = tmp_path / "long.toml"
    long.write_text("# " + "word " * 60 + "\n")
    assert len(describe(long)) <= builtin_configs.DESCRIPTION_CHARS
    assert describe(long).endswith("...")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(root()).as_posix())
def test_configs_show_prints_the_file(path, capsys):
    name = path.relative_to(root()).with_suffix("").as_posix()
    assert main(["configs", "show", name]) == 0
    shown = capsys.readouterr().out
    assert shown == path.read_text(encoding="utf-8")
    assert tomllib.loads(shown) == read_toml(path)


def test_configs_show_finds_a_sweep_without_its_folder(capsys):
    assert main(["configs", "show", "gcide-core"]) == 0
    assert capsys.readouterr().out == (root() / "sweeps" / "gcide-core.toml").read_text()
    assert main(["configs", "show", "quickstart"]) == 0  # the run config: names come first
    assert "[model]" in capsys.readouterr().out


@pytest.mark.parametrize("argv,fragments", [
    (["train", "quikstart"], ["'quikstart' is not a file or a built-in run config name",
                              "close names: quickstart"]),
    (["train", "design/token-ad"], ["close names: design/token-add"]),
    (["compare", "quikstart"], ["built-in sweep name", "close names: quickstart"]),
    (["configs", "show", "quikstart"], ["close names: quickstart"]),
    (["train", "zzzzzz"], ["list them with: extmem configs"]),
    (["train", "gcide-core"], ["'gcide-core' is a sweep: run it with extmem compare gcide-core"]),
    (["compare", "dense"], ["'dense' is a run config, not a sweep: run it with extmem train dense"]),
    (["train", "configs/quickstart.toml"], ["does not exist", "give 'quickstart' (no .toml)"]),
    (["compare", "configs/sweeps/gcide-core.toml"], ["give 'gcide-core' (no .toml)"]),
])
def test_unknown_names_are_one_error_line(argv, fragments, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # outside the repository: configs/... paths do not exist
    line = error_line(capsys, *argv)
    for fragment in fragments:
        assert fragment in line, line


def _sweep(tmp_path: Path, base: str, variant_base: str) -> Path:
    path = tmp_path / "sweeps" / "mine.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f'name = "mine"\nbase = "{base}"\nseeds = [0]\nsteps = 2\n\n'
                    f'[[variants]]\nname = "dense"\n\n'
                    f'[[variants]]\nname = "other"\nbase = "{variant_base}"\n')
    return path


def test_sweep_bases_by_name_or_relative_path(tmp_path):
    by_name = load_sweep(_sweep(tmp_path, "dense", "design/token-add"))
    assert by_name.runs["dense"][0].model.memories == []
    assert by_name.runs["other"][0].model.memories[0].lookup == "token"
    (tmp_path / "local.toml").write_text((root() / "quickstart.toml").read_text())
    by_path = load_sweep(_sweep(tmp_path, str(ROOT / "configs" / "dense.toml"), "../local.toml"))
    assert by_path.runs["dense"][0] == by_name.runs["dense"][0]
    assert by_path.runs["other"][0].model.memories[0].lookup == "product_keys"
    with pytest.raises(ConfigError, match="'nope' is not a file or a built-in run config"):
        load_sweep(_sweep(tmp_path, "nope", "dense"))
    with pytest.raises(ConfigError, match="does not exist; a built-in config has that name: "
                                          "give 'dense'"):
        load_sweep(_sweep(tmp_path, "../dense.toml", "dense"))


def test_every_shipped_sweep_resolves():
    for name, config in all_configs().items():
        if config.kind == "sweep":
            assert load_sweep(name).runs, name


@pytest.mark.parametrize("text,missing", [
    ("", "[model], [data], [train]"),
    ("[model]\nd_model = 64\n", "[data], [train]"),
    ("[model]\n[data]\n", "[train]"),
])
def test_a_config_missing_a_section_is_an_error(text, missing, tmp_path, capsys):
    path = tmp_path / "partial.toml"
    path.write_text(text)
    line = error_line(capsys, "train", str(path), "--out", str(tmp_path / "run"),
                      "--set", "train.steps=1")
    assert f"has no {missing} section" in line
    assert "extmem configs show quickstart" in line
    assert not (tmp_path / "run").exists()


def test_missing_fields_take_their_defaults(tmp_path):
    path = tmp_path / "partial.toml"
    path.write_text("[model]\nd_model = 64\n[data]\n[train]\nsteps = 5\n")
    cfg, _ = _read_run_config(str(path), [])
    assert cfg.model.d_model == 64 and cfg.train.steps == 5
    assert cfg.train.batch_size == 16  # TrainConfig's default


def test_a_sweep_base_missing_a_section_is_an_error(tmp_path):
    (tmp_path / "empty.toml").write_text("")
    with pytest.raises(ConfigError, match=r"has no \[model\], \[data\], \[train\] section"):
        load_sweep(_sweep(tmp_path, "../empty.toml", "dense"))


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"extmem {extmem.__version__}\n"


def test_the_version_has_one_source():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["hatch"]["version"]["path"] == "src/extmem/__init__.py"
    assert f'__version__ = "{extmem.__version__}"' in (ROOT / "src/extmem/__init__.py").read_text()
    assert "hatchling" in " ".join(pyproject["project"]["optional-dependencies"]["dev"])


def test_configs_piped_into_head_exits_quietly(monkeypatch):
    def reader_left(*args, **kwargs):
        raise BrokenPipeError
    monkeypatch.setattr("builtins.print", reader_left)
    monkeypatch.setattr("os.dup2", lambda *args: None)  # keep pytest's stdout
    assert main(["configs"]) == 141
