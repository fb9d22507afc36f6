"""Drives the operator page (GET /admin/) in Debian's headless Chromium through
chromium-driver (selenium; nothing is downloaded: the driver and the browser are the
system's, and Selenium Manager is never asked).

    python check_admin_page.py BASE_URL ADMIN_KEY CLIENT_KEY REQUESTS_MADE SCREENSHOT_DIR

Checks, each an assertion that can fail:
- an anonymous browser sees the sign-in form and no data;
- a client key is refused with "not an admin key", and no data appears;
- the admin key shows the gateway, the accounts with their plan windows (bars, reset
  countdowns) and the rules; the usage chart and table
  count the requests the caller made; the failures section lists the failed one by kind;
  the keys section shows the keys with their roles and limits against their use, the
  5-hour window share included (and no key material); the windows say how fresh they are;
- the classify playground classifies an overloaded API error for both APIs;
- the page refreshes itself without a reload;
- no console errors (the negative sign-in runs in its own browser, as Chromium logs a
  refused fetch as an error);
- screenshots at 1280x800 and at a phone's 390x844 go to SCREENSHOT_DIR.
"""

import json
import os
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

BASE, ADMIN_KEY, CLIENT_KEY, MADE, SHOTS = sys.argv[1:6]
MADE = int(MADE)
passed, failed = 0, 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name} {detail}")


def browser(width=1280, height=800):
    opts = webdriver.ChromeOptions()
    opts.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for a in [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-extensions",
        f"--window-size={width},{height}",
    ]:
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(service=service, options=opts)


def console_errors(d):
    return [e for e in d.get_log("browser") if e["level"] == "SEVERE"]


def visible(d, css):
    els = d.find_elements(By.CSS_SELECTOR, css)
    return bool(els) and els[0].is_displayed()


def sign_in(d, key):
    d.find_element(By.ID, "key").send_keys(key)
    d.find_element(By.CSS_SELECTOR, "#login-form button").click()


def usage_total(d):
    """Sum of the requests the usage chart's bars carry."""
    return sum(int(r.get_attribute("data-value")) for r in d.find_elements(By.CSS_SELECTOR, "#usage-chart rect[data-value]"))


# ---- an anonymous browser and a client key: the sign-in form, no data -------------------
d = browser()
try:
    d.get(BASE + "/admin/")
    WebDriverWait(d, 10).until(EC.visibility_of_element_located((By.ID, "login-form")))
    check("anonymous: sign-in form shown", visible(d, "#login-form"))
    check("anonymous: no data shown", not visible(d, "#main"))
    check("anonymous: the page text names no account or kind",
          "auth_failure" not in d.page_source and "default" not in d.find_element(By.TAG_NAME, "body").text)
    if CLIENT_KEY:
        sign_in(d, CLIENT_KEY)
        WebDriverWait(d, 10).until(lambda d: d.find_element(By.ID, "login-error").text)
        check("client key: refused as not an admin key",
              "not an admin key" in d.find_element(By.ID, "login-error").text,
              d.find_element(By.ID, "login-error").text)
        check("client key: no data shown", not visible(d, "#main"))
        check("client key: nothing kept in the tab",
              d.execute_script("return sessionStorage.getItem('ccgate.adminKey')") is None)
finally:
    d.quit()

