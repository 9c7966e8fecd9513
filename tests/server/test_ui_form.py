"""Start a run from the Prefect UI's own form, in a real headless Chromium driven by Playwright.

The user's path: Deployments -> pretrain/default -> Run -> Custom run, fill the typed parameter form
(run name, `config.demo_pages`, `data_root`, `only` = ingest from the Stage drop-down), Submit. The test
then checks through the API that the UI created exactly that flow run with exactly those parameters, that
the worker ran it to Completed, that only the ingest stage was written (into the data root typed in the
form, so the session's shared data root is untouched), and that the run's page shows it Completed.
Screenshots of the filled form and the run page are saved under the test's tmp dir.

Playwright drives Debian's Chromium (`executable_path`); no Playwright browser download is needed.
"""

import re
import shutil
import time
import uuid
from pathlib import Path

import pytest

from tests.server.conftest import ui_login_script

pytestmark = pytest.mark.server

TIMEOUT_MS = 60_000  # generous: the UI's API calls are slow while the worker runs flows on 2 cores
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api",
        reason="playwright is not installed (pip install "
        "'pretrain-pipeline[dev]', or pip install playwright; no browser download needed)",
    )
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("Chromium is not installed; run .ci/server-deps.sh")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=LAUNCH_ARGS)
        try:
            yield b
        finally:
            b.close()


def form_property(page, scope, label: str):
    """The schema-form block in `scope` whose own label is `<label> (...)` (not a nested block containing it)."""
    own_label = page.locator(
        ":scope > .p-label__header .schema-form-property__label", has_text=re.compile(rf"^{re.escape(label)} \(")
    )
    return scope.locator(".schema-form-property").filter(has=own_label)


def choose(page, prop, option: str) -> None:
    """Pick `option` in a schema-form drop-down (the list sometimes opens only on a key press)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    prop.locator(".p-select-button__control").click()
    listbox = page.get_by_role("listbox")
    try:
        listbox.wait_for(timeout=5_000)
    except PlaywrightTimeout:  # the drop-down has focus; a key opens it
        page.keyboard.press("ArrowDown")
    listbox.get_by_role("option", name=option, exact=True).click(timeout=TIMEOUT_MS)


def fill_custom_run(page, run_name: str, data_root: Path, demo_pages: int, shot: Path) -> None:
    form = page.locator("form.flow-run-create-form-v2")
    form.wait_for(timeout=TIMEOUT_MS)
    form.locator(".flow-run-name-input input").fill(run_name)
    form_property(page, form, "Demo Pages").locator("input").fill(str(demo_pages))  # config.demo_pages
    root = form_property(page, form, "data_root")
    root.get_by_role("button", name="str", exact=True).click()
    root.locator("textarea, input").first.fill(str(data_root))
    only = form_property(page, form, "only")
    only.get_by_role("button", name="Stage", exact=True).click()
    choose(page, only, "ingest")
    _wait_listbox_closed(page)
    page.screenshot(path=str(shot))


def _wait_listbox_closed(page) -> None:
    """A click on Submit while the drop-down list is still open only closes the list (seen once in CI)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.get_by_role("listbox").wait_for(state="hidden", timeout=5_000)
    except PlaywrightTimeout:
        page.keyboard.press("Escape")
        page.get_by_role("listbox").wait_for(state="hidden", timeout=5_000)


def submit(page, server, run_name: str, tmp_path: Path) -> dict:
    """Press Submit and return the flow run it created; press it again only if the first press created
    nothing and the form is still on screen (a press swallowed by a closing pop-over)."""
    form = page.locator("form.flow-run-create-form-v2")
    form.get_by_role("button", name="Submit", exact=True).click()
    try:
        return wait_created(server, run_name, timeout=30)
    except AssertionError:
        page.screenshot(path=str(tmp_path / "after-first-submit.png"))
        if not form.is_visible() or runs_named(server, run_name):
            raise
    form.get_by_role("button", name="Submit", exact=True).click()
    return wait_created(server, run_name, timeout=60)


def runs_named(server, name: str) -> list[dict]:
    with server.http() as c:
        r = c.post("/flow_runs/filter", json={"flow_runs": {"name": {"any_": [name]}}})
        r.raise_for_status()
        return r.json()


def wait_created(server, name: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = runs_named(server, name)
        if found:
            assert len(found) == 1, f"the form created {len(found)} runs named {name}"
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"no flow run named {name} {timeout}s after Submit")


def test_custom_run_from_the_ui_form_runs_only_ingest(browser, sqlite_server, tmp_path):
    from flows.pipeline import Stage
    from storage.manifest import list_versions, load_manifest

    server = sqlite_server
    run_name, ui_root = f"ui-form-{uuid.uuid4().hex[:8]}", tmp_path / "ui-data"
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.add_init_script(ui_login_script())  # the API requires the auth string (tests/server/conftest.py)
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(f"{server.url}/deployments/deployment/{server.deployment_id('pretrain/default')}")
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_text("Custom run", exact=True).click()
        fill_custom_run(page, run_name, ui_root, 30, tmp_path / "custom-run-form.png")
        run = submit(page, server, run_name, tmp_path)
        params = run["parameters"]
        assert (params["only"], params["data_root"], params["config"]["demo_pages"]) == ("ingest", str(ui_root), 30)
        assert run["deployment_id"] == server.deployment_id("pretrain/default")

        final = server.wait_final(run["id"], timeout=300)
        assert final["state"]["type"] == "COMPLETED", final["state"]
        ingest = load_manifest(str(ui_root), Stage.INGEST)
        assert ingest.stats.docs_in == 30  # the demo crawl of the size typed in the form
        assert sorted(p.name for p in ui_root.iterdir() if not p.name.startswith("_")) == ["ingest"]
        assert [m.version for m in list_versions(str(ui_root), Stage.INGEST)] == [ingest.version]

        page.goto(f"{server.url}/runs/flow-run/{run['id']}")
        page.get_by_text(run_name, exact=True).first.wait_for()
        page.get_by_text("Completed", exact=True).first.wait_for()
        page.wait_for_timeout(2_000)  # let the timeline and logs render for the screenshot
        shot = tmp_path / "ui-form-run.png"
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 20_000, "screenshot looks empty"
    finally:
        page.close()
