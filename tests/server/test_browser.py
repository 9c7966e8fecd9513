"""The Prefect UI in a real headless Chromium: the deployments page, the completed run, the summary artifact.

Flags from PREFECT_NOTES section 10: without `--virtual-time-budget` the single-page app has not
rendered when Chromium dumps or screenshots the page. Screenshots are saved under the test's tmp dir.
"""

import html
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.server

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,900", "--virtual-time-budget=8000"]


@pytest.fixture(scope="module")
def chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Chromium is not installed; run .ci/server-deps.sh")
    return exe


def render(chromium: str, url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The DOM after the app rendered (and a screenshot when asked)."""
    out = ["--dump-dom"] if screenshot is None else [f"--screenshot={screenshot}"]
    res = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *out, url], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, f"chromium {url}: {res.stderr[-2000:]}"
    return res.stdout


def visible_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


def test_ui_shows_the_deployment_and_the_completed_run(chromium, sqlite_server, completed_run, tmp_path):
    url = sqlite_server.url
    text = visible_text(render(chromium, f"{url}/deployments", tmp_path / "profile"))
    assert "pretrain" in text and "default" in text and "weekly" in text, text[:2000]
    shot = tmp_path / "deployments.png"
    render(chromium, f"{url}/deployments", tmp_path / "profile", screenshot=shot)
    assert shot.stat().st_size > 20_000, "screenshot looks empty"

    run = sqlite_server.flow_run(completed_run.run_id)
    page = f"{url}/runs/flow-run/{completed_run.run_id}"
    text = visible_text(render(chromium, page, tmp_path / "profile"))
    assert run["name"] in text and "Completed" in text, text[:2000]
    shot = tmp_path / "flow-run.png"
    render(chromium, page, tmp_path / "profile", screenshot=shot)
    assert shot.stat().st_size > 20_000


def test_ui_renders_the_summary_artifact_with_its_funnel_image(chromium, sqlite_server, completed_run, tmp_path):
    server = sqlite_server
    run = server.flow_run(completed_run.run_id)
    # Artifacts -> pretrain-summary: the timeline of versions, linked to the runs that made them
    text = visible_text(render(chromium, f"{server.url}/artifacts/key/pretrain-summary", tmp_path / "profile"))
    assert "pretrain-summary" in text and run["name"] in text, text[:2000]
    # the artifact itself: attrition table, the funnel PNG (a data URI the UI must not strip), lineage
    art = next(a for a in server.artifacts([completed_run.run_id]) if a["key"] == "pretrain-summary")
    page = f"{server.url}/artifacts/artifact/{art['id']}"
    dom = render(chromium, page, tmp_path / "profile")
    assert re.search(r'<img[^>]+src="data:image/png;base64,', dom), "funnel image not rendered"
    text = visible_text(dom)
    assert "Attrition" in text and "Lineage" in text and "computed" in text, text[:2000]
    shot = tmp_path / "summary-artifact.png"
    render(chromium, page, tmp_path / "profile", screenshot=shot)
    assert shot.stat().st_size > 20_000
