// What every browser check shares: the settings the Rust test passes in the
// environment, one headless Chromium, a tiny check runner, assertions, the management
// API seen from outside the browser, and the colour arithmetic of the contrast check.
//
// Waiting is always on a DOM condition (Playwright's auto-waiting locators,
// `waitFor`, `waitForFunction`), never on a fixed sleep.

import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

/** The one Chromium these machines have (Debian's package); never a downloaded build. */
export const CHROMIUM = "/usr/bin/chromium";

/** What these machines need: no sandbox (root, containers), no GPU, no calls home. */
export const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

/** How long one step may wait for the page before the check fails. */
export const STEP_TIMEOUT_MS = 15_000;

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (the Rust test tests/integration/browser.rs sets it)`);
  return value;
}

/** The settings from tests/integration/browser.rs. */
export function settings() {
  return {
    base: required("TOLLGATE_BASE_URL").replace(/\/$/, ""),
    masterKey: required("TOLLGATE_MASTER_KEY"),
    proxyKey: required("TOLLGATE_PROXY_KEY"),
    proxyKeyAlias: required("TOLLGATE_PROXY_KEY_ALIAS"),
    model: required("TOLLGATE_MODEL"),
    server: required("TOLLGATE_SERVER_NAME"),
    screenshots: required("TOLLGATE_SCREENSHOT_DIR"),
    only: process.env.TOLLGATE_BROWSER_ONLY || "",
  };
}

/** A fresh headless Chromium with a throwaway profile; `close()` removes the profile. */
export async function launch() {
  const profile = mkdtempSync(join(tmpdir(), "tollgate-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1280, height: 760 },
    locale: "en-GB",
    timezoneId: "UTC",
  });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  return {
    context,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

// ------------------------------------------------------------------ the runner

/**
 * Runs `checks` (`[name, fn]`) one after another, each on a page of its own, and prints
 * `ok - name` or `FAILED - name` with the error. Returns the number that failed.
 * A check also fails when the page threw an uncaught error or logged one.
 * Failing checks leave a screenshot in $TMPDIR/tollgate-browser-failures/.
 */
export async function runChecks(checks, env, browser) {
  const failDir = join(tmpdir(), "tollgate-browser-failures");
  let failed = 0;
  let ran = 0;
  for (const [name, fn] of checks) {
    if (env.only && !name.includes(env.only)) continue;
    ran += 1;
    const page = await browser.context.newPage();
    const pageErrors = [];
    page.on("pageerror", (err) => pageErrors.push(`uncaught: ${err.message}`));
    page.on("console", (msg) => {
      // Chromium logs every non-2xx response as "Failed to load resource"; the checks
      // that expect one (a refused credential) look at what the page shows instead.
      if (msg.type() === "error" && !msg.text().startsWith("Failed to load resource")) {
        pageErrors.push(`console.error: ${msg.text()}`);
      }
    });
    try {
      await fn({ page, env, pageErrors });
      if (pageErrors.length) throw new Error(`the page reported errors:\n  ${pageErrors.join("\n  ")}`);
      console.log(`ok - ${name}`);
    } catch (err) {
      failed += 1;
      console.log(`FAILED - ${name}\n  ${String(err && err.stack ? err.stack : err).replace(/\n/g, "\n  ")}`);
      try {
        mkdirSync(failDir, { recursive: true });
        const shot = join(failDir, `${name.replace(/[^a-z0-9]+/gi, "-")}.png`);
        await page.screenshot({ path: shot, fullPage: true });
        console.log(`  the page at the failure: ${shot}`);
      } catch (e) {
        /* the page may be gone; the error above is what matters */
      }
    } finally {
      await page.close();
    }
  }
  if (ran === 0) {
    console.log(`no check matched TOLLGATE_BROWSER_ONLY=${env.only}`);
    return 1;
  }
  console.log(`console checks: ${ran - failed} of ${ran} ok`);
  return failed;
}

// ------------------------------------------------------------------ assertions

export function assert(condition, message) {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}

export function assertEqual(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`);
}

// ------------------------------------------------------------------ the gateway from outside