# ---- the admin key --------------------------------------------------------------------
d = browser()
try:
    d.get(BASE + "/admin/")
    WebDriverWait(d, 10).until(EC.visibility_of_element_located((By.ID, "login-form")))
    sign_in(d, ADMIN_KEY)
    WebDriverWait(d, 10).until(EC.visibility_of_element_located((By.ID, "main")))
    WebDriverWait(d, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#accounts tbody tr"))
    accounts = [r.get_attribute("data-account") for r in d.find_elements(By.CSS_SELECTOR, "#accounts tbody tr")]
    check("admin: accounts listed", len(accounts) >= 1, accounts)
    check("admin: gateway ready", d.find_element(By.ID, "gateway-pill").text == "ready",
          d.find_element(By.ID, "gateway-pill").text)
    # Plan windows (the fake CLI reports 42 % / 10 % after each answer): bars and countdowns.
    WebDriverWait(d, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#accounts .window"))
    wins = {w.get_attribute("data-window"): w.text for w in d.find_elements(By.CSS_SELECTOR, "#accounts .window")}
    check("admin: plan windows with utilization and reset countdown",
          "42%" in wins.get("five_hour", "") and "resets in" in wins.get("five_hour", "")
          and "10%" in wins.get("seven_day", ""), wins)
    bar = d.find_element(By.CSS_SELECTOR, "#accounts .window[data-window=five_hour] .bar > span")
    check("admin: the 5-hour bar is 42 % full", bar.get_attribute("style").replace(" ", "") == "width:42%;",
          bar.get_attribute("style"))
    seen = [e.text for e in d.find_elements(By.CSS_SELECTOR, "#accounts [data-windows-seen]")]
    check("admin: the windows say how fresh they are and where from",
          bool(seen) and seen[0].startswith("as of ") and "from answer" in seen[0], seen)
    # Every request has ended: no process serves one, whatever is parked.
    stat = {e.get_attribute("data-stat"): e.find_element(By.CSS_SELECTOR, ".n").text
            for e in d.find_elements(By.CSS_SELECTOR, "#processes .stat")}
    check("admin: no process shown serving once the requests ended, parked ones apart",
          stat.get("serving") == "0" and stat.get("alive", "").endswith(" / 4")
          and int(stat["alive"].split(" / ")[0]) == int(stat.get("kept", "-1")) + int(stat.get("held", "0"))
          + int(stat.get("pre-warmed", "0")), stat)
    kinds = [r.get_attribute("data-kind") for r in d.find_elements(By.CSS_SELECTOR, "#rules tbody tr")]
    check("admin: rules in force listed", "auth_failure" in kinds and "overloaded" in kinds, kinds)
    check("admin: the key stays in this tab's session storage",
          d.execute_script("return sessionStorage.getItem('ccgate.adminKey')") == ADMIN_KEY
          and d.execute_script("return localStorage.length") == 0
          and d.get_cookies() == [])
    if visible(d, "#usage-card"):
        WebDriverWait(d, 10).until(lambda d: usage_total(d) >= MADE)
        check("admin: the usage chart counts the requests made", usage_total(d) == MADE,
              f"{usage_total(d)} != {MADE}")
        rows = {r.get_attribute("data-group"): r.find_element(By.CSS_SELECTOR, "[data-col=requests]").text
                for r in d.find_elements(By.CSS_SELECTOR, "#usage-table tbody tr")}
        check("admin: the usage table counts them too",
              sum(int(v.replace(",", "")) for v in rows.values()) == MADE, rows)
    else:
        check("admin: the usage section is shown", False, "no usage ledger on this gateway")
    check("admin: the failures section is shown", visible(d, "#failures-card"))
    WebDriverWait(d, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#failures-table tbody tr"))
    kinds_failed = [r.find_elements(By.TAG_NAME, "td")[3].text for r in d.find_elements(By.CSS_SELECTOR, "#failures-table tbody tr")]
    check("admin: the latest failed request is listed with its kind", kinds_failed[:1] == ["overloaded"], kinds_failed)
    check("admin: the failures chart shows it",
          any(r.get_attribute("data-series") == "overloaded" for r in d.find_elements(By.CSS_SELECTOR, "#failures-chart rect")))
    check("admin: the keys section is shown", visible(d, "#keys-card"))
    keys = {r.get_attribute("data-key"): r.text for r in d.find_elements(By.CSS_SELECTOR, "#keys-table tbody tr")}
    check("admin: keys listed with roles", "admin" in keys.get("ops", "") and "client" in keys.get("app", ""), keys)
    check("admin: a key's limit shown against its use", "requests_per_minute:" in keys.get("app", "") and "/ 100" in keys.get("app", ""), keys)
    # The client key made every answered request: all the tokens × the window's 42 %.
    check("admin: a key's share of the 5-hour window against its window_share",
          "window_share: 42% / 50%" in keys.get("app", ""), keys)
    check("admin: no key material on the page", CLIENT_KEY not in d.page_source and ADMIN_KEY not in d.page_source)

    # Refreshes itself: the "updated" time changes without a reload.
    before = d.find_element(By.ID, "refreshed").text
    marker = d.execute_script("window.__noReload = 1; return 1")
    WebDriverWait(d, 12).until(lambda d: d.find_element(By.ID, "refreshed").text != before)
    check("admin: refreshed without a reload", d.execute_script("return window.__noReload") == marker)

    # The classify playground.
    d.find_element(By.ID, "cl-api-status").send_keys("529")
    d.find_element(By.ID, "cl-api-type").send_keys("overloaded_error")
    d.find_element(By.ID, "cl-api-text").send_keys("API Error: 529 Overloaded")
    d.find_element(By.CSS_SELECTOR, "#classify-form button").click()
    WebDriverWait(d, 10).until(EC.visibility_of_element_located((By.ID, "cl-result")))
    check("playground: kind", d.find_element(By.ID, "cl-kind").text == "overloaded",
          d.find_element(By.ID, "cl-kind").text)
    check("playground: Anthropic status 529", d.find_element(By.ID, "cl-anthropic-status").text == "529")
    check("playground: OpenAI status", d.find_element(By.ID, "cl-openai-status").text.isdigit())
    body = json.loads(d.find_element(By.ID, "cl-anthropic-body").text)
    check("playground: Anthropic body", body.get("error", {}).get("type") == "overloaded_error", body)

    os.makedirs(SHOTS, exist_ok=True)
    d.execute_script("window.scrollTo(0, 0)")
    d.save_screenshot(os.path.join(SHOTS, "admin-page-1280x800.png"))
    wide = d.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
    check("layout: no horizontal scroll at 1280x800", wide)
    d.set_window_size(390, 844)
    time.sleep(0.5)
    d.save_screenshot(os.path.join(SHOTS, "admin-page-phone.png"))
    narrow = d.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
    check("layout: no page-wide horizontal scroll on a phone", narrow)
    errors = console_errors(d)
    check("no console errors", not errors, errors)
finally:
    d.quit()

# The data endpoints themselves refuse an anonymous reader.
try:
    urllib.request.urlopen(BASE + "/admin/overview", timeout=5)
    check("anonymous GET /admin/overview refused", False)
except urllib.error.HTTPError as e:
    check("anonymous GET /admin/overview refused", e.code == 401, e.code)

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
