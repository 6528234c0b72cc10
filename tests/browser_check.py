"""Browser check of the explorer notebook: JupyterLab + headless Chromium, end to end.

    .venv/bin/python tests/browser_check.py            # what `make check-browser` runs
    .venv/bin/python tests/browser_check.py --model data/reference.placeholder --keep

Steps: copy ``notebooks/07_explorer.ipynb`` into a temporary directory (its figures go
there too, never into the repository's ``figures/``); start JupyterLab on 127.0.0.1 at a
free port with a random token (``--no-browser``, settings/workspaces/runtime directories
inside the temporary directory); open the notebook in headless Chromium (Debian's
``/usr/bin/chromium``, driven by Playwright's Python package -- no browser download);
run all cells from the Run menu and wait for every cell to finish without a traceback;
screenshot the explorer; drag the ``sigma`` slider; wait until the rendered picture
changes (pixel comparison of element screenshots) and the slider's readout shows the new
value; screenshot again; shut JupyterLab down through its API (kernels included) and
remove the temporary directory. Screenshots: ``figures/explorer_before.png``,
``figures/explorer_after.png`` (and ``figures/explorer_failure.png`` on failure).
Exit status 0 on success, 1 on failure, 2 when a requirement is missing.

Needs: the pip packages ``playwright`` (Python package only; never ``playwright install``),
``jupyterlab``, ``ipywidgets`` (with ``jupyterlab_widgets``); the Debian package ``chromium``.
Model: ``--model`` (default: the embedded reference (egg.api.REFERENCE_DIR) when it exists, else
``data/reference.placeholder``) is written into the copy's parameters cell.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def log(msg: str) -> None:
    print(f"[browser-check] {msg}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_model() -> str | None:
    from egg.api import REFERENCE_DIR as ref
    if (ref / "config.json").is_file():
        return None
    placeholder = ROOT / "data" / "reference.placeholder"
    if (placeholder / "config.json").is_file():
        log(f"no trained reference at {ref}; using {placeholder}")
        return str(placeholder)
    return None


def prepare_copy(src: Path, work: Path, model: str | None) -> Path:
    """The notebook copied into work/notebooks, with its figures sent to work/figures and,
    if given, the model path written into the parameters cell."""
    nb = json.loads(src.read_text())
    figs = work / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    found = False
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            text = "".join(cell["source"])
            text = re.sub(r"(?m)^out_dir\s*=.*$", f"out_dir = {str(figs)!r}", text)
            if model is not None:
                text = re.sub(r"(?m)^model\s*=.*$", f"model = {str(Path(model).resolve())!r}", text)
            cell["source"] = text
            found = True
    if not found:
        raise RuntimeError(f"{src} has no cell tagged 'parameters'")
    dst = work / "notebooks" / src.name
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(nb, indent=1))
    return dst


def start_lab(work: Path, port: int, token: str) -> subprocess.Popen:
    env = dict(os.environ)
    for k, sub in (("JUPYTERLAB_SETTINGS_DIR", "lab-settings"), ("JUPYTERLAB_WORKSPACES_DIR", "lab-workspaces"),
                   ("JUPYTER_RUNTIME_DIR", "runtime")):
        (work / sub).mkdir(exist_ok=True)
        env[k] = str(work / sub)
    # no news / update pop-ups over the notebook
    notif = work / "lab-settings" / "@jupyterlab" / "apputils-extension"
    notif.mkdir(parents=True, exist_ok=True)
    (notif / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
           "--ServerApp.terminals_enabled=False", "--LabApp.news_url=", "--ServerApp.open_browser=False"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers often run as root
    logf = open(work / "jupyterlab.log", "w")
    proc = subprocess.Popen(cmd, cwd=str(work), env=env, stdout=logf, stderr=subprocess.STDOUT)
    proc._egg_log = logf  # type: ignore[attr-defined]
    return proc


def wait_for_lab(port: int, token: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    url = f"http://127.0.0.1:{port}/api/status?token={token}"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"JupyterLab did not answer on port {port} within {timeout:.0f}s")


def stop_lab(proc: subprocess.Popen, port: int, token: str) -> None:
    if proc.poll() is None:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/shutdown", method="POST",
                                         headers={"Authorization": f"token {token}"})
            urllib.request.urlopen(req, timeout=10).close()
        except Exception as e:  # noqa: BLE001 - fall back to a signal
            log(f"API shutdown failed ({e}); terminating")
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    getattr(proc, "_egg_log", None) and proc._egg_log.close()  # type: ignore[attr-defined]


def different(png_a: bytes, png_b: bytes, min_fraction: float = 0.002) -> float:
    """Fraction of pixels that differ between two screenshots (1.0 if the sizes differ);
    compared against ``min_fraction`` by the caller."""
    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(png_a)).convert("RGB"), dtype=np.int16)
    b = np.asarray(Image.open(io.BytesIO(png_b)).convert("RGB"), dtype=np.int16)
    if a.shape != b.shape:
        return 1.0
    return float((np.abs(a - b).max(axis=-1) > 16).mean())


# ---------------------------------------------------------------------------------- browser

JS_PROMPTS = """
() => Array.from(document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt'))
        .map(e => e.textContent.trim())
"""
JS_ERRORS = """
() => Array.from(document.querySelectorAll('.jp-Notebook .jp-OutputArea-output'))
        .map(e => e.textContent)
        .filter(t => t.includes('Traceback (most recent call last)') || /^\\w*Error\\b/.test(t.trim()))
        .map(t => t.slice(0, 2000))
"""


def accept_dialogs(page) -> None:
    """Accept any JupyterLab dialog in the way (e.g. "Select Kernel": the default, the
    notebook's own python3 kernel)."""
    for _ in range(3):
        dlg = page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept")
        if dlg.count() == 0:
            return
        title = page.locator(".jp-Dialog .jp-Dialog-header").first.inner_text().strip()
        log(f"dialog {title!r}: accepting")
        dlg.first.click()
        time.sleep(1.0)


def run_all_cells(page, timeout: float) -> None:
    # the notebook panel and an idle kernel first
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-CodeCell", timeout=120_000)
    time.sleep(2.0)
    accept_dialogs(page)
    page.wait_for_function(
        "() => { const e = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) "
        ".jp-Notebook-ExecutionIndicator'); return e && e.getAttribute('data-status') === 'idle'; }",
        timeout=180_000)
    accept_dialogs(page)

    def click_run_all():
        page.click(".lm-MenuBar-itemLabel:text-is('Run')")
        page.click(".lm-Menu-content .lm-Menu-itemLabel:text-is('Run All Cells')")

    click_run_all()
    t0 = time.time()
    clicks = 1
    while time.time() - t0 < timeout:
        accept_dialogs(page)
        prompts = page.evaluate(JS_PROMPTS)
        errors = page.evaluate(JS_ERRORS)
        if errors:
            raise RuntimeError("a cell failed:\n" + errors[0])
        running = any("*" in p for p in prompts)
        started = running or any(re.search(r"\[\d+\]", p) for p in prompts)
        done = prompts and all(re.search(r"\[\d+\]", p) for p in prompts)
        if done and not running:
            log(f"all {len(prompts)} code cells ran in {time.time() - t0:.0f}s")
            return
        if not started and time.time() - t0 > 30 * clicks and clicks < 3:
            log("no cell started: Run All Cells again")
            click_run_all()
            clicks += 1
        time.sleep(1.0)
    raise RuntimeError(f"cells still running after {timeout:.0f}s: prompts {page.evaluate(JS_PROMPTS)}")


def slider(page, label: str):
    return page.locator(f".egg-explorer .widget-slider:has(.widget-label:text-is('{label}'))").first


def move_sigma(page) -> tuple[str, str]:
    """Drag the sigma slider's handle about a third of the track to the right (keyboard
    arrows as a fallback); returns the readout before and after."""
    s = slider(page, "sigma")
    s.scroll_into_view_if_needed()
    readout = s.locator(".widget-readout")
    before = readout.inner_text().strip()
    handle = s.locator(".noUi-handle").first
    track = s.locator(".noUi-target").first
    hb, tb = handle.bounding_box(), track.bounding_box()
    if hb and tb:
        x, y = hb["x"] + hb["width"] / 2, hb["y"] + hb["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + tb["width"] * 0.35, y, steps=12)
        page.mouse.up()
    after = readout.inner_text().strip()
    if after == before:  # drag not taken: keyboard
        handle.focus()
        for _ in range(4):
            page.keyboard.press("ArrowRight")
        page.keyboard.press("Tab")
        after = readout.inner_text().strip()
    return before, after


def browser_check(url: str, out: Path, chromium: str, timeout: float) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        try:
            log("opening the notebook")
            page.goto(url, wait_until="domcontentloaded", timeout=120_000)
            run_all_cells(page, timeout)
            view = page.locator(".egg-explorer img.egg-explorer-view, .egg-explorer .egg-explorer-view").first
            view.wait_for(state="visible", timeout=60_000)
            page.wait_for_function(
                "() => { const i = document.querySelector('.egg-explorer .egg-explorer-view'); "
                "return i && i.complete && i.naturalWidth > 0; }", timeout=60_000)
            view.scroll_into_view_if_needed()
            ui = page.locator(".egg-explorer").first
            ui.screenshot(path=str(out / "explorer_before.png"))
            shot0 = view.screenshot()
            src0 = view.get_attribute("src")
            r0, r1 = move_sigma(page)
            log(f"sigma slider moved: {r0} -> {r1}")
            if r0 == r1:
                raise RuntimeError(f"the sigma slider did not move (readout stays {r0})")
            t0, frac = time.time(), 0.0
            while time.time() - t0 < timeout:
                time.sleep(1.0)
                if view.get_attribute("src") == src0:
                    continue
                frac = different(shot0, view.screenshot())
                if frac > 0.002:
                    break
            else:
                raise RuntimeError(f"the explorer's picture did not change within {timeout:.0f}s after moving sigma")
            log(f"picture changed after {time.time() - t0:.0f}s ({100 * frac:.1f}% of pixels)")
            status = page.locator(".egg-explorer .egg-explorer-status").first.inner_text()
            log(f"status: {status[:160]}")
            ui.screenshot(path=str(out / "explorer_after.png"))
        except Exception:
            try:
                page.screenshot(path=str(out / "explorer_failure.png"), full_page=True)
            except Exception:  # noqa: BLE001
                pass
            raise
        finally:
            browser.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--notebook", default=str(ROOT / "notebooks" / "07_explorer.ipynb"))
    ap.add_argument("--model", default="auto", help="model path for the copy's parameters cell "
                    "('auto': the embedded reference if trained, else data/reference.placeholder; 'none': leave it)")
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM", "/usr/bin/chromium"))
    ap.add_argument("--out", default=str(ROOT / "figures"), help="where the screenshots go")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds for running the cells / the redraw")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (and the JupyterLab log)")
    a = ap.parse_args(argv)

    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        log("the Python package 'playwright' is missing: pip install playwright (do not run 'playwright install')")
        return 2
    if not Path(a.chromium).is_file():
        log(f"no Chromium at {a.chromium}: apt-get install -y chromium (or pass --chromium)")
        return 2
    nb = Path(a.notebook)
    if not nb.is_file():
        log(f"no notebook at {nb}")
        return 2
    model = default_model() if a.model == "auto" else None if a.model.lower() == "none" else a.model
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    work = Path(tempfile.mkdtemp(prefix="egg-browser-check-"))
    port, token = free_port(), secrets.token_hex(16)
    proc = None
    ok = False
    try:
        copy = prepare_copy(nb, work, model)
        log(f"starting JupyterLab on 127.0.0.1:{port} in {work}")
        proc = start_lab(work, port, token)
        wait_for_lab(port, token, proc)
        rel = copy.relative_to(work).as_posix()
        browser_check(f"http://127.0.0.1:{port}/lab/tree/{rel}?token={token}", out, a.chromium, a.timeout)
        ok = True
    except Exception as e:  # noqa: BLE001 - report and fail
        log(f"FAILED: {type(e).__name__}: {e}")
        logfile = work / "jupyterlab.log"
        if logfile.is_file():
            tail = logfile.read_text(errors="replace").splitlines()[-25:]
            log("JupyterLab log (last lines):\n" + "\n".join(tail))
    finally:
        if proc is not None:
            stop_lab(proc, port, token)
            log("JupyterLab stopped")
        if a.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if ok:
        log(f"OK: screenshots in {out}/explorer_before.png, explorer_after.png")
        return 0
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