/** Calls the gateway with `bearer` (the master key unless given); `{status, body}`. */
export async function api(env, method, path, body, bearer) {
  const response = await fetch(env.base + path, {
    method,
    headers: Object.assign(
      { Authorization: `Bearer ${bearer || env.masterKey}`, Accept: "application/json" },
      body === undefined ? {} : { "Content-Type": "application/json" }
    ),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch (e) {
    json = null;
  }
  return { status: response.status, body: json, text };
}

/** Like `api`, but the status must be 200; the body. */
export async function apiOk(env, method, path, body, bearer) {
  const res = await api(env, method, path, body, bearer);
  if (res.status !== 200) throw new Error(`${method} ${path}: HTTP ${res.status}: ${res.text}`);
  return res.body;
}

/** A unique name for this run's objects. */
export function unique(prefix) {
  return `${prefix}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
}

// ------------------------------------------------------------------ console steps

/** Opens the console and signs in with `credential` (the master key unless given). */
export async function signIn(page, env, credential) {
  await page.goto(`${env.base}/ui`);
  await page.locator("#signin").waitFor({ state: "visible" });
  await page.locator("#signin-token").fill(credential || env.masterKey);
  await page.locator("#signin-submit").click();
}

/** Signs in with the master key and waits for the console (the keys view). */
export async function signedIn(page, env) {
  await signIn(page, env);
  await page.locator("#tabs").waitFor({ state: "visible" });
  await page.locator("#view-keys").waitFor({ state: "visible" });
}

/** Opens a tab and waits for its view. */
export async function openTab(page, view) {
  await page.locator(`.tab[data-view="${view}"]`).click();
  await page.locator(`#view-${view}`).waitFor({ state: "visible" });
}

/** The dialog's submit button, clicked; waits for the dialog to close. */
export async function submitDialog(page) {
  await page.locator("#dialog-submit").click();
  const error = page.locator("#dialog-error");
  await page.waitForFunction(
    () => !document.getElementById("dialog").open || !document.getElementById("dialog-error").hidden
  );
  if (await error.isVisible()) throw new Error(`the form was refused: ${await error.textContent()}`);
}

// ------------------------------------------------------------------ contrast (WCAG 2.x)

/**
 * The colours a person sees for `element`'s label and the background right behind it,
 * as `{text, background}` in sRGB 0–255. Runs in the page: composes the element's
 * background, colour and opacity over its ancestors' backgrounds, from the root down.
 * Anything it cannot reason about (background images, filters, faded ancestors, colour
 * syntaxes other than rgb()) throws rather than guess.
 */
export function seenColours(element) {
  const parse = (value) => {
    const m = /^rgba?\(([^)]*)\)$/.exec(value.trim());
    if (!m) throw new Error(`cannot read the colour ${value}`);
    const parts = m[1].split(/[\s,/]+/).filter(Boolean).map(Number);
    return { r: parts[0], g: parts[1], b: parts[2], a: parts.length > 3 ? parts[3] : 1 };
  };
  const over = (src, dst) => {
    const a = src.a + dst.a * (1 - src.a);
    if (a === 0) return { r: 0, g: 0, b: 0, a: 0 };
    const mix = (s, d) => (s * src.a + d * dst.a * (1 - src.a)) / a;
    return { r: mix(src.r, dst.r), g: mix(src.g, dst.g), b: mix(src.b, dst.b), a };
  };
  const plain = (node, style) => {
    if (style.backgroundImage !== "none") throw new Error(`${node.tagName} has a background image`);
    if (style.filter !== "none") throw new Error(`${node.tagName} has a filter (${style.filter})`);
  };
  const chain = [];
  for (let node = element.parentElement; node; node = node.parentElement) chain.unshift(node);
  let backdrop = { r: 255, g: 255, b: 255, a: 1 };
  for (const node of chain) {
    const style = getComputedStyle(node);
    plain(node, style);
    if (Number(style.opacity) !== 1) throw new Error(`${node.tagName} is faded (opacity ${style.opacity})`);
    backdrop = over(parse(style.backgroundColor), backdrop);
  }
  const style = getComputedStyle(element);
  plain(element, style);
  const opacity = Number(style.opacity);
  const fade = (c) => ({ r: c.r, g: c.g, b: c.b, a: c.a * opacity });
  const own = parse(style.backgroundColor);
  return {
    background: over(fade(own), backdrop),
    text: over(fade(over(parse(style.color), own)), backdrop),
    hovered: element.matches(":hover"),
  };
}

function luminance({ r, g, b }) {
  const channel = (c) => {
    const s = c / 255;
    return s <= 0.04045 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  };
  return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
}

/** WCAG contrast ratio of two opaque colours: 1 (none) to 21 (black on white). */
export function contrastRatio(a, b) {
  const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x);
  return (hi + 0.05) / (lo + 0.05);
}

export function hex({ r, g, b }) {
  return "#" + [r, g, b].map((c) => Math.round(c).toString(16).padStart(2, "0")).join("");
}
