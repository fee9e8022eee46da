"""`streamrec train`'s model is found without a flag only for the catalog it was trained on."""

from __future__ import annotations

import json

from streamrec.train import current_model
from streams.settings import Settings


def _layout(tmp_path, trained_on: str, catalog_version: str) -> Settings:
    version = tmp_path / "cache" / "models" / "retail-abc" / "v1"
    version.mkdir(parents=True)
    (version / "config.json").write_text(json.dumps({"catalog": {"version": trained_on}}))
    (tmp_path / "cache" / "models" / "current").symlink_to(version)
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "manifest.json").write_text(json.dumps({"version": catalog_version}))
    return Settings(cache_dir=tmp_path / "cache", catalog=catalog)


def test_the_current_model_is_taken_for_its_own_catalog(tmp_path) -> None:
    s = _layout(tmp_path, "all-MiniLM-L6-v2@bed78986", "all-MiniLM-L6-v2@bed78986")
    found = current_model(s)
    assert found is not None and found.resolve().name == "v1"


def test_another_catalogs_model_is_not_taken(tmp_path) -> None:
    s = _layout(tmp_path, "all-MiniLM-L6-v2@bed78986", "all-MiniLM-L6-v2@0000aaaa")
    assert current_model(s) is None
    assert current_model(s.model_copy(update={"catalog": None})) is None
    assert current_model(Settings(cache_dir=tmp_path / "nothing", catalog=s.catalog)) is None
