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

from tests.server.conftest import seed_ui_login

pytestmark = pytest.mark.server

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,900",
]
# virtual ms Chromium lets the app run before dumping; on a loaded machine the app's API calls can take
# longer, so a page missing what the test expects is rendered again with a larger budget
BUDGETS_MS = (8000, 20000, 45000)


@pytest.fixture(scope="module")
def chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Chromium is not installed; run .ci/server-deps.sh")
    return exe


def render(
    chromium: str, url: str, profile: Path, screenshot: Path | None = None, budget_ms: int = BUDGETS_MS[0]
) -> str:
    """The DOM after the app rendered (and a screenshot when asked)."""
    seed_ui_login(chromium, url, profile)  # the API requires the auth string (tests/server/conftest.py)
    out = ["--dump-dom"] if screenshot is None else [f"--screenshot={screenshot}"]
    res = subprocess.run(
        [chromium, *FLAGS, f"--virtual-time-budget={budget_ms}", f"--user-data-dir={profile}", *out, url],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert res.returncode == 0, f"chromium {url}: {res.stderr[-2000:]}"
    return res.stdout


def render_showing(chromium: str, url: str, profile: Path, *needles: str) -> tuple[str, int]:
    """(DOM, budget used): the first render whose visible text holds every needle (the last one otherwise)."""
    for budget in BUDGETS_MS:
        dom = render(chromium, url, profile, budget_ms=budget)
        if all(n in visible_text(dom) for n in needles):
            break
    return dom, budget


def visible_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


def test_ui_shows_the_deployment_and_the_completed_run(chromium, sqlite_server, completed_run, tmp_path):
    url = sqlite_server.url
    dom, budget = render_showing(chromium, f"{url}/deployments", tmp_path / "profile", "pretrain", "Ready")
    text = visible_text(dom)
    assert "default pretrain Ready" in text, text[:2000]  # name, flow, status of pretrain/default
    shot = tmp_path / "deployments.png"
    render(chromium, f"{url}/deployments", tmp_path / "profile", screenshot=shot, budget_ms=budget)
    assert shot.stat().st_size > 20_000, "screenshot looks empty"
    # the weekly deployment's own page (the list is paginated): its paused cron schedule
    weekly = f"{url}/deployments/deployment/{sqlite_server.deployment_id('pretrain/weekly')}"
    text = visible_text(render_showing(chromium, weekly, tmp_path / "profile", "weekly", "Monday")[0])
    (tmp_path / "weekly-deployment.txt").write_text(text)
    assert "weekly" in text and "Monday" in text, text[:3000]  # the UI spells the cron out ("... on Monday")
    render(chromium, weekly, tmp_path / "profile", screenshot=tmp_path / "weekly-deployment.png", budget_ms=budget)

    run = sqlite_server.flow_run(completed_run.run_id)
    page = f"{url}/runs/flow-run/{completed_run.run_id}"
    dom, budget = render_showing(chromium, page, tmp_path / "profile", run["name"], "Completed")
    text = visible_text(dom)
    assert run["name"] in text and "Completed" in text, text[:2000]
    shot = tmp_path / "flow-run.png"
    render(chromium, page, tmp_path / "profile", screenshot=shot, budget_ms=budget)
    assert shot.stat().st_size > 20_000


def test_ui_renders_the_summary_artifact_with_its_funnel_image(chromium, sqlite_server, completed_run, tmp_path):
    server = sqlite_server
    run = server.flow_run(completed_run.run_id)
    # Artifacts -> pretrain-summary: the key's page (its version timeline renders late; the header is enough)
    key_page = f"{server.url}/artifacts/key/pretrain-summary"
    text = visible_text(render_showing(chromium, key_page, tmp_path / "profile", "version lineage")[0])
    assert "pretrain-summary" in text and "attrition per stage and version lineage" in text, text[:2000]
    # the artifact itself: attrition table, the funnel PNG (a data URI the UI must not strip), lineage
    art = next(a for a in server.artifacts([completed_run.run_id]) if a["key"] == "pretrain-summary")
    page = f"{server.url}/artifacts/artifact/{art['id']}"
    dom, budget = render_showing(chromium, page, tmp_path / "profile", "Lineage", run["name"])
    assert re.search(r'<img[^>]+src="data:image/png;base64,', dom), "funnel image not rendered"
    text = visible_text(dom)
    assert "Attrition" in text and "Lineage" in text and "computed" in text, text[:2000]
    assert run["name"] in text, "the artifact page links the flow run that made it"
    shot = tmp_path / "summary-artifact.png"
    render(chromium, page, tmp_path / "profile", screenshot=shot, budget_ms=budget)
    assert shot.stat().st_size > 20_000
