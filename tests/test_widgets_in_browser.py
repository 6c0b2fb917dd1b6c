"""Both widgets in a real browser: JupyterLab on 127.0.0.1 driven through headless Chromium.

The test writes a scratch notebook holding a short prelude (small offline data,
``SEQ_LEN``) and the widget cells of notebooks 02 and 03 exactly as they stand
(running the whole notebooks would add a minute of training and prove nothing
more about the widgets), runs it in JupyterLab with its default settings (but
for one: every cell stays in the page, no virtual scrolling), and then
changes every control of both widgets once, the first change included.
(Which kernel thread handles widget messages depends on the JupyterLab and
ipykernel versions; changes arriving on two threads at once are tested without
a browser, in ``test_calculator.py`` and ``test_routing_views.py``.)  After
each change it waits until the printed numbers are the ones the logic modules
compute for the new setting, and checks the picture the browser shows (the PNG
behind the widget's ``img``): a complete plot, pixel for pixel the one
``calculator_png`` / ``explorer_png`` draw for that setting.  It also checks
that no control label is cut off and that the calculator's slider tracks are
long.

Needs Chromium and its driver (Debian: ``apt-get install chromium
chromium-driver``; ``.ci/run`` installs them) and ``selenium`` (the ``dev``
extra).  Without them the test is skipped, except under ``CI=true``, where it
fails.  Every process it starts (the Jupyter server, its kernel, Chromium and
its driver) is stopped at the end, also when the test fails.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nbformat
import pytest

from moe_helpers.calculator import (SIZE_CONTROLS, calculator_config, calculator_png, calculator_presets,
                                    calculator_summary)
from moe_helpers.data import prepare_data
from moe_helpers.routing_explorer import SAMPLE_SENTENCE, explorer_png, routing_summary, routing_table_html
from plot_pixels import plot_problems, same_pixels

pytestmark = pytest.mark.browser   # JupyterLab and headless Chromium

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select
except ImportError:                      # reported by the `browser` fixture: skipped locally, failed in CI
    webdriver = None

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
DATA_VOCAB, DATA_STORIES = 512, 600      # the unit tests' `tiny` data: the widgets are tested, not the corpus
TEST_SECONDS = 100                       # the test body's time bound (server and browser start come first)
STEP_SECONDS = 20                        # one control change: numbers and picture updated within this
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


# ------------------------------------------------------------- availability
def _unavailable(reason: str):
    """Skip (a developer's machine) or fail (CI), saying what is missing and how to get it."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"browser test cannot run: {reason}. CI must have it: .ci/run installs chromium and "
                    "chromium-driver with apt-get, and selenium comes with the dev extra.", pytrace=False)
    pytest.skip(f"browser test skipped: {reason}")


def _chromium() -> tuple[str, str]:
    """Paths of the Chromium browser and its driver (or skip / fail)."""
    browser = next((shutil.which(name) for name in CHROMIUM_NAMES if shutil.which(name)), None)
    driver = shutil.which("chromedriver")
    if webdriver is None:
        _unavailable("selenium is not installed (pip install -e '.[dev]')")
    if browser is None or driver is None:
        _unavailable("Chromium or chromedriver not found on PATH (Debian: apt-get install chromium chromium-driver)")
    return browser, driver


