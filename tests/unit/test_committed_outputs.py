"""The default profile's committed outputs: a fresh clone renders every notebook from them, computing no run."""

from pathlib import Path

import pytest

from podd_lib.kit import plan

REPO = Path(__file__).resolve().parents[2]
# The run folders whose posters the notebooks draw (00 and 06) or browse (08), beside their result.json.
POSTER_FILES = ("config.json", "poster.pt", "labels.pt", "metrics.csv")


@pytest.fixture(scope="module")
def default_plan() -> dict:
    """The plan of `./run_all.sh` (the quick profile) against the committed outputs/."""
    return plan.build_plan("quick", notebooks_dir=REPO / "notebooks", out_dir="../outputs")


def test_every_run_of_the_default_is_committed(default_plan):
    missing = [r["folder"] for r in default_plan["runs"] if not r["cached"]]
    assert not missing, (f"{len(missing)} of the default's {len(default_plan['runs'])} runs have no committed "
                         f"result.json (rerun ./run_all.sh and commit outputs/runs/**/result.json): {missing[:3]}")


@pytest.mark.parametrize("notebook", ["00_quickstart", "06_poster_semantics", "08_patch_explorer"])
def test_the_posters_the_notebooks_draw_are_committed(default_plan, notebook):
    folders = [r["folder"] for r in default_plan["runs"] if notebook in r["notebooks"] and r["kind"] == "distill"]
    assert folders, f"the plan gives {notebook} no poster"
    for folder in folders:
        run = (REPO / "notebooks" / folder).resolve()
        assert all((run / name).is_file() for name in POSTER_FILES), f"{run} lacks one of {POSTER_FILES}"
