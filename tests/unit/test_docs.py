"""The user docs stay true: the clusters.json reference is what the models say; the README names the test command."""

from __future__ import annotations

from labctl import docgen
from tests.conftest import ROOT


def test_clusters_json_reference_is_generated_from_the_models():
    on_disk = (ROOT / "docs" / "clusters-json.md").read_text()
    assert on_disk == docgen.markdown(), "stale: run `python -m labctl.docgen > docs/clusters-json.md`"


def test_every_model_field_is_documented():
    text = (ROOT / "docs" / "clusters-json.md").read_text()
    for _, model in docgen.SECTIONS:
        for name in model.model_fields:
            assert f"| `{name}` |" in text


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in readme and "bash scripts/test.sh" in ci