# ------------------------------------------------------------- processes
class Deadline:
    """A time bound shared by several waits."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def step(self) -> "Deadline":
        """A bound for one step: ``STEP_SECONDS``, or less if less is left."""
        return Deadline(min(STEP_SECONDS, self.left()))


def poll(check, deadline: Deadline, every: float = 0.1):
    """Call ``check()`` until it returns something true or ``deadline`` passes.

    Returns ``(result, last_error)``: the true result, or None and the last exception
    ``check`` raised (the page may still be changing while we look)."""
    last = None
    while True:
        try:
            result = check()
            if result:
                return result, None
        except Exception as error:      # noqa: BLE001 -- reported by the caller on timeout
            last = error
        if deadline.left() <= 0:
            return None, last
        time.sleep(every)


def wait_for(check, what: str, deadline: Deadline, every: float = 0.1):
    """``poll`` that fails the test naming ``what`` (and the last error seen) when ``deadline`` passes."""
    result, last = poll(check, deadline, every)
    if not result:
        pytest.fail(f"timed out waiting for {what}" + (f" (last error: {last!r})" if last else ""))
    return result


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group ``process`` leads, SIGKILL it if it has not gone after ``grace`` seconds."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def _kill_processes_mentioning(marker: str) -> list[int]:
    """SIGKILL every process whose command line contains ``marker`` (a folder only this test made);
    return their ids.  Catches what a crashed parent left behind (a kernel, a browser)."""
    killed = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (entry / "cmdline").read_bytes().decode(errors="replace") and int(entry.name) != os.getpid():
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return killed


def _widget_cell(notebook: str, marker: str) -> str:
    """The source of the code cell of ``notebook`` that contains ``marker``."""
    cells = nbformat.read(NOTEBOOKS / notebook, as_version=4).cells
    sources = [cell.source for cell in cells if cell.cell_type == "code" and marker in cell.source]
    assert len(sources) == 1, f"{notebook}: expected one code cell with {marker!r}, found {len(sources)}"
    return sources[0]


def write_scratch_notebook(path: Path) -> None:
    """A prelude (small data, ``SEQ_LEN``) and the widget cells of notebooks 02 and 03."""
    prelude = ("from IPython.display import display\n"
               "from moe_helpers.data import prepare_data\n\n"
               f"data = prepare_data(\"offline\", vocab_size={DATA_VOCAB}, limit={DATA_STORIES}, verbose=False)\n"
               "SEQ_LEN = 256")
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [nbformat.v4.new_code_cell(prelude),
                      nbformat.v4.new_code_cell(_widget_cell("02_expert_routing.ipynb", "routing_explorer(")),
                      nbformat.v4.new_code_cell(_widget_cell("03_parameter_accounting.ipynb", "param_calculator("))]
    nbformat.write(notebook, path)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 (a free port, a random token) serving the scratch notebook."""
    _chromium()                                                   # skip before starting anything
    root = tmp_path_factory.mktemp("lab")
    for folder in ("config", "runtime", "settings", "workspaces"):
        (root / folder).mkdir()
    (root / "settings" / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    # every cell stays in the page (no virtual scrolling), so both widgets can be found
    (root / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none"}))
    (root / "notebooks").mkdir()
    write_scratch_notebook(root / "notebooks" / "widgets.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(root / "config"), "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(root / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(root / "workspaces"),
           "OMP_NUM_THREADS": "1"}    # the kernel trains exactly as this process does
    log = open(root / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root / 'notebooks'}", "--LabApp.expose_app_in_browser=True",
         *(["--allow-root"] if os.geteuid() == 0 else [])],                 # CI containers run as root
        cwd=root / "notebooks", env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def stop():
        try:
            _shut_down_kernels(base, token)
        finally:
            _stop_group(server)
            leftovers = _kill_processes_mentioning(str(root / "runtime"))
            log.close()
            tail = (root / "server.log").read_text(errors="replace")[-3000:]
            print(f"--- Jupyter server log (tail) ---\n{tail}\nkilled leftover kernels: {leftovers}")

    try:
        wait_for(lambda: _get(f"{base}/api/status", token) is not None or server.poll() is not None,
                 "the Jupyter server to answer", Deadline(60), every=0.3)
        if server.poll() is not None:
            pytest.fail(f"the Jupyter server exited with {server.returncode}:\n"
                        f"{(root / 'server.log').read_text()[-3000:]}")
    except BaseException:
        stop()
        raise
    yield {"base": base, "token": token, "root": root}
    stop()


def _get(url: str, token: str):
    """The JSON at ``url`` (``None`` if the server does not answer yet)."""
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return json.load(response)
    except (urllib.error.URLError, OSError):
        return None


def _shut_down_kernels(base: str, token: str) -> None:
    for kernel in _get(f"{base}/api/kernels", token) or []:
        request = urllib.request.Request(f"{base}/api/kernels/{kernel['id']}", method="DELETE",
                                         headers={"Authorization": f"token {token}"})
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except (urllib.error.URLError, OSError):
            pass


@pytest.fixture(scope="module")
def browser(lab):
    """Headless Chromium (through chromedriver) on a window tall enough for both widgets."""
    chromium, chromedriver = _chromium()
    profile = lab["root"] / "chromium-profile"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1500,3000", f"--user-data-dir={profile}"):
        options.add_argument(argument)
    service = Service(executable_path=chromedriver, log_output=str(lab["root"] / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_script_timeout(30)
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            if service.process is not None and service.process.poll() is None:
                service.process.kill()
            _kill_processes_mentioning(str(profile))


# ------------------------------------------------------------- page helpers
class Page:
    """The notebook page, read and driven the way a user would: through its controls."""

    def __init__(self, driver):
        self.driver = driver
        self.pictures = {}                   # the last PNG seen at each img, by CSS selector
        self.reports = {}                    # the last numbers seen in each widget, by CSS selector

    def find(self, css: str):
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def script(self, source: str, *arguments):
        return self.driver.execute_script(source, *arguments)

    def text_of(self, css: str) -> str:
        """The text of an element, exactly (``textContent``: the ``<pre>`` spaces kept)."""
        return self.script("const e = document.querySelector(arguments[0]); return e ? e.textContent : null;", css)

    def png_of(self, css: str) -> bytes | None:
        """The PNG behind a shown ``img`` (its blob), once the browser has decoded it; ``None`` before."""
        encoded = self.driver.execute_async_script("""
            const [css, done] = arguments;
            const img = document.querySelector(css);
            if (!img || img.offsetParent === null || !img.src || !img.complete || img.naturalWidth === 0) {
                done(null); return;                       // missing, hidden, or not decoded yet
            }
            fetch(img.src).then(r => r.arrayBuffer()).then(buffer => {
                const bytes = new Uint8Array(buffer); let text = '';
                for (let i = 0; i < bytes.length; i += 32768) {
                    text += String.fromCharCode(...bytes.subarray(i, i + 32768));
                }
                done(btoa(text));
            }).catch(() => done(null));""", css)
        return None if encoded is None else base64.b64decode(encoded)

    def scroll_to(self, element):
        self.script("arguments[0].scrollIntoView({block: 'center'});", element)
        return element

    def type_text(self, css: str, text: str) -> None:
        """Replace what a text or number box holds and press Enter."""
        box = self.scroll_to(self.find(f"{css} input"))
        box.click()
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(text, Keys.ENTER)

    def handle_at_rest(self, css: str, deadline: Deadline):
        """A slider's handle, once it has stopped moving (a slider set from the kernel glides
        to its new place; grabbing it on the way would miss it)."""
        handle = self.scroll_to(self.find(f"{css} .noUi-handle"))
        where = "const r = arguments[0].getBoundingClientRect(); return [r.left, r.top];"

        def still():
            before = self.script(where, handle)
            time.sleep(0.15)
            return before == self.script(where, handle)

        wait_for(still, f"the handle of {css} to stop moving", deadline.step(), every=0.05)
        return handle

    def drag_slider(self, css: str, pixels: int, deadline: Deadline) -> None:
        """Drag a slider's handle sideways by ``pixels`` and let go."""
        handle = self.handle_at_rest(css, deadline)
        ActionChains(self.driver).click_and_hold(handle).move_by_offset(pixels, 0).release().perform()

    def drag_slider_to_right_end(self, css: str, deadline: Deadline) -> None:
        """Drag a slider's handle a little past the right end of its track and let go."""
        handle = self.handle_at_rest(css, deadline)
        pixels = self.script("""const track = arguments[0].getBoundingClientRect();
            const handle = arguments[1].getBoundingClientRect();
            return Math.round(track.right - (handle.left + handle.width / 2) + 5);""",
                             self.find(f"{css} .noUi-target"), handle)
        ActionChains(self.driver).click_and_hold(handle).move_by_offset(pixels, 0).release().perform()

    def drag_slider_to_right_end_until(self, css: str, check, what: str, deadline: Deadline,
                                       attempts: int = 3) -> None:
        """Drag to the right end until ``check()`` holds, as a person would drag again.

        A drag measures the handle and then moves the mouse; if the page shifts in between
        (the figure above is swapped for a new one after every change), the press can miss
        the handle.  One fresh-clone run saw a drag that never arrived.  Each attempt waits
        a third of a step; the last one fails the test as ``wait_for`` does."""
        for _ in range(attempts - 1):
            self.drag_slider_to_right_end(css, deadline)
            if poll(check, Deadline(min(STEP_SECONDS / attempts, deadline.left())))[0]:
                return
        self.drag_slider_to_right_end(css, deadline)
        wait_for(check, what, Deadline(min(STEP_SECONDS / attempts, deadline.left())))

    def choose(self, css: str, option: str) -> None:
        Select(self.scroll_to(self.find(f"{css} select"))).select_by_visible_text(option)

    def readout(self, css: str) -> str:
        return self.text_of(f"{css} .widget-readout").strip()

    def number(self, css: str) -> int:
        return int(self.find(f"{css} input").get_property("value"))

    def cut_off_labels(self, css: str) -> list[str]:
        """Control labels inside ``css`` whose text does not fit (shown with an ellipsis)."""
        return self.script("""return [...document.querySelectorAll(arguments[0] + ' .widget-label')]
            .filter(label => label.offsetParent !== null && label.scrollWidth > label.clientWidth)
            .map(label => label.textContent);""", css)

    def track_widths(self, css: str) -> list[float]:
        return self.script("""return [...document.querySelectorAll(arguments[0] + ' .noUi-target')]
            .map(track => track.getBoundingClientRect().width);""", css)


def expect_new_report(page: Page, css: str, expected: str, what: str) -> None:
    """The numbers a change should print must differ from the ones before it: a change that
    printed nothing new would pass unseen."""
    assert expected != page.reports.get(css), f"{what} should change the numbers {css} prints"
    page.reports[css] = expected


def expect_picture(page: Page, css: str, reference: bytes, axes: int, what: str, deadline: Deadline) -> None:
    """Wait (at most ``STEP_SECONDS``) until the ``img`` at ``css`` shows a new picture, or the
    expected one; it must be a complete plot, pixel for pixel ``reference``."""
    previous = page.pictures.get(css)
    shown = wait_for(lambda: (png := page.png_of(css)) and (png != previous or same_pixels(png, reference)) and png,
                     f"a new picture after {what}", deadline.step())
    page.pictures[css] = shown
    problems = plot_problems(shown, expected_axes=axes)
    assert problems == [], f"after {what} the picture is not a complete plot: {problems}"
    assert same_pixels(shown, reference), f"after {what} the picture differs from the one the logic draws"


def _table_text(summary) -> str:
    """The token table as the browser's ``textContent`` reads it."""
    return html.unescape(re.sub(r"<[^>]+>", "", routing_table_html(summary)))


# ------------------------------------------------------------- the test
CALCULATOR = ".moe-calculator"
EXPLORER = ".moe-routing-explorer"


def test_both_widgets_in_jupyterlab(lab, browser):
    started = time.monotonic()
    deadline = Deadline(TEST_SECONDS)
    page = Page(browser)
    browser.get(f"{lab['base']}/lab/tree/widgets.ipynb?token={lab['token']}")
    wait_for(lambda: page.script("""const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
        const kernel = panel && panel.sessionContext && panel.sessionContext.session
                       && panel.sessionContext.session.kernel;
        return !!kernel && kernel.status === 'idle';"""), "the notebook's kernel", deadline, every=0.3)
    page.script("window.jupyterapp.commands.execute('notebook:run-all-cells');")
    data = prepare_data("offline", vocab_size=DATA_VOCAB, limit=DATA_STORIES, verbose=False)   # the prelude's

    check_calculator(page, deadline)
    check_explorer(page, deadline, data)
    assert page.cut_off_labels(CALCULATOR) == [] and page.cut_off_labels(EXPLORER) == []
    assert min(page.track_widths(f"{CALCULATOR} .widget-hslider")) >= 300     # was ~75 px
    print(f"browser test body: {time.monotonic() - started:.1f} s")


def expect_calculator(page: Page, deadline: Deadline, state: dict, what: str) -> None:
    """Wait until the calculator prints what ``calculator_summary`` says for ``state``;
    then its picture must be complete and exactly ``calculator_png``'s (or hidden, for an invalid model)."""
    presets = calculator_presets()
    try:
        summary = calculator_summary(calculator_config(presets[state["preset"]], **state["sizes"]),
                                     state["seq_len"], state["dtype"])
        expected = summary.text()
    except ValueError as why:
        summary, expected = None, f"not a valid model: {why}"
    expect_new_report(page, CALCULATOR, expected, what)
    wait_for(lambda: page.text_of(f"{CALCULATOR} .moe-report") == expected,
             f"the calculator's numbers after {what}", deadline.step())
    print(f"{deadline.left():5.1f} s left: calculator shows the numbers after {what}")
    if summary is None:
        assert not page.find(f"{CALCULATOR} .moe-plot").is_displayed(), what
        return
    expect_picture(page, f"{CALCULATOR} .moe-plot", calculator_png(summary), 2, what, deadline)


def check_calculator(page: Page, deadline: Deadline) -> None:
    """Change every control of the calculator once (its number box and its slider, the
    preset and the dtype), checking numbers and picture after each change."""
    presets = calculator_presets()
    state = {"preset": "seed phase 2", "sizes": {name: getattr(presets["seed phase 2"], name)
                                                for name in SIZE_CONTROLS}, "seq_len": 256, "dtype": "bfloat16"}
    expect_calculator(page, deadline, state, "the cell ran")

    page.choose(f"{CALCULATOR} .moe-control-preset", "laptop phase 2")
    state["preset"] = "laptop phase 2"
    state["sizes"] = {name: getattr(presets["laptop phase 2"], name) for name in SIZE_CONTROLS}
    expect_calculator(page, deadline, state, "choosing a preset")

    page.choose(f"{CALCULATOR} .moe-control-dtype", "float32")
    state["dtype"] = "float32"
    expect_calculator(page, deadline, state, "choosing a dtype")

    # each size: type a value, then drag the slider past its right end.  The typed values keep the
    # model valid, except n_heads = 3: the heads split d_model, so their number changes no count,
    # and only a refusal (8192 is not divisible by 3) shows that the change arrived.
    typed = {"seq_len": 1024, "vocab_size": 4096, "d_model": 256, "n_heads": 3, "n_layers": 6, "d_ff": 512,
             "num_experts": 8, "top_k": 4, "num_shared_experts": 1}
    for name, value in typed.items():
        css = f"{CALCULATOR} .moe-control-{name}"
        high = SIZE_CONTROLS[name][2] if name != "seq_len" else 32_768
        page.type_text(css, str(value))
        (state if name == "seq_len" else state["sizes"])[name] = value
        expect_calculator(page, deadline, state, f"typing {name} = {value}")
        page.drag_slider_to_right_end_until(css, lambda: page.number(css) == high,
                                            f"{name}'s box to follow its slider to {high}", deadline)
        (state if name == "seq_len" else state["sizes"])[name] = high
        expect_calculator(page, deadline, state, f"dragging {name} to {high}")

    page.type_text(f"{CALCULATOR} .moe-control-num_experts", "0")      # dense, but 8 shared experts: refused
    state["sizes"]["num_experts"] = 0
    expect_calculator(page, deadline, state, "typing num_experts = 0 with shared experts")
    page.type_text(f"{CALCULATOR} .moe-control-num_shared_experts", "0")
    state["sizes"]["num_shared_experts"] = 0
    expect_calculator(page, deadline, state, "typing num_shared_experts = 0 (a dense model)")


def expect_explorer(page: Page, deadline: Deadline, data, text: str, what: str):
    """Read the explorer's sliders, then wait until it prints and draws what ``routing_summary``
    gives for them and ``text``."""
    summary = routing_summary(int(page.readout(f"{EXPLORER} .moe-control-experts")),
                              int(page.readout(f"{EXPLORER} .moe-control-top_k")),
                              float(page.readout(f"{EXPLORER} .moe-control-aux_loss_coef")), text,
                              steps=int(page.readout(f"{EXPLORER} .moe-control-steps")), data=data)
    expect_new_report(page, EXPLORER, summary.headline() + _table_text(summary), what)
    wait_for(lambda: (page.text_of(f"{EXPLORER} .moe-report pre") == summary.headline()
                      and page.text_of(f"{EXPLORER} .moe-report table") == _table_text(summary)),
             f"the explorer's numbers after {what}", deadline.step())
    print(f"{deadline.left():5.1f} s left: explorer shows the numbers after {what}")
    expect_picture(page, f"{EXPLORER} .moe-plot", explorer_png(summary), 1, what, deadline)
    return summary


def check_explorer(page: Page, deadline: Deadline, data) -> None:
    """Change every control of the explorer once, checking numbers and picture after each change."""
    first = expect_explorer(page, deadline, data, SAMPLE_SENTENCE, "the cell ran")
    assert (first.num_experts, first.top_k, first.aux_loss_coef, first.steps) == (4, 2, 0.01, 40)
    changes = [("experts", 120), ("top_k", 60), ("aux_loss_coef", 40), ("steps", -60)]
    previous = first
    for name, pixels in changes:
        page.drag_slider(f"{EXPLORER} .moe-control-{name}", pixels, deadline)
        summary = expect_explorer(page, deadline, data, SAMPLE_SENTENCE, f"dragging {name} by {pixels} px")
        moved = {"experts": (previous.num_experts, summary.num_experts), "top_k": (previous.top_k, summary.top_k),
                 "aux_loss_coef": (previous.aux_loss_coef, summary.aux_loss_coef),
                 "steps": (previous.steps, summary.steps)}[name]
        assert moved[0] != moved[1], f"dragging {name} by {pixels} px changed nothing"
        previous = summary
    assert previous.top_k <= previous.num_experts
    sentence = "The dog ran to the red ball."
    page.type_text(f"{EXPLORER} .moe-control-text", sentence)
    last = expect_explorer(page, deadline, data, sentence, "typing a new sentence")
    assert "".join(last.tokens) == sentence and "".join(first.tokens) == SAMPLE_SENTENCE
